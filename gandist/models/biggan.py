"""BigGAN and BigGAN-deep (Brock et al. 2019), following BigGAN-PyTorch's BigGAN.py / BigGANdeep.py layouts.

Channel tables are multipliers of `ch` per resolution, copied from BigGAN-PyTorch's G_arch / D_arch so that the
published set-ups build with the published parameter counts (tests/models/test_published_sizes.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gandist.data.base import DataInfo
from gandist.models.base import BuildContext, class_heads, conditional_classes, d_output, packed_info
from gandist.nn.attention import SelfAttention
from gandist.nn.conditional_bn import ConditionalBatchNorm2d, PlainBatchNorm2d
from gandist.nn.cross_replica_bn import batch_norm
from gandist.nn.spectral_norm import conv2d, embedding, linear

# G: channels of the 4x4 input then after each upsampling block (in = m[:-1], out = m[1:]).
G_CHANNELS = {32: [4, 4, 4, 4], 64: [16, 16, 8, 4, 2], 128: [16, 16, 8, 4, 2, 1], 256: [16, 16, 8, 8, 4, 2, 1],
              512: [16, 16, 8, 8, 4, 2, 1, 1]}
# D: output channels of each block; every block downsamples except the last (32 px: the last two).
D_CHANNELS = {32: [4, 4, 4, 4], 64: [1, 2, 4, 8, 16], 128: [1, 2, 4, 8, 16, 16], 256: [1, 2, 4, 8, 8, 16, 16],
              512: [1, 1, 2, 4, 8, 8, 16, 16]}
RESOLUTIONS = tuple(sorted(G_CHANNELS))


def truncate_z(z: torch.Tensor, truncation: float, bound: float = 2.0) -> torch.Tensor:
    """Map N(0,1) samples to truncation * TruncatedNormal(-bound, bound) through the CDF (BigGAN's trick, deterministic)."""
    if truncation >= 1.0:
        return z
    lo, hi = torch.special.ndtr(torch.tensor(-bound)), torch.special.ndtr(torch.tensor(bound))
    u = lo + torch.special.ndtr(z.float()) * (hi - lo)
    return (torch.special.ndtri(u.clamp(1e-7, 1 - 1e-7)) * truncation).to(z.dtype)


class GBlock(nn.Module):
    """BigGAN up block: CBN-ReLU-up-conv3, CBN-ReLU-conv3, plus up-conv1 skip."""

    def __init__(self, in_ch: int, out_ch: int, make_bn, sn: bool, eps: float) -> None:
        super().__init__()
        self.bn1, self.bn2 = make_bn(in_ch), make_bn(out_ch)
        self.conv1 = conv2d(in_ch, out_ch, 3, padding=1, sn=sn, eps=eps)
        self.conv2 = conv2d(out_ch, out_ch, 3, padding=1, sn=sn, eps=eps)
        self.conv_sc = conv2d(in_ch, out_ch, 1, sn=sn, eps=eps)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, c)), scale_factor=2)
        h = self.conv2(F.relu(self.bn2(self.conv1(h), c)))
        return h + self.conv_sc(F.interpolate(x, scale_factor=2))


class GBlockDeep(nn.Module):
    """BigGAN-deep bottleneck block: 1x1 down to in/ratio, two 3x3, 1x1 up; skip drops channels (no parameters)."""

    def __init__(self, in_ch: int, out_ch: int, make_bn, sn: bool, eps: float, ratio: int, upsample: bool) -> None:
        super().__init__()
        hidden = in_ch // ratio
        self.out_ch, self.upsample = out_ch, upsample
        self.bn1, self.bn2, self.bn3, self.bn4 = make_bn(in_ch), make_bn(hidden), make_bn(hidden), make_bn(hidden)
        self.conv1 = conv2d(in_ch, hidden, 1, sn=sn, eps=eps)
        self.conv2 = conv2d(hidden, hidden, 3, padding=1, sn=sn, eps=eps)
        self.conv3 = conv2d(hidden, hidden, 3, padding=1, sn=sn, eps=eps)
        self.conv4 = conv2d(hidden, out_ch, 1, sn=sn, eps=eps)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(self.bn1(x, c)))
        h = F.relu(self.bn2(h, c))
        x = x[:, : self.out_ch]
        if self.upsample:
            h, x = F.interpolate(h, scale_factor=2), F.interpolate(x, scale_factor=2)
        h = self.conv3(F.relu(self.bn3(self.conv2(h), c)))
        h = self.conv4(F.relu(self.bn4(h, c)))
        return h + x


