"""StyleGAN2's fast op forms agree with their reference forms: modulation (activation scaling vs fused per-sample
weights vs a per-sample loop), the stride-2 transposed up-conv + FIR vs upsample-then-conv, and D's blur + stride-2
down-conv vs conv-then-downsample; forward and gradients, in float64, and the automatic choice between them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gandist.data.base import DataInfo
from gandist.nn.equalized import EqualizedConv2d, conv_down2, conv_up2, fir_kernel, upsample2d
from gandist.nn.modulated_conv import SynthesisLayer, choose_impl, modulated_conv2d

from modelkit import TINY_STYLEGAN2, build

TOL = dict(rtol=1e-9, atol=1e-10)  # float64: the forms differ only in the order of additions


def _outputs_and_grads(fn, *inputs):
    """fn(*inputs) and the gradients of a fixed, non-uniform projection of it w.r.t. every input."""
    y = fn(*inputs)
    proj = torch.cos(torch.arange(y.numel(), dtype=y.dtype)).view_as(y)  # not sum(): weights every output differently
    return (y, *torch.autograd.grad((y * proj).sum(), inputs))


def _assert_all_close(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert u.shape == v.shape
        torch.testing.assert_close(u, v, **TOL)


def _leaves(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_() for s in shapes]


@pytest.mark.parametrize("kernel_size,up", [(3, 1), (3, 2), (1, 1)])
@pytest.mark.parametrize("demodulate", [True, False])
def test_modulation_forms_agree_forward_and_backward(kernel_size, up, demodulate):
    x, w, s = _leaves((4, 6, 8, 8), (5, 6, kernel_size, kernel_size), (4, 6))
    results = {impl: _outputs_and_grads(lambda x, w, s: modulated_conv2d(x, w, s, demodulate, up=up, impl=impl),
                                        x, w, s)
               for impl in ("activation", "fused", "ref")}
    assert results["ref"][0].shape == (4, 5, 8 * up, 8 * up)
    _assert_all_close(results["activation"], results["ref"])
    _assert_all_close(results["fused"], results["ref"])
    assert results["ref"][0].abs().mean() > 0.1 and all(g.abs().sum() > 0 for g in results["ref"][1:])


def test_upsampling_conv_is_upsample_then_conv():
    x, w = _leaves((3, 4, 5, 5), (7, 4, 3, 3))
    k = fir_kernel().double()
    fast = _outputs_and_grads(lambda x, w: conv_up2(x, w, k), x, w)
    ref = _outputs_and_grads(lambda x, w: conv_up2(x, w, k, impl="ref"), x, w)
    _assert_all_close(fast, ref)
    # the reference is the straightforward form: upsample (zero insertion + FIR), then the 3x3 conv
    plain = F.conv2d(upsample2d(x, k, full=True), w)
    torch.testing.assert_close(fast[0], plain, **TOL)
    # and away from the border it is the old form (upsample cropped to 2H, then a padded conv)
    old = F.conv2d(upsample2d(x, k), w, padding=1)
    torch.testing.assert_close(fast[0][..., 1:-1, 1:-1], old[..., 1:-1, 1:-1], **TOL)


@pytest.mark.parametrize("kernel_size", [3, 1])
def test_downsampling_conv_is_conv_then_downsample(kernel_size):
    x, w = _leaves((3, 4, 8, 8), (5, 4, kernel_size, kernel_size))
    k = fir_kernel().double()
    fast = _outputs_and_grads(lambda x, w: conv_down2(x, w, k), x, w)
    ref = _outputs_and_grads(lambda x, w: conv_down2(x, w, k, impl="ref"), x, w)
    assert fast[0].shape == (3, 5, 4, 4)
    _assert_all_close(fast, ref)
    # the reference is the straightforward form: the (full) conv at 8 px, then FIR + keep every other pixel
    full = F.conv2d(x, w, padding=kernel_size // 2 + 1)
    c = full.shape[1]
    plain = F.conv2d(full, k[None, None].repeat(c, 1, 1, 1), stride=2, groups=c)
    torch.testing.assert_close(fast[0], plain, **TOL)


def test_down_conv_and_its_skip_sample_the_same_positions():
    # on a ramp (value = x coordinate) both paths give output o the value 2o + 1/2: no half-pixel shift between them
    ramp = torch.arange(16.0).repeat(16, 1)[None, None]  # x-coordinate as the value
    box = torch.ones(1, 1, 3, 3) / 9
    main = conv_down2(ramp, box, fir_kernel())[..., 2:-2, 2:-2]
    skip = conv_down2(ramp, torch.ones(1, 1, 1, 1), fir_kernel())[..., 2:-2, 2:-2]
    torch.testing.assert_close(main, skip)
    torch.testing.assert_close(main[0, 0, 0], torch.tensor([4.5, 6.5, 8.5, 10.5]))


def test_equalized_down_conv_fast_and_ref_paths_agree():
    torch.manual_seed(0)
    conv = EqualizedConv2d(6, 5, 3, activation="lrelu", down=2).double()
    (x,) = _leaves((2, 6, 8, 8))
    _assert_all_close(_outputs_and_grads(lambda x: conv(x, gain=0.7), x),
                      _outputs_and_grads(lambda x: conv(x, gain=0.7, impl="ref"), x))


def test_synthesis_layer_epilogue_matches_the_unfused_formula():
    torch.manual_seed(0)
    layer = SynthesisLayer(6, 5, 8, resolution=16, up=2).double()
    with torch.no_grad():
        layer.noise_strength.fill_(0.3)
        layer.bias.copy_(torch.randn(5))
    x, w = _leaves((3, 6, 8, 8), (3, 8))
    styles = layer.affine(w)
    expect = modulated_conv2d(x, layer.weight, styles, up=2, impl="ref") + layer.noise_const * 0.3
    expect = F.leaky_relu(expect + layer.bias.view(1, -1, 1, 1), 0.2) * 2 ** 0.5
    for impl in ("activation", "fused"):
        torch.testing.assert_close(layer(x, w, noise_mode="const", impl=impl), expect, **TOL)


def test_auto_picks_activation_for_training_and_fused_where_it_is_cheaper():
    x, w, s = torch.randn(4, 6, 8, 8), torch.randn(5, 6, 3, 3, requires_grad=True), torch.randn(4, 6)
    assert choose_impl(x, w, s) == "activation"
    assert choose_impl(x[:1], w, s[:1]) == "fused"  # batch 1: the per-sample weight is the only weight
    assert choose_impl(x, torch.randn(3, 6, 1, 1, requires_grad=True), s) == "fused"  # 1x1 (ToRGB): one bmm
    with torch.no_grad():
        assert choose_impl(x, w, s) == "activation"  # CPU inference: measured faster than the grouped conv
        meta = [t.to("meta") for t in (x, w, s)]
        assert choose_impl(*meta) == "fused"  # off the CPU, inference fuses (as stylegan2-ada's)
    assert choose_impl(*(t.to("meta") for t in (x, w, s))) == "activation"  # ... but not with gradients
    with pytest.raises(ValueError, match="choose one of"):
        modulated_conv2d(x, w, s, impl="cuda")


def test_generator_batch_of_one_fused_matches_the_batched_activation_form():
    # eval-mode G with constant noise: at batch 1 every conv runs 'fused', at batch 4 'activation'
    G, _ = build(TINY_STYLEGAN2 + ["model.conditional=false"], DataInfo((3, 16, 16), 0))
    G.eval()
    z = torch.randn(4, G.z_dim)
    batched = G(z)
    single = torch.cat([G(z[i:i + 1]) for i in range(4)])
    assert batched.requires_grad and batched.abs().mean() > 1e-3
    torch.testing.assert_close(single, batched, rtol=1e-4, atol=1e-5)


ROOT = Path(__file__).resolve().parents[2]


def _tool(*argv):
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ops_bench_prints_time_memory_and_the_auto_choice_per_variant():
    proc = _tool("tools/bench/stylegan2_ops.py", "--sizes", "2x8x4", "--iters", "1", "--no-grad")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in proc.stdout.splitlines()
            if line.startswith("| ") and "2x8x4" in line]
    assert len(rows) == (3 * 3 + 2) * 2  # 3 modulated ops x 3 impls + 2 down-conv forms, fwd+bwd and fwd
    assert all(float(r[4]) > 0 and float(r[5]) >= 0 for r in rows)
    auto = {(r[0], r[2]): r[6] for r in rows}
    assert auto[("modconv3x3", "fwd+bwd")] == "activation" and auto[("torgb1x1", "fwd+bwd")] == "fused"


def test_ada_comparison_skips_without_a_checkout_and_rejects_a_wrong_one(tmp_path):
    proc = _tool("tools/bench/stylegan2_vs_ada.py")
    assert proc.returncode == 0 and proc.stdout.startswith("skipped: pass --ada-path")
    proc = _tool("tools/bench/stylegan2_vs_ada.py", "--ada-path", str(tmp_path))
    assert proc.returncode == 2 and "no training/networks.py" in proc.stdout
