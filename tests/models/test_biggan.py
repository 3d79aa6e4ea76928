"""BigGAN and BigGAN-deep: shapes at each resolution, conditioning, truncation, SN bookkeeping, PacGAN."""
from __future__ import annotations

import pytest
import torch

from gandist.data.base import DataInfo
from gandist.models.base import BuildContext
from gandist.models.biggan import build as biggan_build, truncate_z
from gandist.nn.attention import SelfAttention
from gandist.nn.spectral_norm import spectral_norm_layers

from modelkit import TINY_BIGGAN, build


@pytest.mark.parametrize("arch,res", [("biggan", 32), ("biggan", 64), ("biggan_deep", 32), ("biggan_deep", 64)])
def test_biggan_generates_images_of_the_data_shape_and_d_scores_them(arch, res):
    G, D = build(TINY_BIGGAN + [f"model.arch={arch}"], DataInfo((3, res, res), 10))
    z, y = torch.randn(4, G.z_dim), torch.randint(0, 10, (4,))
    x = G(z, y)
    assert x.shape == (4, 3, res, res) and x.abs().max() <= 1.0
    logits = D(x, y)
    assert logits.shape == (4,)
    logits.sum().backward()
    assert all(p.grad is not None for p in G.parameters() if p.requires_grad)


def test_hierarchical_z_feeds_each_stage_its_own_chunk():
    G, _ = build(TINY_BIGGAN, DataInfo((1, 32, 32), 10))
    assert G.z_chunk * 4 == G.z_dim == 16  # 3 stages + the linear layer
    G.eval()
    z, y = torch.randn(2, G.z_dim), torch.tensor([1, 2])
    base = G(z, y)
    z2 = z.clone()
    z2[:, -G.z_chunk:] += 1.0  # the last stage's chunk only
    assert not torch.allclose(base, G(z2, y))


def test_projection_d_depends_on_the_label_and_g_on_the_class():
    G, D = build(TINY_BIGGAN, DataInfo((1, 32, 32), 10))
    G.eval(), D.eval()
    z = torch.randn(3, G.z_dim)
    a, b = torch.zeros(3, dtype=torch.long), torch.full((3,), 7)
    assert not torch.allclose(G(z, a), G(z, b))
    x = G(z, a)
    assert not torch.allclose(D(x, a), D(x, b))


def test_unconditional_biggan_ignores_labels():
    G, D = build(TINY_BIGGAN + ["model.conditional=false"], DataInfo((1, 32, 32), 10))
    assert G.num_classes == 0 and D.embed is None and G.shared is None
    G.eval()
    z = torch.randn(2, G.z_dim)
    assert torch.equal(G(z), G(z, torch.tensor([1, 2])))


def test_truncated_z_is_bounded_by_psi_times_two_and_identity_at_one():
    z = torch.randn(10000)
    assert torch.equal(truncate_z(z, 1.0), z)
    t = truncate_z(z, 0.5)
    assert t.abs().max().item() <= 1.0 + 1e-6
    assert 0.35 < t.std().item() < 0.45  # std of N(0,1) truncated to +-2 is 0.88; times 0.5


def test_spectral_norm_everywhere_and_sigmas_recorded_by_training_forwards():
    G, D = build(TINY_BIGGAN, DataInfo((1, 32, 32), 10))
    g_layers, d_layers = spectral_norm_layers(G), spectral_norm_layers(D)
    assert "linear" in g_layers and "blocks.0.conv1" in g_layers and "blocks.0.bn1.gain" in g_layers
    assert "embed" in d_layers and "linear" in d_layers
    assert len(d_layers) == sum(1 for n, p in D.named_parameters() if p.ndim >= 2)  # every D weight
    for m in d_layers.values():
        m.weight.data *= 2.5  # orthogonal init makes every sigma 1; scale so the buffers must change
    x = torch.randn(4, 1, 32, 32)
    D.train()
    for _ in range(3):
        D(x, torch.zeros(4, dtype=torch.long))
    for name, m in d_layers.items():
        exact = torch.linalg.matrix_norm(m.weight_matrix().detach(), 2).item()
        assert m.sigma.item() == pytest.approx(exact, rel=1e-3), name


