"""Optimizers per net (optim.g/d.kind) and kernel implementations (optim.impl): each kind trains, resumes
bitwise exactly through the by-name checkpoint format, and the CPU kernels are reproducible run to run."""
import pytest
import torch

from gandist.config import ConfigError, load_config
from gandist.optim import KINDS, build_optimizer, lazy_optim
from gandist.train.loop import run_training
from tests.train.test_resume import _weights

TINY = ["model.arch=mlp", "model.hidden=16", "model.depth=2", "data.kind=toy2d", "train.batch_size=32",
        "telemetry.progress=false", "telemetry.sample_every=0", "checkpoint.keep_last=5"]


def _equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


@pytest.mark.parametrize("kind", KINDS)
def test_resume_is_exact_for_each_optimizer_kind(tmp_path, kind):
    n = 3
    extra = [f"optim.g.kind={kind}", f"optim.d.kind={kind}", "optim.g.momentum=0.5", "optim.d.momentum=0.5",
             "optim.d.weight_decay=0.01", "optim.g.lr=1e-3", "optim.d.lr=1e-3"]
    straight = load_config(None, TINY + extra + [f"train.steps={2 * n}", f"checkpoint.every={n}"])
    run_training(straight, str(tmp_path / "straight"))
    run_training(load_config(None, TINY + extra + [f"train.steps={n}", f"checkpoint.every={n}"]),
                 str(tmp_path / "resumed"))
    run_training(straight, str(tmp_path / "resumed"))
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    _equal(a, b)
    init = load_config(None, TINY + extra + ["train.steps=1", "checkpoint.every=1", "optim.g.lr=1e-12",
                                             "optim.d.lr=1e-12"])
    run_training(init, str(tmp_path / "init"))
    c = _weights(tmp_path / "init")
    assert any(not torch.allclose(a[k], c[k]) for k in a if k.startswith("D."))


@pytest.mark.parametrize("impl", ["foreach", "fused", "loop"])
def test_cpu_kernels_are_reproducible_and_resume_exactly(tmp_path, impl):
    base = TINY + [f"optim.impl={impl}", "train.steps=4", "checkpoint.every=2"]
    run_training(load_config(None, base), str(tmp_path / "a"))
    run_training(load_config(None, base), str(tmp_path / "b"))
    _equal(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    run_training(load_config(None, TINY + [f"optim.impl={impl}", "train.steps=2", "checkpoint.every=2"]),
                 str(tmp_path / "c"))
    run_training(load_config(None, base), str(tmp_path / "c"))
    _equal(_weights(tmp_path / "a"), _weights(tmp_path / "c"))


def test_impls_compute_the_same_adam_step():
    """foreach/fused/loop are kernel choices, not different optimizers: one step agrees to float rounding."""
    cfg = load_config(None, TINY).optim.g
    out = {}
    for impl in ("loop", "foreach", "fused"):
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
        opt = build_optimizer(ps, lazy_optim(cfg, impl, [], "G"))
        assert bool(opt.defaults.get("fused")) is (impl == "fused")
        assert bool(opt.defaults.get("foreach")) is (impl == "foreach")
        for _ in range(3):
            for p in ps:
                p.grad = torch.cos(p.detach() * 3)
            opt.step()
        out[impl] = torch.cat([p.detach().flatten() for p in ps])
    torch.testing.assert_close(out["foreach"], out["loop"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out["fused"], out["loop"], rtol=1e-6, atol=1e-7)


def test_adabelief_is_the_library_one():
    from pytorch_optimizer import AdaBelief

    cfg = load_config(None, TINY + ["optim.d.kind=adabelief"]).optim.d
    assert isinstance(build_optimizer([torch.nn.Parameter(torch.ones(2))], lazy_optim(cfg, "auto", [], "D")),
                      AdaBelief)


@pytest.mark.parametrize("overrides, words", [
    (["optim.impl=fused", "optim.g.kind=adabelief"], "optim.g.kind=adabelief has no fused kernel"),
    (["distributed.strategy=zero2", "optim.d.kind=rmsprop"], "optim.d.kind=rmsprop under distributed.strategy=zero2"),
    (["optim.g.kind=lion"], "optim.g.kind"),
    (["train.compile=true", "distributed.strategy=zero2"], "train.compile under distributed.strategy=zero2"),
    (["train.compile=true", "model.arch=dcgan", "data.kind=digits"], "train.compile with a spectrally normalized"),
    (["train.compile=true", "penalties=[{kind: r1, weight: 1.0}]"], "train.compile with penalties r1: .*double "
                                                                    "backward"),
])
def test_bad_optimizer_config_is_refused(overrides, words):
    with pytest.raises(ConfigError, match=words):
        load_config(None, overrides)


def test_deterministic_auto_is_deterministic_on_cpu_only():
    from gandist.train.device_setup import configure_device, wants_determinism

    assert wants_determinism("auto", torch.device("cpu")) and not wants_determinism("auto", torch.device("cuda"))
    assert wants_determinism(True, torch.device("cuda")) and not wants_determinism(False, torch.device("cpu"))
    assert configure_device("auto", torch.device("cpu")) and torch.are_deterministic_algorithms_enabled()
    assert load_config(None, TINY).train.deterministic == "auto"
