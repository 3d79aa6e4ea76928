"""The configuration space as a test: every combination trains and matches single, or config validation refuses it.

    python tools/config_matrix.py --pairwise              # every pair of axis values at least once (CI's subset)
    python tools/config_matrix.py                         # the full product (large: restrict it with --axis)
    python tools/config_matrix.py --axis arch=mlp,dcgan --axis strategy=single,ddp --validate-only

Each combination is a tiny config (2 G steps, batch 16). It is first validated with `config_from_dict`: a refusal
must be ONE line naming the keys and the fix. A valid one trains with gandist's own Trainer: on one process
(`single`), or on a 2-rank gloo group that stays up for the whole matrix (ddp, zero1/2/3), and the parent trains a
single-process reference of the same global batch beside it. G, D and EMA weights must then agree elementwise,
|a - b| <= ATOL + RTOL * |b|, or within a whole-net norm where rounding or per-rank randomness rules out elementwise
agreement (see `approximate`). Any exception after validation, or a mismatch, is `failed`.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import os
import queue
import random
import shutil
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

AXES: dict[str, list] = {
    "arch": ["mlp", "dcgan", "resnet", "biggan", "biggan_deep", "stylegan2"],
    "data": ["toy2d", "digits"],
    "loss": ["ns", "hinge", "wasserstein", "ls", "relativistic"],
    "penalty": ["none", "gp", "dragan", "r1", "weight_clip", "bcr", "path_length", "ortho"],
    "every": [1, 4],  # 4: lazy regularization (its own phase every 4 steps, weight x 4)
    "pack": [1, 2],
    "diffaugment": ["", "color,translation,cutout"],
    "instance_noise": [0.0, 0.1],
    "accumulation": [1, 2],
    "amp": ["off", "bf16"],
    "cross_replica_bn": [False, True],
    "strategy": ["single", "ddp", "zero1", "zero2", "zero3"],
}

# the smallest nets of each family that still have all their parts (attention, hierarchical z, BN, mapping, mbstd)
TINY_MODELS = {
    "mlp": {"hidden": 16, "depth": 2},
    # no spectral norm in the small nets' D: its power iteration runs once per forward, and per-rank batch norm is
    # compared with a single process that runs WORLD x the micro-batches (so D forwards); BigGAN keeps its SN
    "dcgan": {"ch": 4, "z_dim": 8, "spectral_norm": False},
    "resnet": {"ch": 4, "z_dim": 8, "spectral_norm": False},
    "biggan": {"ch": 2, "d_ch": 2, "z_dim": 12, "shared_dim": 4, "attention": [16]},
    "biggan_deep": {"ch": 2, "d_ch": 2, "z_dim": 12, "shared_dim": 4, "attention": [16], "blocks_per_stage": 1},
    # style mixing draws from each rank's torch RNG (as stylegan2-ada): off, so that ranks are comparable
    "stylegan2": {"z_dim": 8, "w_dim": 8, "mapping_layers": 1, "d_mapping_layers": 1, "channel_base": 64,
                  "channel_max": 8, "style_mixing_prob": 0.0, "mbstd_group": 2},
}
RESOLUTION = {"biggan": 32, "biggan_deep": 32}  # BigGAN starts at 32 px; the others train at 16
BATCH, STEPS, WORLD = 16, 2, 2
HAS_BATCH_NORM = ("dcgan", "resnet", "biggan", "biggan_deep")
# fp32: elementwise |a - b| <= ATOL + RTOL * |b| after STEPS steps (weights move by ~lr = 1e-3 per step)
ATOL, RTOL = 1e-6, 1e-4
# whole-net norms ||a - b|| <= rtol * ||b||, where elementwise agreement is not to be had: bf16 autocast rounds
# matmul inputs to 8 mantissa bits (rtol: one bf16 step, 2^-8); StyleGAN2 draws its per-pixel noise from each
# rank's torch RNG (as stylegan2-ada; its strengths start at 0 and move by ~lr per step); per-rank BN with SN
MODEL_RTOL, BF16_RTOL, NOISE_RTOL = 1e-3, 4e-3, 1e-2


def canonical(combo: dict) -> dict:
    """The combination with axes that do not apply dropped (no penalty: no interval)."""
    return {k: v for k, v in combo.items() if not (k == "every" and combo.get("penalty") == "none")}


def label(combo: dict) -> str:
    """A short readable name: only values that differ from the axis' first value (arch, data, strategy always)."""
    parts = []
    for k, v in canonical(combo).items():
        if k in ("arch", "data", "strategy", "penalty") or v != AXES[k][0]:
            parts.append(f"{k}={v}" if k not in ("arch", "strategy") else str(v))
    return " ".join(parts)