class DBlock(nn.Module):
    """BigGAN down block: (ReLU)-conv3-ReLU-conv3-pool, plus conv1 skip (pre-activation after the first block)."""

    def __init__(self, in_ch: int, out_ch: int, sn_eps: float, wide: bool, preactivation: bool, down: bool) -> None:
        super().__init__()
        hidden = out_ch if wide else in_ch
        self.preactivation, self.down = preactivation, down
        self.conv1 = conv2d(in_ch, hidden, 3, padding=1, sn=True, eps=sn_eps)
        self.conv2 = conv2d(hidden, out_ch, 3, padding=1, sn=True, eps=sn_eps)
        self.conv_sc = conv2d(in_ch, out_ch, 1, sn=True, eps=sn_eps) if (in_ch != out_ch or down) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.relu(self.conv1(F.relu(x) if self.preactivation else x)))
        if self.down:
            h = F.avg_pool2d(h, 2)
        # the skip convolves before pooling when pre-activated, after it on the raw image (BigGAN-PyTorch's order)
        if self.preactivation:
            x = self.conv_sc(x) if self.conv_sc is not None else x
            x = F.avg_pool2d(x, 2) if self.down else x
        else:
            x = F.avg_pool2d(x, 2) if self.down else x
            x = self.conv_sc(x) if self.conv_sc is not None else x
        return h + x


class DBlockDeep(nn.Module):
    """BigGAN-deep D block: bottleneck at out/ratio; skip concatenates a 1x1 conv's new channels."""

    def __init__(self, in_ch: int, out_ch: int, sn_eps: float, ratio: int, down: bool) -> None:
        super().__init__()
        hidden = out_ch // ratio
        self.down = down
        self.conv1 = conv2d(in_ch, hidden, 1, sn=True, eps=sn_eps)
        self.conv2 = conv2d(hidden, hidden, 3, padding=1, sn=True, eps=sn_eps)
        self.conv3 = conv2d(hidden, hidden, 3, padding=1, sn=True, eps=sn_eps)
        self.conv4 = conv2d(hidden, out_ch, 1, sn=True, eps=sn_eps)
        self.conv_sc = conv2d(in_ch, out_ch - in_ch, 1, sn=True, eps=sn_eps) if out_ch > in_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(x))
        h = F.relu(self.conv3(F.relu(self.conv2(F.relu(h)))))
        if self.down:
            h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
        if self.conv_sc is not None:
            x = torch.cat([x, self.conv_sc(x)], dim=1)
        return self.conv4(h) + x


