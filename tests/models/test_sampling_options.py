"""`gandist generate --truncation-cutoff K` (StyleGAN2, as stylegan2-ada) and `--standing-stats N` (BigGAN-PyTorch)."""
import pytest
import torch

from gandist.config import load_config
from gandist.data.base import DataInfo
from gandist.models.base import BuildContext
from gandist.registry import ARCHS, resolve
from gandist.train.sampling import sample, standing_stats, truncation_kwargs


def build_g(overrides, shape=(1, 16, 16), classes=10):
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    return resolve(ARCHS, cfg.model.arch, "model.arch")(cfg.model, DataInfo(shape, classes), BuildContext())[0]


def test_truncation_cutoff_pulls_only_the_first_k_ws_to_w_avg():
    G = build_g(["model.arch=stylegan2", "data.kind=digits", "model.conditional=false"]).eval()
    with torch.no_grad():
        G.map.w_avg.copy_(torch.randn(G.w_dim))
    z = torch.randn(4, G.z_dim)
    full = G.mapping(z)
    cut = G.mapping(z, truncation=0.0, truncation_cutoff=2)
    assert G.num_ws > 2
    torch.testing.assert_close(cut[:, :2], G.w_avg.expand(4, 2, -1))
    torch.testing.assert_close(cut[:, 2:], full[:, 2:])
    half = G.mapping(z, truncation=0.5, truncation_cutoff=2)
    torch.testing.assert_close(half[:, :2], 0.5 * (full[:, :2] + G.w_avg))
    x_cut, _ = sample(G, 4, seed=0, truncation=0.5, truncation_cutoff=2)
    x_all, _ = sample(G, 4, seed=0, truncation=0.5)
    assert not torch.equal(x_cut, x_all)


def test_truncation_cutoff_is_refused_for_a_g_without_ws():
    G = build_g(["model.arch=dcgan", "model.ch=8", "data.kind=digits"])
    with pytest.raises(ValueError, match="only a StyleGAN2 G"):
        truncation_kwargs(G, 0.7, 2)
    sg = build_g(["model.arch=stylegan2", "data.kind=digits", "model.conditional=false"])
    with pytest.raises(ValueError, match=f"this G has {sg.num_ws} ws"):
        truncation_kwargs(sg, 0.7, sg.num_ws + 1)


def test_standing_stats_are_the_average_of_the_passes_batch_statistics():
    G = build_g(["model.arch=biggan", "model.ch=4", "model.d_ch=4", "data.kind=digits", "data.resolution=32",
                 "model.attention=[]", "model.shared_dim=8", "model.z_dim=20"], shape=(1, 32, 32)).eval()
    bns = [m for m in G.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    first = bns[0]
    seen = []
    first.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().mean((0, 2, 3))))
    sn_buffers = {k: v.clone() for k, v in G.state_dict().items() if k.endswith((".u", ".v", ".sigma"))}
    assert sn_buffers
    momentum = first.momentum
    standing_stats(G, passes=3, seed=0, batch=8)
    assert len(seen) == 3
    torch.testing.assert_close(first.running_mean, torch.stack(seen).mean(0), rtol=1e-5, atol=1e-6)
    assert first.momentum == momentum and not first.training
    for k, v in sn_buffers.items():  # spectral norm did not iterate
        assert torch.equal(G.state_dict()[k], v), k
    with pytest.raises(ValueError, match="no batch norm"):
        standing_stats(build_g(["model.arch=stylegan2", "data.kind=digits", "model.conditional=false"]), 1, 0)