def config_dict(combo: dict, reference: bool = False) -> dict:
    """The config of a combination (reference: the single-process run it is compared with)."""
    arch, data, strategy, acc = combo["arch"], combo["data"], combo["strategy"], combo["accumulation"]
    penalties = []
    if combo["penalty"] != "none":
        penalties = [{"kind": combo["penalty"], "every": combo["every"]}]
    data_section = {"kind": "toy2d"} if data == "toy2d" else {"kind": "digits", "resolution": RESOLUTION.get(arch, 16)}
    if reference and strategy != "single" and arch in HAS_BATCH_NORM and not combo["cross_replica_bn"]:
        # each rank normalizes over its own micro-batch: one process sees the same groups with WORLD x the micro-batches
        acc *= WORLD
    return {
        "name": "matrix", "seed": 0,
        "model": {"arch": arch, **TINY_MODELS[arch]},
        "data": data_section,
        "loss": {"kind": combo["loss"]},
        "penalties": penalties,
        "augment": {"pack": combo["pack"], "diffaugment": combo["diffaugment"],
                    "instance_noise": {"std": combo["instance_noise"]}},
        # eps well above gradient round-off: Adam's first steps are lr * g / (|g| + eps), which turns round-off in
        # a gradient that should be 0 into a full lr-sized step, and is blind to a wrong gradient scale
        "optim": {"accumulation": acc, "g": {"lr": 1e-3, "eps": 1e-3}, "d": {"lr": 1e-3, "eps": 1e-3}},
        "train": {"steps": STEPS, "batch_size": BATCH, "amp": combo["amp"], "ema": {"decay": 0.5}},
        "distributed": {"strategy": "single" if reference else strategy,
                        "cross_replica_bn": combo["cross_replica_bn"]},
        "watchdog": {"enabled": False},
        "checkpoint": {"every": STEPS},
        "telemetry": {"progress": False, "sample_every": 0, "log_every": STEPS},
    }


def validate(combo: dict):
    """(config, None) or (None, the one-line refusal)."""
    from gandist.config import ConfigError, config_from_dict

    try:
        return config_from_dict(config_dict(combo)), None
    except ConfigError as err:
        return None, str(err)


# ---------------------------------------------------------------------------------------------------------------
# Which combinations


def full_product(axes: dict[str, list]) -> list[dict]:
    """Every combination (duplicates that differ only in axes that do not apply are dropped)."""
    seen, out = set(), []
    for values in itertools.product(*axes.values()):
        combo = dict(zip(axes, values))
        key = tuple(sorted(canonical(combo).items()))
        if key not in seen:
            seen.add(key)
            out.append(combo)
    return out


def _pairs(combo: dict, names: list[str]) -> set:
    return {(a, combo[a], b, combo[b]) for a, b in itertools.combinations(names, 2)}