def test_attention_sits_at_the_configured_resolutions():
    G, D = build(TINY_BIGGAN + ["model.attention=[16]", "model.d_attention=[8]"], DataInfo((1, 32, 32), 10))
    g_attn = [i for i, b in enumerate(G.blocks) if isinstance(b, SelfAttention)]
    assert g_attn == [2] and G.blocks[2].channels == 8 * 4  # after the 8->16 block, G_CHANNELS[32] = 4 * ch
    d_attn = [b for b in D.blocks if isinstance(b, SelfAttention)]
    assert len(d_attn) == 1


def test_orthogonal_init_gives_orthogonal_weight_rows():
    G, _ = build(TINY_BIGGAN, DataInfo((1, 32, 32), 10))
    w = G.blocks[0].conv1.weight.reshape(G.blocks[0].conv1.weight.shape[0], -1)
    assert torch.allclose(w @ w.t(), torch.eye(w.shape[0]), atol=1e-5)


def test_packed_d_sees_stacked_channels_and_no_labels():
    from gandist.config import load_config

    cfg = load_config(None, TINY_BIGGAN)
    G, D = biggan_build(cfg.model, DataInfo((1, 32, 32), 10), BuildContext(pack=2))
    assert D.blocks[0].conv1.weight.shape[1] == 2 and D.num_classes == 0
    assert D(torch.randn(3, 2, 32, 32)).shape == (3,)


@pytest.mark.parametrize("arch", ["biggan", "biggan_deep"])
def test_class_embedding_cbn_without_shared_embedding_conditions_on_labels(arch):
    G, _ = build(TINY_BIGGAN + [f"model.arch={arch}", "model.shared_dim=0", "model.hier=false"], DataInfo((1, 32, 32), 10))
    for m in G.modules():  # class gains start at zero; give them values so that classes differ
        if isinstance(m, torch.nn.Embedding):
            torch.nn.init.normal_(m.weight, 0, 0.5)
    G.eval()
    z = torch.randn(2, G.z_dim)
    assert not torch.allclose(G(z, torch.tensor([0, 0])), G(z, torch.tensor([3, 3])))


def test_conditional_g_without_labels_says_what_to_pass():
    G, _ = build(TINY_BIGGAN, DataInfo((1, 32, 32), 10))
    with pytest.raises(ValueError, match="class-conditional: pass labels y"):
        G(torch.randn(2, G.z_dim))


def test_cross_replica_bn_plugs_in_through_the_build_context():
    import torch.distributed as dist

    from gandist.config import load_config
    from gandist.nn.cross_replica_bn import CrossReplicaBatchNorm

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        cfg = load_config(None, TINY_BIGGAN).model
        torch.manual_seed(0)
        G_plain, _ = biggan_build(cfg, DataInfo((1, 32, 32), 10), BuildContext())
        G_xr, _ = biggan_build(cfg, DataInfo((1, 32, 32), 10), BuildContext(bn_process_group=dist.group.WORLD))
        n_xr = sum(isinstance(m, CrossReplicaBatchNorm) for m in G_xr.modules())
        n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in G_plain.modules())
        assert n_xr == n_bn == 7  # 3 blocks x 2 CBNs + the output BN
        G_xr.load_state_dict(G_plain.state_dict())
        z, y = torch.randn(4, G_plain.z_dim), torch.arange(4)
        # one rank: cross-replica statistics are the local ones, so the outputs agree
        assert torch.allclose(G_plain(z, y), G_xr(z, y), atol=1e-5)
    finally:
        dist.destroy_process_group()


def test_cbn_gain_projections_are_orthogonally_initialised_and_class_gains_start_at_zero():
    G, _ = build(TINY_BIGGAN, DataInfo((1, 32, 32), 10))
    w = G.blocks[0].bn1.gain.weight  # [features, cond_dim] with features > cond_dim: orthonormal columns
    assert torch.allclose(w.t() @ w, torch.eye(w.shape[1]), atol=1e-5)
    G2, _ = build(TINY_BIGGAN + ["model.shared_dim=0", "model.hier=false"], DataInfo((1, 32, 32), 10))
    assert G2.blocks[0].bn1.gain.weight.abs().sum() == 0
