"""StyleGAN2 behaviour: truncation toward w_avg, style mixing, noise modes, conditioning."""
from __future__ import annotations

import pytest
import torch

from gandist.data.base import DataInfo

from modelkit import TINY_STYLEGAN2, build


def _train_w_avg(G, steps: int = 20) -> None:
    G.train()
    for _ in range(steps):
        G.mapping(torch.randn(8, G.z_dim) + 0.5)  # shifted z so that w_avg moves away from zero


def test_w_avg_follows_the_mean_w_in_training_only(tiny_stylegan2):
    G, _ = tiny_stylegan2
    assert torch.equal(G.w_avg, torch.zeros(G.w_dim))
    _train_w_avg(G)
    moved = G.w_avg.clone()
    assert moved.abs().sum() > 0
    G.eval()
    G.mapping(torch.randn(8, G.z_dim))
    assert torch.equal(G.w_avg, moved)
    # after 20 steps with beta 0.995: w_avg = (1 - 0.995^20) * (mean of the ws seen), ~9.5% of the way
    ws = G.mapping(torch.randn(4096, G.z_dim) + 0.5)[:, 0]
    ratio = (G.w_avg @ ws.mean(0)) / (ws.mean(0) @ ws.mean(0))
    assert abs(ratio.item() - (1 - 0.995 ** 20)) < 0.02


def test_truncation_psi_zero_gives_the_mean_w_image(tiny_stylegan2):
    G, _ = tiny_stylegan2
    _train_w_avg(G)
    G.eval()
    a = G(torch.randn(3, G.z_dim), truncation=0.0)
    b = G(torch.randn(3, G.z_dim) * 4, truncation=0.0)
    mean_image = G.synthesis(G.w_avg.expand(3, G.num_ws, -1))
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a, mean_image, atol=1e-6)
    full = G(torch.randn(3, G.z_dim), truncation=1.0)
    assert (full - mean_image).abs().mean() > 1e-3  # psi=1 is not the mean image


def test_truncation_interpolates_ws_linearly_toward_w_avg(tiny_stylegan2):
    G, _ = tiny_stylegan2
    _train_w_avg(G)
    G.eval()
    z = torch.randn(2, G.z_dim)
    ws, half = G.mapping(z), G.mapping(z, truncation=0.5)
    assert torch.allclose(half, 0.5 * (ws + G.w_avg), atol=1e-6)


def test_style_mixing_changes_only_layers_from_the_cutoff(tiny_stylegan2):
    G, _ = tiny_stylegan2
    G.eval()
    assert G.num_ws == 6  # 4px: conv + torgb; 8px and 16px: two convs + torgb, sharing w with the next conv
    ws1, ws2 = G.mapping(torch.randn(2, G.z_dim)), G.mapping(torch.randn(2, G.z_dim))
    mixed = G.mix_styles(ws1, ws2, cutoff=3)
    assert torch.equal(mixed[:, :3], ws1[:, :3]) and torch.equal(mixed[:, 3:], ws2[:, 3:])

    outputs = {}
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: outputs.__setitem__(k, o)) for k, b in enumerate(G.synthesis.blocks)]
    G.synthesis(ws1)
    plain = dict(outputs)
    G.synthesis(mixed)
    for h in hooks:
        h.remove()
    # ws 0..2 drive the 4 px block and the 8 px convs; w 3 is the 8 px ToRGB and everything at 16 px
    assert torch.equal(outputs[0][0], plain[0][0]) and torch.equal(outputs[0][1], plain[0][1])
    assert torch.equal(outputs[1][0], plain[1][0])  # 8 px features: unchanged
    assert not torch.allclose(outputs[1][1], plain[1][1])  # 8 px image: its ToRGB style changed
    assert not torch.allclose(outputs[2][0], plain[2][0])


@pytest.mark.parametrize("prob,expect_mixed", [(1.0, 200), (0.0, 0), (0.5, (70, 130))])
def test_training_forward_mixes_styles_with_the_configured_probability(prob, expect_mixed):
    G, _ = build(TINY_STYLEGAN2 + ["model.conditional=false", f"model.style_mixing_prob={prob}"], DataInfo((1, 16, 16), 0))
    cutoffs = []
    mix = G.mix_styles
    G.mix_styles = lambda ws, ws2, cutoff: cutoffs.append(int(cutoff)) or mix(ws, ws2, cutoff)
    G.synthesis.forward = lambda ws, noise_mode=None: ws  # only the ws matter here
    G.train()
    torch.manual_seed(0)
    for _ in range(200):
        G(torch.randn(2, G.z_dim))
    mixed = sum(1 for c in cutoffs if c < G.num_ws)
    assert all(1 <= c <= G.num_ws for c in cutoffs)
    if isinstance(expect_mixed, tuple):
        assert expect_mixed[0] <= mixed <= expect_mixed[1]
    else:
        assert mixed == expect_mixed
    if prob == 1.0:
        assert len(set(cutoffs)) == G.num_ws - 1  # every cutoff 1..5 occurs
    G.eval()
    n = len(cutoffs)
    G(torch.randn(2, G.z_dim))
    assert len(cutoffs) == n  # never in eval mode


def test_eval_mode_uses_constant_noise_and_training_random_noise(tiny_stylegan2):
    G, _ = tiny_stylegan2
    for layer in G.synthesis.modules():
        if hasattr(layer, "noise_strength"):
            layer.noise_strength.data.fill_(0.5)
    ws = G.mapping(torch.randn(2, G.z_dim)).detach()
    G.eval()
    assert torch.equal(G.synthesis(ws), G.synthesis(ws))
    G.train()
    assert not torch.allclose(G.synthesis(ws), G.synthesis(ws))


def test_conditional_stylegan2_uses_labels_in_g_and_projection_d():
    G, D = build(TINY_STYLEGAN2, DataInfo((3, 16, 16), 5))
    G.eval(), D.eval()
    z = torch.randn(4, G.z_dim)
    y0, y1 = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    x0 = G(z, y0)
    assert x0.shape == (4, 3, 16, 16) and G.num_classes == 5
    assert not torch.allclose(x0, G(z, y1))
    logits = D(x0, y0)
    assert logits.shape == (4,) and not torch.allclose(logits, D(x0, y1))


def test_path_length_inputs_flow_from_ws_to_the_image(tiny_stylegan2):
    G, D = tiny_stylegan2
    ws = G.mapping(torch.randn(4, G.z_dim))
    img = G.synthesis(ws)
    (grad,) = torch.autograd.grad((img * torch.randn_like(img)).sum(), ws, create_graph=True)
    assert grad.shape == ws.shape and grad.abs().sum() > 0
    D(img).sum().backward()  # D's graph reaches G's parameters
    assert G.synthesis.blocks[0].const.grad is not None