def pairwise(axes: dict[str, list], is_valid, candidates: int = 24, persist: int = 200, seed: int = 0) -> list[dict]:
    """A covering subset: every pair of values of two axes in at least one combination (greedy, deterministic).

    A pair is covered by a valid combination whenever one exists, so that what the pair does is trained; a pair no
    valid combination holds (mlp on digits) is covered by a refused one, so that its refusal is seen. Each new
    combination starts from the first uncovered pair; `candidates` completions (greedy: most new pairs, ties broken
    by a seeded RNG; and random ones) are tried, up to `persist` when none is valid, and the valid one covering the
    most new pairs is kept.
    """
    names = list(axes)
    rng = random.Random(seed)
    uncovered = set()
    for a, b in itertools.combinations(names, 2):
        uncovered |= {(a, va, b, vb) for va in axes[a] for vb in axes[b]}

    def complete(fixed: dict, greedy: bool) -> dict:
        combo = dict(fixed)
        order = [n for n in names if n not in combo]
        rng.shuffle(order)
        for name in order:
            values = list(axes[name])
            rng.shuffle(values)
            if greedy:
                combo[name] = max(values, key=lambda v: sum((name, v, o, combo[o]) in uncovered
                                                            or (o, combo[o], name, v) in uncovered for o in combo))
            else:
                combo[name] = values[0]
        return {n: combo[n] for n in names}

    out: list[dict] = []
    while uncovered:
        a, va, b, vb = min(uncovered, key=lambda p: (names.index(p[0]), names.index(p[2]),
                                                      axes[p[0]].index(p[1]), axes[p[2]].index(p[3])))
        best, best_gain, fallback = None, 0, None
        for t in range(persist):
            if t >= candidates and best is not None:
                break
            combo = complete({a: va, b: vb}, greedy=t % 2 == 0)
            fallback = fallback or combo
            gain = len(_pairs(combo, names) & uncovered)
            if gain > best_gain and is_valid(combo):
                best, best_gain = combo, gain
        if best is None:  # no valid combination holds this pair: its refusal is what there is to see
            best = fallback
            uncovered.discard((a, va, b, vb))  # its other pairs are left to a combination that trains
        else:
            uncovered -= _pairs(best, names)
        out.append(best)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Training: a 2-rank group that lives for the whole matrix, and single-process references in the parent


def _quiet() -> None:
    logging.getLogger().setLevel(logging.ERROR)
    for name in ("gandist", "DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore")


def _short(err: BaseException) -> str:
    """`Type: first line` of an exception, with the innermost gandist/deepspeed frame it came from."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if "site-packages" not in f.filename
              or "deepspeed" in f.filename]
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    text = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}{where}"


def train_here(cfg_data: dict, run_dir: str) -> None:
    """Validate and train one config in this process with gandist's own Trainer (what `gandist train` runs)."""
    from gandist.config import config_from_dict
    from gandist.train.loop import run_training

    run_training(config_from_dict(cfg_data), run_dir)


def _worker(rank: int, port: int, tasks, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    _quiet()
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    # the strategies reuse an initialized default group and leave it up on close: one rendezvous per matrix
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=120))
    while True:
        task = tasks.get()
        if task is None:
            break
        key, cfg_data, run_dir = task
        try:
            if cfg_data is None:  # after a failure on every rank: is the group still in step?
                dist.monitored_barrier(timeout=timedelta(seconds=20), wait_all_ranks=True)
            else:
                train_here(cfg_data, run_dir)
            results.put((key, rank, None))
        except BaseException as err:  # noqa: BLE001  every failure is a row of the table
            results.put((key, rank, _short(err)))
    dist.destroy_process_group()