class Generator(nn.Module):
    """BigGAN(-deep) G: z (split across blocks when hier) + shared class embedding -> image in [-1, 1]."""

    def __init__(self, cfg, info: DataInfo, num_classes: int, ctx: BuildContext) -> None:
        super().__init__()
        res, deep, sn, eps = info.shape[-1], cfg.arch == "biggan_deep", cfg.sn_g, cfg.sn_eps
        mult = G_CHANNELS[res]
        chans = [cfg.ch * m for m in mult]
        self.num_classes, self.deep, self.hier = num_classes, deep, cfg.hier
        self.shared_dim = cfg.shared_dim if num_classes else 0
        stages = len(mult) - 1
        if deep or not cfg.hier:
            self.z_chunk, self.z_dim = cfg.z_dim, cfg.z_dim
        else:  # BigGAN: one chunk for the linear layer, one per stage (z_dim rounded down to a multiple)
            self.z_chunk = cfg.z_dim // (stages + 1)
            self.z_dim = self.z_chunk * (stages + 1)
        # what each CBN is conditioned on: shared embedding (+ this block's z chunk, or all of z in deep)
        cond_dim = self.shared_dim + (self.z_chunk if cfg.hier else 0)
        group = ctx.bn_process_group

        def make_bn(c: int) -> nn.Module:
            if cond_dim:
                return ConditionalBatchNorm2d(c, cond_dim=cond_dim, sn=sn, eps=cfg.bn_eps, process_group=group)
            if num_classes:
                return ConditionalBatchNorm2d(c, num_classes=num_classes, eps=cfg.bn_eps, process_group=group)
            return PlainBatchNorm2d(c, eps=cfg.bn_eps, process_group=group)

        self.shared = nn.Embedding(num_classes, self.shared_dim) if self.shared_dim else None
        lin_in = (self.z_dim + self.shared_dim) if deep else (self.z_chunk if cfg.hier else self.z_dim)
        self.linear = linear(lin_in, chans[0] * 16, sn=sn, eps=eps)
        blocks = []
        for i in range(stages):
            if deep:
                for j in range(cfg.blocks_per_stage):
                    last = j == cfg.blocks_per_stage - 1
                    blocks.append(GBlockDeep(chans[i], chans[i + 1] if last else chans[i], make_bn, sn, eps,
                                             cfg.channel_ratio, upsample=last))
            else:
                blocks.append(GBlock(chans[i], chans[i + 1], make_bn, sn, eps))
            if 4 * 2 ** (i + 1) in cfg.attention:
                blocks.append(SelfAttention(chans[i + 1], sn=sn, sn_eps=eps))
        self.blocks = nn.ModuleList(blocks)
        self.out_bn = batch_norm(chans[-1], group, affine=True, eps=cfg.bn_eps)
        self.out_conv = conv2d(chans[-1], info.shape[0], 3, padding=1, sn=sn, eps=eps)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None, truncation: float = 1.0) -> torch.Tensor:
        """Images [N, C, H, W] in [-1, 1] from z [N, z_dim] and class labels y [N]."""
        if self.num_classes and y is None:
            raise ValueError("this BigGAN G is class-conditional: pass labels y (or build it with model.conditional: false)")
        z = truncate_z(z, truncation)
        shared = self.shared(y) if self.shared is not None else None
        cond = y if (self.num_classes and shared is None) else shared
        if self.deep:
            z_all = torch.cat([shared, z], 1) if shared is not None else z
            h, conds = self.linear(z_all), [z_all if self.hier else cond] * len(self.blocks)
        elif self.hier:
            chunks = torch.split(z, self.z_chunk, dim=1)
            h = self.linear(chunks[0])
            conds = [torch.cat([shared, c], 1) if shared is not None else c for c in chunks[1:]]
        else:
            h, conds = self.linear(z), None
        h = h.view(z.shape[0], -1, 4, 4)
        stage = 0
        for block in self.blocks:
            if isinstance(block, SelfAttention):
                h = block(h)
                continue
            c = conds[min(stage, len(conds) - 1)] if conds is not None else cond
            h = block(h, c)
            # deep: every block of a stage shares the same conditioning; hier: one z chunk per stage
            stage += 1 if (not self.deep or block.upsample) else 0
        return torch.tanh(self.out_conv(F.relu(self.out_bn(h))))


