"""Config sections of each architecture, discriminated by `model.arch`.

Kept free of torch so that configs validate fast; the builders live beside them in models/*.py.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from gandist.configbase import Section


class _ArchBase(Section):
    z_dim: int = Field(128, gt=0, description="Dimension of the latent vector z.")
    conditional: bool = Field(True, description="Condition on class labels when the data has them.")
    freeze_d: int = Field(0, ge=0, description="FreezeD (Mo et al. 2020): D's first N blocks (input side) do not "
                          "train; for fine-tuning from train.init_from (0: none).")


def _refuse_d_dropout(data):
    """A clear sentence for model.d_dropout on an arch whose D has no dropout (instead of 'extra inputs')."""
    if isinstance(data, dict) and data.get("d_dropout"):
        raise ValueError(f"model.d_dropout: the D of model.arch={data.get('arch')} has no dropout; it is built for "
                         "mlp, dcgan and resnet; remove model.d_dropout or use one of those archs")
    if isinstance(data, dict) and "d_dropout" in data:  # 0: off, which is what this arch does anyway
        data = {k: v for k, v in data.items() if k != "d_dropout"}
    return data


class _ConditionedD(_ArchBase):
    d_conditioning: Literal["projection", "auxiliary"] = Field(
        "projection", description="How a conditional D uses labels: projection (Miyato 2018: <embed(y), h> added to "
        "the logit) or auxiliary (ACGAN, Odena 2017: a class head; cross-entropy weighted by loss.aux_weight).")


class MLPConfig(_ArchBase):
    """MLP generator and discriminator for 2-D toy data."""

    arch: Literal["mlp"] = "mlp"
    z_dim: int = Field(2, gt=0, description="Dimension of the latent vector z.")
    hidden: int = Field(128, gt=0, description="Width of each hidden layer.")
    depth: int = Field(3, ge=1, description="Number of hidden layers in G and in D.")
    spectral_norm: bool = Field(False, description="Spectral norm on D's linear layers.")
    d_dropout: float = Field(0.0, ge=0, lt=1, description=(
        "Dropout probability after each hidden activation of D (0: off); per-rank torch RNG, like model noise."))


class GrowthLevel(Section):
    """Overrides for one resolution of a progressive run."""

    stable_kimg: float | None = Field(None, ge=0, description="Thousands of images at alpha 1 (None: the default).")
    fade_kimg: float | None = Field(None, ge=0, description=(
        "Thousands of images fading this level in (None: the default)."))
    lr_scale: float = Field(1.0, gt=0, description="Multiplier of both nets' learning rates at this resolution.")


class ProgressiveConfig(Section):
    """Progressive growing (ProGAN, Karras et al. 2018): G and D start at start_resolution and double to the data's.

    Each new resolution fades in over fade_kimg thousand images (alpha 0 -> 1, derived from images seen), then
    trains stable_kimg; the first level has no fade and the last stays stable to the end of the run.
    """

    enabled: bool = Field(False, description="Grow G and D from start_resolution to the data's resolution.")
    start_resolution: int = Field(8, description="First resolution (a power of two the arch builds: dcgan >= 8).")
    stable_kimg: float = Field(4.0, ge=0, description="Thousands of images per resolution at alpha 1.")
    fade_kimg: float = Field(4.0, ge=0, description="Thousands of images fading each new resolution in.")
    levels: dict[int, GrowthLevel] = Field(default_factory=dict, description=(
        "Per-resolution overrides, e.g. {32: {stable_kimg: 8, lr_scale: 0.5}}."))
    reset_optim: bool = Field(False, description=(
        "Clear both nets' Adam moments when a new resolution starts fading in (StyleGAN1's reset_opt_for_new_lod)."))

    @model_validator(mode="after")
    def _buildable_start(self) -> "ProgressiveConfig":
        r = self.start_resolution
        if self.enabled and (r < 8 or r & (r - 1)):
            raise ValueError(f"model.progressive.start_resolution={r}: dcgan's smallest stage is 8 px and each "
                             "stage doubles; use 8, 16 or 32 (below the data's resolution)")
        bad = [k for k in self.levels if k < 8 or k & (k - 1)]
        if bad:
            raise ValueError(f"model.progressive.levels: {bad} are not resolutions a level can have (8, 16, 32, 64)")
        return self


class DCGANConfig(_ConditionedD):
    """DCGAN-style conv nets for 16-64 px images (BN in G, optional SN in D, projection D when conditional)."""

    arch: Literal["dcgan"] = "dcgan"
    ch: int = Field(64, gt=0, description="Base channel count (doubles per downsampling in D).")
    spectral_norm: bool = Field(True, description="Spectral norm on D's layers.")
    d_dropout: float = Field(0.0, ge=0, lt=1, description=(
        "Dropout probability after each hidden activation of D (0: off); per-rank torch RNG, like model noise."))
    progressive: ProgressiveConfig = Field(default_factory=ProgressiveConfig,
                                           description="Progressive growing (ProGAN).")


class ResNetConfig(_ConditionedD):
    """SNGAN-style ResNet pair for 16-64 px images (G conditioned by a class embedding added to z, projection D)."""

    arch: Literal["resnet"] = "resnet"
    ch: int = Field(64, gt=0, description="Channels of every residual block.")
    spectral_norm: bool = Field(True, description="Spectral norm on D's layers (and G's when sn_g).")
    sn_g: bool = Field(False, description="Spectral norm in G too.")
    d_dropout: float = Field(0.0, ge=0, lt=1, description=(
        "Dropout probability after each residual block of D (0: off); per-rank torch RNG, like model noise."))


class UNetConfig(_ArchBase):
    """U-Net GAN (Schonfeld et al. 2020): SNGAN ResNet G, encoder-decoder D with a global and a per-pixel output."""

    arch: Literal["unet"] = "unet"
    ch: int = Field(32, gt=0, description="G's channels per block; D's encoder widths are ch, 2 ch, 4 ch, 4 ch, ...")
    spectral_norm: bool = Field(True, description="Spectral norm on D's layers (and G's when sn_g).")
    sn_g: bool = Field(False, description="Spectral norm in G too.")
    pixel_weight: float = Field(1.0, ge=0, description=(
        "Weight of the per-pixel adversarial loss (loss.kind on each of D's per-pixel logits, averaged), added to "
        "the global one in D's and G's losses (the paper: 1)."))

    @model_validator(mode="before")
    @classmethod
    def _no_d_dropout(cls, data):
        return _refuse_d_dropout(data)


class MSGGANConfig(_ArchBase):
    """MSG-GAN (Karnewar and Wang 2020): G emits an image at every scale, D takes the pyramid (DCGAN-style blocks)."""

    arch: Literal["msggan"] = "msggan"
    ch: int = Field(32, gt=0, description="Channels at the finest scale (doubling per downsampling in D, halving per "
                    "upsampling in G).")
    spectral_norm: bool = Field(True, description="Spectral norm on D's layers.")

    @model_validator(mode="before")
    @classmethod
    def _no_d_dropout(cls, data):
        return _refuse_d_dropout(data)


class BigGANConfig(_ConditionedD):
    """BigGAN / BigGAN-deep (Brock et al. 2019) as configured in BigGAN-PyTorch."""

    arch: Literal["biggan", "biggan_deep"] = "biggan"
    z_dim: int = Field(120, gt=0, description="Dimension of z (split hierarchically across blocks).")
    num_classes: int | None = Field(None, ge=0, description="Classes the model is built for (None: the data's; a mismatch is an error).")
    ch: int = Field(96, gt=0, description="Channel multiplier of G (G_ch).")
    d_ch: int = Field(96, gt=0, description="Channel multiplier of D (D_ch).")
    shared_dim: int = Field(128, ge=0, description="Size of the shared class embedding (0: none).")
    attention: list[int] = Field(default_factory=lambda: [64], description="Resolutions with self-attention in G.")
    d_attention: list[int] | None = Field(None, description="Resolutions with self-attention in D (None: same as G).")
    hier: bool = Field(True, description="Hierarchical latents (skip-z): split z across G's blocks.")
    blocks_per_stage: int = Field(2, ge=1, description="BigGAN-deep only: residual blocks per resolution.")
    channel_ratio: int = Field(4, ge=1, description="BigGAN-deep only: bottleneck ratio of each block's hidden width.")
    d_wide: bool = Field(True, description="D blocks' hidden width is their output width (BigGAN's D_wide).")
    sn_g: bool = Field(True, description="Spectral norm in G (D always has it).")
    bn_eps: float = Field(1e-5, gt=0, description="Epsilon of the (conditional) batch norms.")
    sn_eps: float = Field(1e-6, gt=0, description="Epsilon of spectral norm.")
    ortho_init: bool = Field(True, description="Orthogonal weight initialisation (False: N(0, 0.02), BigGAN's N02).")

    @field_validator("attention", "d_attention")
    @classmethod
    def _attention_powers_of_two(cls, res: list[int] | None) -> list[int] | None:
        for r in res or []:
            if r < 4 or r & (r - 1):
                raise ValueError(f"attention resolutions must be powers of two >= 4 (like 64), got {r}")
        return res

    @model_validator(mode="before")
    @classmethod
    def _no_d_dropout(cls, data):
        return _refuse_d_dropout(data)

    @model_validator(mode="after")
    def _hier_needs_shared(self) -> "BigGANConfig":
        if self.hier and self.conditional and self.shared_dim == 0:
            raise ValueError("hier: true with a conditional model needs shared_dim > 0 (e.g. 128), or set hier: false")
        return self


class StyleGAN2Config(_ArchBase):
    """StyleGAN2 (Karras et al. 2020): config-f and the ADA 'auto' widths."""

    arch: Literal["stylegan2"] = "stylegan2"
    z_dim: int = Field(512, gt=0, description="Dimension of z.")
    num_classes: int | None = Field(None, ge=0, description="Classes the model is built for (None: the data's; a mismatch is an error).")
    w_dim: int = Field(512, gt=0, description="Dimension of w.")
    mapping_layers: int = Field(8, ge=1, description="Depth of the mapping network.")
    d_mapping_layers: int = Field(8, ge=1, description="Depth of D's class mapping network (conditional D only).")
    channel_base: int = Field(32768, gt=0, description="Channels at a resolution: min(channel_base / res, channel_max).")
    channel_max: int = Field(512, gt=0, description="Largest channel count.")
    mapping_lr_mul: float = Field(0.01, gt=0, description="Learning-rate multiplier of the mapping network.")
    w_avg_beta: float = Field(0.995, ge=0, lt=1, description="Decay of the running mean of w (truncation target).")
    style_mixing_prob: float = Field(0.9, ge=0, le=1, description="Probability of style mixing in training.")
    mbstd_group: int = Field(4, ge=1, description="Group size of the minibatch standard deviation layer.")
    conv_clamp: float | None = Field(None, description="Clamp conv outputs (used with fp16).")

    @model_validator(mode="before")
    @classmethod
    def _no_d_dropout(cls, data):
        return _refuse_d_dropout(data)


ModelConfig = Annotated[
    Union[MLPConfig, DCGANConfig, ResNetConfig, UNetConfig, MSGGANConfig, BigGANConfig, StyleGAN2Config],
    Field(discriminator="arch"),
]