class RankGroup:
    """Two spawned processes in one gloo group that train the combinations they are sent."""

    def __init__(self) -> None:
        import torch.multiprocessing as mp

        self.ctx = mp.get_context("spawn")
        self.results = self.ctx.Queue()
        self.tasks = [self.ctx.Queue() for _ in range(WORLD)]
        with socket.socket() as s:  # a free port for the group's rendezvous
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.procs = [self.ctx.Process(target=_worker, args=(r, port, self.tasks[r], self.results), daemon=True)
                      for r in range(WORLD)]
        for p in self.procs:
            p.start()

    def submit(self, key: str, cfg_data: dict, run_dir: str) -> None:
        for q in self.tasks:
            q.put((key, cfg_data, run_dir))

    def wait(self, key: str, timeout: float) -> dict[int, str | None]:
        """{rank: None or its error} of every rank that answered within `timeout` seconds."""
        answers: dict[int, str | None] = {}
        deadline = time.time() + timeout
        while len(answers) < WORLD and time.time() < deadline:
            if any(not p.is_alive() for p in self.procs):
                break
            try:
                got, rank, err = self.results.get(timeout=max(0.1, min(2.0, deadline - time.time())))
            except queue.Empty:
                continue
            if got == key:
                answers[rank] = err
                if err is not None:  # the other rank may now wait in a collective: give it a short while only
                    deadline = min(deadline, time.time() + 15)
        return answers

    def train(self, key: str, cfg_data: dict, run_dir: str, timeout: float, while_waiting=None) -> str | None:
        """Train on every rank (running `while_waiting()` here meanwhile); None, or the first error. A group
        that is out of step after a failure is killed, and the next call spawns a new one."""
        for q in self.tasks:
            q.put((key, cfg_data, run_dir))
        if while_waiting is not None:
            while_waiting()
        answers = self.wait(key, timeout)
        errors = [f"rank {r}: {e}" for r, e in sorted(answers.items()) if e is not None]
        if len(answers) < WORLD:
            dead = [p.exitcode for p in self.procs if not p.is_alive()]
            errors.append(f"a rank died (exit {dead[0]})" if dead else f"a rank hung (no answer in {timeout:.0f} s)")
        if errors and not (len(answers) == WORLD and self._in_step(key)):
            self.close(kill=True)
        return errors[0] if errors else None

    def _in_step(self, key: str) -> bool:
        for q in self.tasks:
            q.put((f"{key}-ping", None, None))
        answers = self.wait(f"{key}-ping", 30)
        return len(answers) == WORLD and all(e is None for e in answers.values())

    @property
    def alive(self) -> bool:
        """Every rank process is running."""
        return all(p.is_alive() for p in self.procs)

    def close(self, kill: bool = False) -> None:
        for q, p in zip(self.tasks, self.procs):
            if not kill and p.is_alive():
                q.put(None)
        for p in self.procs:
            p.join(timeout=0 if kill else 30)
            if p.is_alive():
                p.kill()
                p.join()


def _float_entries(net) -> dict:
    # running statistics do not enter a training step: BN's running mean/var (batch statistics are used) and
    # StyleGAN2's w_avg (the truncation target); under per-rank batch norm DDP keeps rank 0's
    skip = ("running_mean", "running_var", "w_avg")
    return {k: v.float() for k, v in net.state_dict().items() if v.dtype.is_floating_point and not k.endswith(skip)}


def approximate(combo: dict) -> dict[str, float]:
    """Why a combination can only be compared with a whole-net norm, and that norm's tolerance ({}: elementwise)."""
    multi = combo["strategy"] != "single"
    why = {}
    if combo["amp"] == "bf16":
        why["bf16 rounding"] = BF16_RTOL
    if combo["arch"] == "stylegan2" and multi:
        why["per-rank noise"] = NOISE_RTOL
    if combo["arch"] in ("biggan", "biggan_deep") and not combo["cross_replica_bn"] and multi:
        # per-rank BN is matched by WORLD x the micro-batches on one process, which iterates SN's power method more
        why["per-rank BN with SN"] = MODEL_RTOL
    elif combo["arch"] in ("biggan", "biggan_deep") and multi:
        # ch=2 BigGAN: class-conditional BN over channels of tiny variance turns sum-order round-off into ~1e-5
        # weight differences after Adam's first steps (ns matches elementwise, ls/hinge 2-8x ATOL); whole-net is 1e-5
        why["tiny-width BN round-off"] = MODEL_RTOL
    return why


