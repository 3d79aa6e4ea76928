"""Unrolled GAN (optim.unrolled_steps, train/unrolled.py): off is unchanged, D is restored exactly, the exact form's
G gradient is the derivative through D's real optimizer step (finite differences), resume is exact, bad keys refused."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

import gandist
from gandist.config import load_config
from gandist.errors import ConfigError
from gandist.train.loop import Trainer, run_training
from gandist.train.unrolled import DifferentiableUpdate

# SN in D: the look-ahead forwards move its u/v/sigma buffers, which must come back
TINY = ["model.arch=mlp", "model.hidden=16", "model.depth=2", "model.z_dim=4", "model.spectral_norm=true",
        "data.kind=toy2d", "train.batch_size=32", "telemetry.progress=false", "telemetry.sample_every=0",
        "optim.d.lr=1e-2", "optim.g.lr=1e-2"]


def _trainer(tmp_path, name, extra):
    return Trainer(load_config(None, TINY + ["train.steps=10"] + extra), str(tmp_path / name))


def _state(tr, net):
    return {k: v.clone() for k, v in tr.strategy.module(net).state_dict().items()}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unrolled_steps_zero_is_the_step_without_the_option(tmp_path):
    plain, off = _trainer(tmp_path, "plain", []), _trainer(tmp_path, "off", ["optim.unrolled_steps=0"])
    try:
        for _ in range(3):
            plain.train_step(), off.train_step()
        for net in ("G", "D"):
            assert _equal(_state(plain, net), _state(off, net))
    finally:
        plain.close(), off.close()


@pytest.mark.parametrize("form", ["copy", "exact"])
def test_look_ahead_leaves_d_as_the_d_phase_left_it(tmp_path, form):
    # reference: the same step with no G phase at all, so no look-ahead ever happened
    d_only = _trainer(tmp_path, "d_only", [])
    d_only.phases = [p for p in d_only.phases if p.net == "D"]
    plain = _trainer(tmp_path, "plain", [])
    unrolled = _trainer(tmp_path, form, ["optim.unrolled_steps=3", f"optim.unrolled_form={form}"])
    try:
        d_only.train_step()
        plain_sig, sig = plain.train_step(), unrolled.train_step()
        assert _equal(_state(unrolled, "D"), _state(d_only, "D"))  # weights and SN buffers
        opt_a = unrolled.strategy.state_dict()[0]["optim"]["D"]["params"]
        opt_b = d_only.strategy.state_dict()[0]["optim"]["D"]["params"]
        assert opt_a.keys() == opt_b.keys() and all(_equal(opt_a[k], opt_b[k]) for k in opt_a)
        # G trained against another D than k=0's
        assert abs(float(sig.losses["G"]) - float(plain_sig.losses["G"])) > 1e-4
        g_plain, g_unrolled = _state(plain, "G"), _state(unrolled, "G")
        assert max(float((g_plain[k] - g_unrolled[k]).abs().max()) for k in g_plain) > 1e-5
    finally:
        d_only.close(), plain.close(), unrolled.close()


@pytest.mark.parametrize("form", ["copy", "exact"])
def test_look_ahead_fakes_leave_g_batch_norm_statistics_as_without_unrolling(tmp_path, form):
    # DCGAN: BN in G (running statistics), SN in D; G's phase starts from the same G and buffers as with k=0
    dcgan = ["model.arch=dcgan", "model.ch=8", "model.z_dim=8", "data.kind=digits", "data.resolution=8",
             "train.batch_size=8", "telemetry.progress=false", "telemetry.sample_every=0", "train.steps=10"]
    plain = Trainer(load_config(None, dcgan), str(tmp_path / "plain"))
    unrolled = Trainer(load_config(None, dcgan + ["optim.unrolled_steps=2", f"optim.unrolled_form={form}"]),
                       str(tmp_path / form))
    try:
        plain.train_step(), unrolled.train_step()
        a, b = _state(plain, "G"), _state(unrolled, "G")
        running = [k for k in a if k.endswith(("running_mean", "running_var"))]
        assert running and all(torch.equal(a[k], b[k]) for k in running)
        assert not all(torch.equal(a[k], b[k]) for k in a)  # while G's weights took another step
    finally:
        plain.close(), unrolled.close()


def test_copy_and_exact_see_the_same_look_ahead_d_but_differ_in_g_gradient(tmp_path):
    # the exact form's functional Adam gives the D that copy's real torch Adam steps give: the same G loss value
    runs = {f: _trainer(tmp_path, f, ["optim.unrolled_steps=2", f"optim.unrolled_form={f}"]) for f in ("copy", "exact")}
    try:
        sigs = {f: tr.train_step() for f, tr in runs.items()}
        assert float(sigs["copy"].losses["G"]) == pytest.approx(float(sigs["exact"].losses["G"]), rel=1e-5)
        a, b = _state(runs["copy"], "G"), _state(runs["exact"], "G")
        assert max(float((a[k] - b[k]).abs().max()) for k in a) > 1e-6  # second-order terms changed G's update
    finally:
        for tr in runs.values():
            tr.close()


def _nets():
    torch.manual_seed(0)
    G = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    D = nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    return G, D


def _d_loss(D_fwd, G, z, real):
    return nn.functional.softplus(-D_fwd(real)).mean() + nn.functional.softplus(D_fwd(G(z))).mean()


@pytest.mark.parametrize("kind,k,clip", [("adam", 1, 0.0), ("adam", 2, 0.5), ("sgd", 2, 0.0)])
def test_exact_g_gradient_matches_finite_differences_through_torch_optimizer_steps(kind, k, clip):
    G, D = _nets()
    gen = torch.Generator().manual_seed(1)
    real, zs = torch.randn(16, 2, generator=gen, dtype=torch.float64), [
        torch.randn(16, 2, generator=gen, dtype=torch.float64) for _ in range(k + 3)]
    make = (lambda ps: torch.optim.Adam(ps, lr=0.05, betas=(0.5, 0.9))) if kind == "adam" else (
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9))
    opt = make(D.parameters())
    for z in zs[:2]:  # moments that are not zero
        opt.zero_grad()
        _d_loss(D, G, z, real).backward()
        opt.step()

    def g_loss_after(G_):
        """Reference: k real torch optimizer steps on a copy of D, then G's loss against it."""
        D_ = copy.deepcopy(D)
        opt_ = make(D_.parameters())
        opt_.load_state_dict(copy.deepcopy(opt.state_dict()))
        for j in range(k):
            opt_.zero_grad()
            _d_loss(D_, G_, zs[2 + j], real).backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(D_.parameters(), clip)
            opt_.step()
        return nn.functional.softplus(-D_(G_(zs[-1]))).mean()

    names = [n for n, _ in D.named_parameters()]
    params = [p.detach().requires_grad_() for p in D.parameters()]
    update = DifferentiableUpdate(opt, list(D.parameters()), kind, clip)
    for j in range(k):
        fwd = lambda x, ps=params: functional_call(D, dict(zip(names, ps)), (x,))  # noqa: E731
        grads = torch.autograd.grad(_d_loss(fwd, G, zs[2 + j], real), params, create_graph=True)
        params = update(params, list(grads))
    loss = nn.functional.softplus(-functional_call(D, dict(zip(names, params)), (G(zs[-1]),))).mean()
    assert float(loss.detach()) == pytest.approx(float(g_loss_after(G).detach()), rel=1e-12)  # the same D after the updates
    exact = torch.autograd.grad(loss, list(G.parameters()))

    eps = 1e-6
    for p, g in zip(G.parameters(), exact):
        fd = torch.zeros_like(p)
        for i in range(p.numel()):
            with torch.no_grad():
                p.view(-1)[i] += eps
            up = float(g_loss_after(G).detach())
            with torch.no_grad():
                p.view(-1)[i] -= 2 * eps
            down = float(g_loss_after(G).detach())
            with torch.no_grad():
                p.view(-1)[i] += eps
            fd.view(-1)[i] = (up - down) / (2 * eps)
        torch.testing.assert_close(g, fd, rtol=1e-5, atol=1e-8)
    # and the unrolled term matters: the gradient against the fixed look-ahead D is another one
    D_k = {n: q.detach() for n, q in zip(names, params)}
    first_order = torch.autograd.grad(
        nn.functional.softplus(-functional_call(D, D_k, (G(zs[-1]),))).mean(), list(G.parameters()))
    assert max(float((a - b).abs().max()) for a, b in zip(exact, first_order)) > 1e-4


