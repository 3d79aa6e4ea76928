"""Config of losses, penalties and augmentations."""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from gandist.configbase import Section


class LossConfig(Section):
    """The adversarial loss."""

    kind: Literal["ns", "hinge", "wasserstein", "ls", "relativistic"] = Field(
        "ns", description="ns: non-saturating logistic; hinge; wasserstein; ls: least squares; relativistic: RaGAN (average)."
    )
    relativistic_base: Literal["ns", "hinge", "ls"] = Field("ns", description="Base loss of the relativistic average GAN.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="One-sided label smoothing of D's real targets (ns only).")


class _PenaltyBase(Section):
    weight: float = Field(..., ge=0, description="Multiplier of the penalty.")
    every: int = Field(1, ge=1, description="Lazy regularization: apply every k steps with weight*k (StyleGAN2).")


class GradientPenaltyConfig(_PenaltyBase):
    """WGAN-GP: (||grad D(x_hat)|| - center)^2 on interpolates."""

    kind: Literal["gp"] = "gp"
    weight: float = Field(10.0, ge=0, description="Multiplier (lambda).")
    center: float = Field(1.0, ge=0, description="Target gradient norm.")


class DraganConfig(_PenaltyBase):
    """DRAGAN: gradient penalty on perturbed real samples."""

    kind: Literal["dragan"] = "dragan"
    weight: float = Field(10.0, ge=0, description="Multiplier (lambda).")
    center: float = Field(1.0, ge=0, description="Target gradient norm.")
    perturb_std: float = Field(0.5, gt=0, description="Perturbation scale relative to the data std.")


class R1Config(_PenaltyBase):
    """R1: gamma/2 * ||grad D(x_real)||^2."""

    kind: Literal["r1"] = "r1"
    weight: float = Field(10.0, ge=0, description="gamma: the penalty is gamma/2 * E||grad D(x)||^2.")


class WeightClipConfig(_PenaltyBase):
    """WGAN weight clipping of D's parameters to [-clip, clip] after every D step."""

    kind: Literal["weight_clip"] = "weight_clip"
    weight: float = Field(1.0, ge=0, description="Unused (clipping has no weight); kept for uniformity.")
    clip: float = Field(0.01, gt=0, description="Clip value c.")


class ConsistencyConfig(_PenaltyBase):
    """Balanced consistency regularization (bCR, Zhao et al. 2021)."""

    kind: Literal["bcr"] = "bcr"
    weight: float = Field(10.0, ge=0, description="lambda_real = lambda_fake.")
    augment: str = Field("translation,cutout", description="DiffAugment policies used as the consistency transform.")


class PathLengthConfig(_PenaltyBase):
    """StyleGAN2 path-length regularization on G."""

    kind: Literal["path_length"] = "path_length"
    weight: float = Field(2.0, ge=0, description="pl_weight.")
    every: int = Field(4, ge=1, description="Lazy interval (StyleGAN2: 4).")
    decay: float = Field(0.01, gt=0, lt=1, description="Decay of the running mean path length.")
    batch_shrink: int = Field(2, ge=1, description="Use batch/shrink samples for the penalty.")


class OrthoConfig(_PenaltyBase):
    """BigGAN orthogonal regularization of G's weights (off-diagonal only)."""

    kind: Literal["ortho"] = "ortho"
    weight: float = Field(1e-4, ge=0, description="beta.")


PenaltyConfig = Annotated[
    Union[GradientPenaltyConfig, DraganConfig, R1Config, WeightClipConfig, ConsistencyConfig, PathLengthConfig, OrthoConfig],
    Field(discriminator="kind"),
]


class InstanceNoiseConfig(Section):
    """Gaussian noise added to D's inputs, annealed linearly to zero."""

    std: float = Field(0.0, ge=0, description="Initial noise std (0: off).")
    anneal_steps: int = Field(0, ge=0, description="Steps over which std decays linearly to 0 (0: constant).")


class AugmentConfig(Section):
    """Augmentations applied to D's inputs (real and fake alike)."""

    diffaugment: str = Field("", description="Comma-separated DiffAugment policies: color, translation, cutout ('' off).")
    instance_noise: InstanceNoiseConfig = Field(default_factory=InstanceNoiseConfig, description="Instance noise.")
    pack: int = Field(1, ge=1, description="PacGAN: D judges packs of this many samples (1: off).")