def not_comparable(combo: dict) -> str | None:
    """Why no single-process run can be the reference (None: one can)."""
    per_rank_bn = combo["arch"] in HAS_BATCH_NORM and not combo["cross_replica_bn"] and combo["strategy"] != "single"
    global_stat = [what for what, on in (("DRAGAN's batch std", combo["penalty"] == "dragan"),
                                         ("the relativistic mean logit", combo["loss"] == "relativistic")) if on]
    if per_rank_bn and global_stat:
        # the reference splits the batch into WORLD micro-batches to copy per-rank BN, which then takes the global
        # statistic over one micro-batch: both cannot hold on one process (cross_replica_bn=True compares exactly)
        return f"per-rank BN beside {' and '.join(global_stat)} over every rank"
    return None


def compare(run_dir: str, reference_dir: str, combo: dict) -> tuple[bool, str]:
    """Whether G, D and EMA G agree with the reference: elementwise |a - b| <= ATOL + RTOL * |b|, or, where
    `approximate` says why not, ||a - b|| <= rtol * ||b|| over each whole net."""
    import gandist
    import torch

    a, b = gandist.load_run(run_dir), gandist.load_run(reference_dir)
    why = approximate(combo)
    rtol = max(why.values(), default=0.0)
    worst, where = 0.0, ""
    for net in ("G", "D", "G_ema"):
        sa, sb = _float_entries(getattr(a, net)), _float_entries(getattr(b, net))
        if "per-rank BN with SN" in why:  # power-iteration state: it follows the number of forwards
            sb = {k: v for k, v in sb.items() if not k.endswith((".u", ".v", ".sigma"))}
        if why:
            diff = torch.cat([(sa[k] - sb[k]).reshape(-1) for k in sb]).norm()
            ratio = float(diff / torch.cat([v.reshape(-1) for v in sb.values()]).norm())
            if ratio / rtol > worst:
                worst, where = ratio / rtol, f"{net}: ||a-b|| / ||b|| {ratio:.1e}, {' + '.join(why)}"
            continue
        for k, vb in sb.items():
            diff = (sa[k] - vb).abs()
            ratio = float((diff / (ATOL + RTOL * vb.abs())).max()) if diff.numel() else 0.0
            if ratio > worst:
                worst, where = ratio, f"{net}.{k} |a-b| {float(diff.max()):.2e}"
    return worst <= 1.0, f"worst {worst:.2f} of tolerance ({where})" if where else "identical"


@dataclass
class Row:
    """One combination's outcome."""

    combo: dict
    status: str  # trained | refused | failed
    reason: str = ""
    seconds: float = 0.0


def run_matrix(combos: list[dict], progress: bool = True, timeout: float = 180) -> list[Row]:
    """Validate, train and compare each combination; returns one Row each (never raises for a combination)."""
    _quiet()
    from tqdm import tqdm

    rows: list[Row] = []
    group: RankGroup | None = None
    work = Path(tempfile.mkdtemp(prefix="gandist-matrix-"))
    bar = tqdm(combos, unit="combo", disable=not progress, dynamic_ncols=True, file=sys.stderr)
    try:
        for i, combo in enumerate(bar):
            bar.set_postfix_str(label(combo)[:60])
            t0 = time.time()
            cfg, refusal = validate(combo)
            if cfg is None:
                status = "refused" if "\n" not in refusal else "failed"
                rows.append(Row(combo, status, refusal if status == "refused" else "refusal of several lines: "
                                + refusal.replace("\n", " | ")))
                continue
            run_dir, ref_dir = str(work / f"{i}"), str(work / f"{i}-ref")
            try:
                if combo["strategy"] == "single":
                    train_here(config_dict(combo), run_dir)
                    rows.append(Row(combo, "trained", "single (the reference)", time.time() - t0))
                    continue
                group = group if group is not None and group.alive else RankGroup()
                unmatched = not_comparable(combo)
                if unmatched:  # still trained on the ranks: it must not fail
                    error = group.train(str(i), config_dict(combo), run_dir, timeout)
                    rows.append(Row(combo, "failed" if error else "trained",
                                    error or f"not compared: {unmatched}", time.time() - t0))
                    continue
                ref_error = []

                def reference(combo=combo, ref_dir=ref_dir):
                    try:
                        train_here(config_dict(combo, reference=True), ref_dir)
                    except BaseException as err:  # noqa: BLE001
                        ref_error.append(_short(err))

                error = group.train(str(i), config_dict(combo), run_dir, timeout, while_waiting=reference)
                if error is not None:
                    rows.append(Row(combo, "failed", error, time.time() - t0))
                elif ref_error:
                    rows.append(Row(combo, "failed", f"single reference: {ref_error[0]}", time.time() - t0))
                else:
                    ok, detail = compare(run_dir, ref_dir, combo)
                    rows.append(Row(combo, "trained" if ok else "failed",
                                    f"matches single: {detail}" if ok else f"differs from single: {detail}",
                                    time.time() - t0))
            except BaseException as err:  # noqa: BLE001
                if isinstance(err, KeyboardInterrupt):
                    raise
                rows.append(Row(combo, "failed", _short(err), time.time() - t0))
            finally:
                shutil.rmtree(run_dir, ignore_errors=True)
                shutil.rmtree(ref_dir, ignore_errors=True)
    finally:
        bar.close()
        if group is not None and group.alive:
            group.close()
        shutil.rmtree(work, ignore_errors=True)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# The table