@pytest.mark.parametrize("form", ["copy", "exact"])
def test_resume_with_unrolling_is_bitwise_exact(tmp_path, form):
    opts = TINY + ["optim.unrolled_steps=2", f"optim.unrolled_form={form}", "checkpoint.keep_last=3",
                   "train.ema.start_step=1", "checkpoint.every=3"]
    run_training(load_config(None, opts + ["train.steps=6"]), str(tmp_path / "straight"))
    run_training(load_config(None, opts + ["train.steps=3"]), str(tmp_path / "resumed"))
    run_training(load_config(None, opts + ["train.steps=6"]), str(tmp_path / "resumed"))
    a, b = gandist.load_run(str(tmp_path / "straight")), gandist.load_run(str(tmp_path / "resumed"))
    for net in ("G", "D", "G_ema"):
        assert _equal(getattr(a, net).state_dict(), getattr(b, net).state_dict()), net


@pytest.mark.parametrize("extra,words", [
    (["distributed.strategy=zero3"], ["optim.unrolled_steps=2", "zero3", "partitioned"]),
    (["distributed.strategy=zero1", "train.amp=bf16"], ["optim.unrolled_form=exact", "zero1", "train.amp=bf16"]),
    (["optim.d.kind=rmsprop"], ["optim.d.kind", "rmsprop", "optim.unrolled_form=copy"]),
    (["optim.accumulation=2"], ["optim.accumulation=2", "optim.unrolled_form=exact"]),
    (["train.amp=fp16"], ["train.amp=fp16"]),
    (["train.compile=true", "model.spectral_norm=false"], ["train.compile", "optim.unrolled_form=copy"]),
])
def test_unrolled_refusals_name_the_keys(extra, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, TINY + ["optim.unrolled_steps=2"] + extra)
    message = str(err.value)
    assert "\n" not in message.strip()
    for w in words:
        assert w in message


def test_unrolled_bad_values_are_refused():
    for bad in (["optim.unrolled_steps=-1"], ["optim.unrolled_steps=1", "optim.unrolled_form=adjoint"]):
        with pytest.raises(ConfigError, match="unrolled"):
            load_config(None, TINY + bad)
