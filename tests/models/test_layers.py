"""Numerics of the layers in gandist/nn: spectral norm, modulated conv, orthogonal regularization, attention, CBN."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gandist.nn.attention import SelfAttention
from gandist.nn.conditional_bn import ConditionalBatchNorm2d
from gandist.nn.equalized import EqualizedConv2d, EqualizedLinear, MinibatchStd, downsample2d, fir_kernel, upsample2d
from gandist.nn.modulated_conv import modulated_conv2d
from gandist.nn.ortho import ortho_grad_reference, ortho_penalty
from gandist.nn.spectral_norm import SNConv2d, SNEmbedding, SNLinear, spectral_norm_layers


@pytest.mark.parametrize("make", [lambda: SNLinear(48, 32), lambda: SNConv2d(6, 20, 3),
                                  lambda: SNEmbedding(10, 24)], ids=["linear", "conv", "embedding"])
def test_spectral_norm_estimate_matches_matrix_2_norm(make):
    torch.manual_seed(0)
    layer = make()
    layer.train()
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
    exact = torch.linalg.matrix_norm(w, 2).item()
    x = torch.randint(0, 10, (4,)) if isinstance(layer, SNEmbedding) else (
        torch.randn(2, 6, 8, 8) if isinstance(layer, SNConv2d) else torch.randn(2, 48))
    for _ in range(200):  # one power iteration per training forward
        layer(x)
    assert layer.sigma.item() == pytest.approx(exact, rel=1e-4)
    # the weight the layer uses has top singular value 1
    normalized = layer.normalized_weight().detach().reshape(w.shape[0], -1)
    assert torch.linalg.matrix_norm(normalized, 2).item() == pytest.approx(1.0, rel=1e-4)
    assert torch.allclose(layer.u @ w @ layer.v, torch.tensor(exact), rtol=1e-4)


def test_spectral_norm_in_eval_mode_keeps_its_vectors():
    layer = SNLinear(8, 8).train()
    layer(torch.randn(1, 8))
    u, sigma = layer.u.clone(), layer.sigma.clone()
    layer.eval()
    layer(torch.randn(1, 8))
    assert torch.equal(layer.u, u) and torch.equal(layer.sigma, sigma)
    assert set(spectral_norm_layers(nn.Sequential(layer, nn.ReLU(), SNLinear(8, 2)))) == {"0", "2"}


def test_fresh_spectral_norm_layer_in_eval_mode_gives_a_positive_sigma():
    torch.manual_seed(0)
    for _ in range(20):  # random init vectors nearly orthogonal to the top direction must not blow up the weight
        layer = SNLinear(256, 256).eval()
        nn.init.orthogonal_(layer.weight)
        out = layer(torch.randn(4, 256))
        assert torch.isfinite(out).all() and out.std().item() < 10


def test_demodulated_conv_keeps_unit_variance():
    torch.manual_seed(0)
    x = torch.randn(4, 64, 24, 24)
    weight = torch.randn(32, 64, 3, 3) * 5.0  # scale and styles must not matter after demodulation
    styles = torch.rand(4, 64) * 3 + 0.1
    y = modulated_conv2d(x, weight, styles, demodulate=True, padding=0)
    per_sample_var = y.var(dim=[1, 2, 3])
    assert torch.allclose(per_sample_var, torch.ones(4), atol=0.08), per_sample_var
    undemodulated = modulated_conv2d(x, weight, styles, demodulate=False, padding=0)
    assert undemodulated.var().item() > 100  # without demodulation the variance follows the weights


@pytest.mark.parametrize("demodulate", [True, False])
def test_grouped_modulated_conv_equals_per_sample_loop(demodulate):
    torch.manual_seed(1)
    x, weight, styles = torch.randn(5, 8, 9, 9), torch.randn(6, 8, 3, 3), torch.randn(5, 8)
    grouped = modulated_conv2d(x, weight, styles, demodulate, padding=1, impl="grouped")
    reference = modulated_conv2d(x, weight, styles, demodulate, padding=1, impl="reference")
    assert grouped.shape == (5, 6, 9, 9)
    assert torch.allclose(grouped, reference, atol=1e-5)


def test_ortho_gradient_equals_biggan_closed_form_and_autograd_of_formula():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(7, 5), nn.Conv2d(3, 4, 3))
    beta = 1e-2
    ortho_penalty(net, beta).backward()
    for layer in net:
        w = layer.weight.detach().clone().requires_grad_(True)
        wm = w.reshape(w.shape[0], -1)
        formula = 0.5 * beta * ((wm @ wm.t()) * (1 - torch.eye(wm.shape[0]))).square().sum()
        (auto,) = torch.autograd.grad(formula, w)
        assert torch.allclose(layer.weight.grad, auto, atol=1e-6)
        assert torch.allclose(layer.weight.grad, ortho_grad_reference(layer.weight.detach(), beta), atol=1e-6)
        assert layer.bias.grad is None  # 1-D parameters are skipped


def test_ortho_is_zero_for_orthogonal_rows_and_skips_the_shared_embedding():
    net = nn.Module()
    net.lin = nn.Linear(6, 4)
    nn.init.orthogonal_(net.lin.weight)
    net.lin.weight.data *= 3.0  # orthogonal rows of any length: only the diagonal (skipped) is nonzero
    net.shared = nn.Embedding(10, 4)
    assert ortho_penalty(net, 1.0).item() == pytest.approx(0.0, abs=1e-9)
    assert ortho_penalty(net, 1.0, blacklist=[]).item() > 0.1  # the embedding counts when not blacklisted


def test_self_attention_starts_as_identity_and_mixes_positions_once_gamma_moves():
    torch.manual_seed(0)
    attn = SelfAttention(16).train()
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(attn(x), x)
    attn.gamma.data.fill_(1.0)
    y = attn(x)
    x2 = x.clone()
    x2[:, :, 0, 0] += 1.0  # one position changes: attention spreads it everywhere
    changed = (attn(x2) - y).abs().sum(dim=1)[0]
    assert (changed > 0).float().mean().item() > 0.9


def test_conditional_bn_starts_as_plain_bn_and_conditions_per_sample():
    torch.manual_seed(0)
    cbn = ConditionalBatchNorm2d(4, num_classes=3).train()
    x = torch.randn(6, 4, 5, 5) * 3 + 1
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    out = cbn(x, y)
    assert out.mean().item() == pytest.approx(0.0, abs=1e-5) and out.var(unbiased=False).item() == pytest.approx(1.0, abs=1e-3)
    cbn.gain.weight.data[1] = 1.0  # class 1: gain 1 + 1 = 2
    assert torch.allclose(cbn(x, y)[1], 2 * out[1], atol=1e-5) and torch.allclose(cbn(x, y)[0], out[0], atol=1e-6)
    shared = ConditionalBatchNorm2d(4, cond_dim=7)
    assert shared(x, torch.randn(6, 7)).shape == x.shape


def test_fir_resampling_preserves_constant_images_and_sizes():
    k = fir_kernel()
    x = torch.ones(1, 2, 8, 8)
    up, down = upsample2d(x, k), downsample2d(x, k)
    assert up.shape == (1, 2, 16, 16) and down.shape == (1, 2, 4, 4)
    assert torch.allclose(up[..., 2:-2, 2:-2], torch.ones(1)) and torch.allclose(down[..., 1:-1, 1:-1], torch.ones(1))


def test_equalized_layers_scale_weights_at_runtime():
    torch.manual_seed(0)
    lin = EqualizedLinear(256, 64, lr_mul=0.01)
    assert lin.weight.std().item() == pytest.approx(100, rel=0.05)  # stored / lr_mul ...
    assert lin(torch.randn(512, 256)).std().item() == pytest.approx(1.0, rel=0.1)  # ... unit-variance output
    conv = EqualizedConv2d(32, 16, 3, down=2)
    assert conv(torch.randn(2, 32, 8, 8)).shape == (2, 16, 4, 4)


def test_minibatch_std_appends_the_group_std():
    x = torch.zeros(4, 3, 2, 2)
    x[0] += 2.0  # over the group of 4: std of (2, 0, 0, 0) = sqrt(0.75)
    out = MinibatchStd(group_size=4)(x)
    assert out.shape == (4, 4, 2, 2)
    assert torch.allclose(out[:, 3], torch.full((4, 2, 2), math.sqrt(0.75)), atol=1e-4)
