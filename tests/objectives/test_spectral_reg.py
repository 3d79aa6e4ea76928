"""SR-GAN spectral regularization: the paper's compensation on a collapsed spectrum, its schedule, a training run
with it, and its refusals."""
import pytest
import torch

import gandist
from gandist.config import load_config
from gandist.errors import ConfigError
from gandist.nn.spectral_norm import SNConv2d, SNLinear
from gandist.objectives.config import SpectralRegConfig
from gandist.objectives.penalties import build_penalties
from gandist.objectives.spectral_reg import lifted_layers
from gandist.train.loop import run_training

QUIET = ["telemetry.progress=false", "telemetry.sample_every=0", "telemetry.log_every=1", "checkpoint.every=100"]
DIGITS = ["model.arch=dcgan", "model.ch=8", "model.z_dim=16", "data.kind=digits", "data.resolution=8",
          "train.batch_size=16"] + QUIET


def _with_spectrum(layer: torch.nn.Module, spectrum: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Give layer.weight the singular values `spectrum` (random orthonormal U, V); returns (U, V)."""
    gen = torch.Generator().manual_seed(0)
    rows = layer.weight.shape[0]
    cols = layer.weight[0].numel()
    u, _ = torch.linalg.qr(torch.randn(rows, rows, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, rows, generator=gen, dtype=torch.float64))
    w = u @ torch.diag(torch.tensor(spectrum, dtype=torch.float64)) @ v.T
    with torch.no_grad():
        layer.weight.copy_(w.reshape(layer.weight.shape).float())
    return u, v


def _spectrum(layer) -> torch.Tensor:
    return torch.linalg.svdvals(layer.weight.detach().double().reshape(layer.weight.shape[0], -1))


@pytest.mark.parametrize("fraction, expected", [
    (0.5, [4.0, 4.0, 0.1, 0.01]),  # i0 = 4 // 2: sigma_2 lifted to sigma_1, the tail left alone
    (0.75, [4.0, 4.0, 4.0, 0.01]),
    (1.0, [4.0, 4.0, 4.0, 4.0]),
    (0.25, [4.0, 1.0, 0.1, 0.01]),  # i0 = 1: only sigma_1, nothing changes
])
def test_collapsed_spectrum_is_lifted_to_sigma_1_by_the_papers_rule(fraction, expected):
    layer = SNLinear(6, 4)
    u, v = _with_spectrum(layer, [4.0, 1.0, 0.1, 0.01])
    (sr,) = build_penalties([SpectralRegConfig(every=1, fraction=fraction)])
    sr.after_step(torch.nn.Sequential(layer), step=0)
    assert torch.allclose(_spectrum(layer), torch.tensor(expected, dtype=torch.float64), atol=1e-5)
    # Delta W = U diag(delta) V^T: the singular vectors stay, W' v_i = s'_i u_i
    w = layer.weight.detach().double()
    for i, s in enumerate(expected):
        assert torch.allclose(w @ v[:, i], s * u[:, i], atol=1e-5)


def test_conv_layers_are_lifted_and_embeddings_and_plain_layers_are_not():
    D = torch.nn.Sequential(SNConv2d(2, 4, 3), torch.nn.Linear(3, 3))
    _with_spectrum(D[0], [2.0, 0.5, 0.2, 0.05])
    plain = D[1].weight.detach().clone()
    assert set(lifted_layers(D)) == {"0"}
    (sr,) = build_penalties([SpectralRegConfig(every=1)])
    sr.after_step(D, step=7)
    assert torch.allclose(_spectrum(D[0]), torch.tensor([2.0, 2.0, 0.2, 0.05], dtype=torch.float64), atol=1e-5)
    assert torch.equal(D[1].weight, plain)


def test_it_runs_every_k_steps_in_the_main_phase_without_lr_rescaling():
    layer = SNLinear(6, 4)
    _with_spectrum(layer, [3.0, 0.3, 0.2, 0.1])
    (sr,) = build_penalties([SpectralRegConfig(every=5)])
    assert sr.every == 1 and sr.interval == 5  # not a lazy phase: no Dreg phase, no k/(k+1) Adam rescale
    before = layer.weight.detach().clone()
    for step in (1, 2, 3, 4, 6):
        sr.after_step(torch.nn.Sequential(layer), step=step)
        assert torch.equal(layer.weight, before)
    sr.after_step(torch.nn.Sequential(layer), step=10)
    assert _spectrum(layer)[1].item() == pytest.approx(3.0, rel=1e-5)


def test_training_with_spectral_reg_trains_and_leaves_d_lifted(tmp_path):
    def singular_ratios(run_dir):
        D = gandist.load_run(str(run_dir)).D
        spectra = {n: _spectrum(m) for n, m in lifted_layers(D).items()}
        return {n: (s[1] / s[0]).item() for n, s in spectra.items() if s.numel() >= 4}  # rank 1 (the logit): none

    base = load_config(None, DIGITS + ["train.steps=3"])
    run_training(base, str(tmp_path / "plain"))
    cfg = load_config(None, DIGITS + ["train.steps=3", "penalties=[{kind: spectral_reg, every: 2}]"])
    summary = run_training(cfg, str(tmp_path / "sr"))
    assert summary["steps"] == 3 and all(torch.isfinite(torch.tensor(v)) for v in summary["last_losses"].values())
    assert summary["last_losses"]["D/spectral_reg"] == 0.0  # it adds no loss
    plain, lifted = singular_ratios(tmp_path / "plain"), singular_ratios(tmp_path / "sr")
    # step index 2 (the last) compensated D after its D step: sigma_2 == sigma_1 in every SN conv/linear layer
    assert len(lifted) >= 2
    assert all(r == pytest.approx(1.0, abs=1e-4) for r in lifted.values()), lifted
    assert max(plain.values()) < 0.99, plain


def test_d_without_spectral_norm_is_refused_at_config_time():
    with pytest.raises(ConfigError, match="penalties.0: spectral_reg .* model.spectral_norm=true"):
        load_config(None, DIGITS + ["model.spectral_norm=false", "penalties=[{kind: spectral_reg}]"])


@pytest.mark.parametrize("strategy", ["zero1", "zero2", "zero3"])
def test_zero_master_weights_are_refused(strategy):
    with pytest.raises(ConfigError, match=f"distributed.strategy={strategy} overwrites"):
        load_config(None, DIGITS + [f"distributed.strategy={strategy}", "penalties=[{kind: spectral_reg}]"])


def test_a_run_with_spectral_reg_resumes_bitwise_exactly(tmp_path):
    # the schedule is the G step (no state of its own): a resume at step 2 compensates at steps 2 and 4 as the
    # straight run does
    sr = DIGITS + ["penalties=[{kind: spectral_reg, every: 2}]", "checkpoint.every=2"]
    run_training(load_config(None, sr + ["train.steps=5"]), str(tmp_path / "straight"))
    run_training(load_config(None, sr + ["train.steps=2"]), str(tmp_path / "resumed"))
    run_training(load_config(None, sr + ["train.steps=5"]), str(tmp_path / "resumed"))
    a, b = gandist.load_run(str(tmp_path / "straight")), gandist.load_run(str(tmp_path / "resumed"))
    for net in ("G", "D"):
        sa, sb = getattr(a, net).state_dict(), getattr(b, net).state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), net