class Discriminator(nn.Module):
    """BigGAN(-deep) projection D: ResNet down blocks, sum-pool, linear + <embed(y), h>."""

    def __init__(self, cfg, info: DataInfo, num_classes: int) -> None:
        super().__init__()
        res, deep, eps = info.shape[-1], cfg.arch == "biggan_deep", cfg.sn_eps
        mult = D_CHANNELS[res]
        attention = cfg.attention if cfg.d_attention is None else cfg.d_attention
        downs = [True] * (len(mult) - 1) + [False] if res != 32 else [True, True, False, False]
        blocks, cur = [], res
        if deep:
            # deep: stages go mult[i] -> mult[i+1], all downsampling, after a 3x3 input conv
            self.input_conv = conv2d(info.shape[0], cfg.d_ch * mult[0], 3, padding=1, sn=True, eps=eps)
            for i in range(len(mult) - 1):
                cin, cout = cfg.d_ch * mult[i], cfg.d_ch * mult[i + 1]
                for j in range(cfg.blocks_per_stage):
                    blocks.append(DBlockDeep(cin if j == 0 else cout, cout, eps, cfg.channel_ratio, down=j == 0))
                cur //= 2
                if cur in attention:
                    blocks.append(SelfAttention(cout, sn=True, sn_eps=eps))
        else:
            self.input_conv = None
            cin = info.shape[0]
            for i, m in enumerate(mult):
                blocks.append(DBlock(cin, cfg.d_ch * m, eps, cfg.d_wide, preactivation=i > 0, down=downs[i]))
                cin = cfg.d_ch * m
                cur //= 2 if downs[i] else 1
                if cur in attention and downs[i]:
                    blocks.append(SelfAttention(cin, sn=True, sn_eps=eps))
        self.blocks = nn.ModuleList(blocks)
        width = cfg.d_ch * mult[-1]
        self.linear = linear(width, 1, sn=True, eps=eps)
        self.embed, self.aux = class_heads(cfg, num_classes, width, lambda k, w: embedding(k, w, sn=True, eps=eps),
                                           lambda w, k: linear(w, k, sn=True, eps=eps))
        self.num_classes = num_classes

    def freeze_blocks(self) -> list[nn.Module]:
        """FreezeD's blocks, input side first: each residual or attention block (BigGAN-deep's input conv goes
        with the first)."""
        blocks = list(self.blocks)
        if self.input_conv is not None:
            blocks[0] = nn.ModuleList([self.input_conv, blocks[0]])
        return blocks

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, return_class: bool = False):
        """Logits [N] for images x and labels y (projection term when conditional; ACGAN: also class logits)."""
        h = self.input_conv(x) if self.input_conv is not None else x
        for block in self.blocks:
            h = block(h)
        h = F.relu(h).sum(dim=[2, 3])
        return d_output(self.linear, self.embed, self.aux, h, y, return_class)


def _init_weights(module: nn.Module, ortho: bool) -> None:
    """BigGAN-PyTorch's init: orthogonal (or N(0, 0.02)) for every conv, linear and embedding weight."""
    for m in module.modules():
        for child in m.children():
            if not isinstance(child, (nn.Conv2d, nn.Linear, nn.Embedding)) or child.weight.is_meta:
                continue
            if isinstance(m, ConditionalBatchNorm2d) and isinstance(child, nn.Embedding):
                continue  # per-class gains/biases start at zero: a fresh CBN is plain BN
            if ortho:
                nn.init.orthogonal_(child.weight)
            else:
                nn.init.normal_(child.weight, 0.0, 0.02)


def check_config(cfg, info: DataInfo) -> int:
    """Validate cfg against the data's shape and classes; returns the class count G and D are built with."""
    if not info.is_image or info.shape[1] != info.shape[2]:
        raise ValueError(f"model.arch {cfg.arch} needs square images, got data shape {tuple(info.shape)}")
    res = info.shape[-1]
    if res not in G_CHANNELS:
        raise ValueError(f"model.arch {cfg.arch} supports resolutions {list(RESOLUTIONS)}, the data gives {res} px; "
                         f"set data.resolution to one of them")
    have = [4 * 2 ** (i + 1) for i in range(len(G_CHANNELS[res]) - 1)]
    for key, res_list in (("attention", cfg.attention), ("d_attention", cfg.d_attention or [])):
        bad = [r for r in res_list if r not in have]
        if bad:
            raise ValueError(f"model.{key}: {bad} is not a resolution of a {res} px {cfg.arch}; choose from {have}")
    return conditional_classes(cfg, info)


def build(cfg, info: DataInfo, ctx: BuildContext) -> tuple[nn.Module, nn.Module]:
    """BigGAN or BigGAN-deep (G, D) for square images of 32-512 px."""
    num_classes = check_config(cfg, info)
    if cfg.hier and num_classes and cfg.shared_dim == 0:
        raise ValueError("model.hier needs model.shared_dim > 0 for a conditional BigGAN (or set model.hier: false)")
    G = Generator(cfg, info, num_classes, ctx)
    # PacGAN: D sees `pack` images stacked on channels and, like the other archs, no labels
    D = Discriminator(cfg, packed_info(info, ctx.pack), num_classes if ctx.pack == 1 else 0)
    _init_weights(G, cfg.ortho_init)
    _init_weights(D, cfg.ortho_init)
    return G, D