def counts(rows: list[Row]) -> dict[str, int]:
    """{'trained': n, 'refused': n, 'failed': n}."""
    out = {"trained": 0, "refused": 0, "failed": 0}
    for r in rows:
        out[r.status] += 1
    return out


def format_table(rows: list[Row], show: tuple[str, ...] = ("trained", "refused", "failed")) -> str:
    """One line per combination (status, seconds, combination, reason) and the counts."""
    lines = []
    width = max((len(label(r.combo)) for r in rows), default=10)
    for r in rows:
        if r.status in show:
            secs = f"{r.seconds:5.1f}s" if r.seconds else "     -"
            lines.append(f"{r.status:<8} {secs}  {label(r.combo):<{width}}  {r.reason}")
    c = counts(rows)
    lines.append(f"{len(rows)} combinations: {c['trained']} trained, {c['refused']} refused, {c['failed']} failed")
    return "\n".join(lines)


def restrict(axes: dict[str, list], specs: list[str]) -> dict[str, list]:
    """Axes limited by `name=v1,v2` specs (values parsed like --set values)."""
    import yaml

    out = dict(axes)
    for spec in specs:
        name, sep, values = spec.partition("=")
        if not sep or name not in axes:
            raise SystemExit(f"--axis {spec!r}: expected NAME=V1,V2 with NAME one of {', '.join(axes)}")
        parsed = []
        for text in values.split(";" if name == "diffaugment" else ","):
            value = yaml.safe_load(text) if text.strip() else ""
            value = "" if value is None else value
            value = text if name in ("amp", "diffaugment") else value
            if value not in axes[name]:
                raise SystemExit(f"--axis {name}: {text!r} is not one of {axes[name]}")
            parsed.append(value)
        out[name] = parsed
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the matrix table; exit 1 when any combination failed."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--axis", action="append", default=[], metavar="NAME=V1,V2",
                   help="restrict an axis (diffaugment values are separated by ';'), e.g. --axis strategy=single,ddp")
    p.add_argument("--pairwise", action="store_true", help="only a covering subset: every pair of values once")
    p.add_argument("--validate-only", action="store_true", help="validate every combination, train none")
    p.add_argument("--show", default="trained,refused,failed", help="statuses listed in the table")
    p.add_argument("--limit", type=int, default=0, help="stop after this many combinations (0: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    axes = restrict(AXES, args.axis)
    combos = pairwise(axes, lambda c: validate(c)[0] is not None) if args.pairwise else full_product(axes)
    if args.limit:
        combos = combos[:args.limit]
    if args.validate_only:
        rows = []
        for combo in combos:
            cfg, refusal = validate(combo)
            rows.append(Row(combo, "refused", refusal) if cfg is None else Row(combo, "trained", "valid (not run)"))
    else:
        rows = run_matrix(combos, progress=not args.no_progress)
    print(format_table(rows, tuple(args.show.split(","))))
    return 1 if counts(rows)["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
