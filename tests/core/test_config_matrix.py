"""The configuration space as a test (tools/config_matrix.py): the covering subset trains or is refused, nothing else.

Every pair of axis values (arch, data, loss, penalty, lazy or not, pack, DiffAugment, instance noise, accumulation,
amp, cross-replica BN, strategy) is in at least one combination. Each combination either trains 2 steps and equals
single within |a - b| <= atol + rtol * |b| (the ranks on one 2-process gloo group that lives for the whole test),
or config validation refuses it with one line.
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))  # spawned ranks inherit sys.path
import config_matrix as matrix  # noqa: E402


def _valid(combo) -> bool:
    return matrix.validate(combo)[0] is not None


@pytest.fixture(scope="module")
def covering():
    return matrix.pairwise(matrix.AXES, _valid)


def test_covering_subset_holds_every_pair_and_is_deterministic(covering):
    names = list(matrix.AXES)
    for a, b in itertools.combinations(names, 2):
        for va, vb in itertools.product(matrix.AXES[a], matrix.AXES[b]):
            assert any(c[a] == va and c[b] == vb for c in covering), (a, va, b, vb)
    assert covering == matrix.pairwise(matrix.AXES, _valid)
    assert len(covering) < len(matrix.full_product(matrix.AXES)) / 1000  # a covering subset, not the product


def test_a_pair_is_covered_by_a_combination_that_trains_whenever_one_exists(covering):
    # zero2 with bf16 is valid: some trained combination must hold it; mlp on digits never is: a refused one does
    trains = [c for c in covering if _valid(c)]
    assert any(c["strategy"] == "zero2" and c["amp"] == "bf16" for c in trains)
    assert any(c["diffaugment"] and c["strategy"] == "ddp" for c in trains)
    refused = [c for c in covering if not _valid(c)]
    assert any(c["arch"] == "mlp" and c["data"] == "digits" for c in refused)


def test_refusals_are_one_line_naming_the_keys(covering):
    for combo in covering:
        _, refusal = matrix.validate(combo)
        if refusal is not None:
            assert "\n" not in refusal and any(k in refusal for k in ("model.arch", "augment.", "penalties")), refusal


# Combinations of the covering subset that still train other weights than single, each with what is known (issue 12
# stays open on them). The test fails on any failure outside this list; one that starts to match is reported.
# combinations that still fail, each with what is known of it (empty: every combination trains and matches or is
# refused; the four listed here before were the relativistic loss's per-rank mean, fixed, per-rank BN beside a
# global statistic and tiny BigGAN round-off, both comparison limits now named in config_matrix, and lazy ortho
# under ZeRO-3, now refused)
KNOWN_FAILURES: set[tuple] = set()


def known_failure(combo) -> bool:
    return (combo["arch"], combo["penalty"], combo["every"], combo["strategy"]) in KNOWN_FAILURES


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_every_combination_of_the_covering_subset_trains_and_matches_single_or_is_refused(covering):
    rows = matrix.run_matrix(covering, progress=False)
    table = matrix.format_table(rows)
    counts = matrix.counts(rows)
    print(table)
    unexpected = [r for r in rows if r.status == "failed" and not known_failure(r.combo)]
    assert not unexpected, "\n" + matrix.format_table(unexpected)
    fixed = [r for r in rows if r.status != "failed" and known_failure(r.combo)]
    if fixed:
        print("known failures that now pass (drop them from KNOWN_FAILURES):\n" + matrix.format_table(fixed))
    assert counts["trained"] > 40 and counts["refused"] > 10, table
    multi_rank = [r for r in rows if r.status == "trained" and r.combo["strategy"] != "single"]
    assert all(r.reason.startswith(("matches single", "not compared")) for r in multi_rank), table
    assert sum(r.reason.startswith("matches single") for r in multi_rank) > 25, table

