"""Config of losses, penalties and augmentations."""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator

from gandist.configbase import Section

_POLICIES = ("color", "translation", "cutout")


def _check_policies(policy: str) -> str:
    """Validate a comma-separated DiffAugment policy string (kept here so config stays free of torch)."""
    for name in (p.strip() for p in policy.split(",")):
        if name and name not in _POLICIES:
            raise ValueError(f"unknown DiffAugment policy {name!r}; allowed: {', '.join(_POLICIES)}")
    return policy


class LossConfig(Section):
    """The adversarial loss."""

    kind: Literal["ns", "hinge", "wasserstein", "ls", "relativistic"] = Field(
        "ns", description="ns: non-saturating logistic; hinge; wasserstein; ls: least squares; relativistic: RaGAN (average)."
    )
    relativistic_base: Literal["ns", "hinge", "ls"] = Field("ns", description="Base loss of the relativistic average GAN.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="One-sided label smoothing of D's real targets (ns only).")
    aux_weight: float = Field(1.0, ge=0, description=(
        "ACGAN (model.d_conditioning=auxiliary): weight of the class cross-entropy, on real labels in D's loss and on "
        "the sampled labels in G's."))


class _PenaltyBase(Section):
    weight: float = Field(..., ge=0, description="Multiplier of the penalty.")
    every: int = Field(1, ge=1, description="Lazy regularization: apply every k steps with weight*k (StyleGAN2).")


class GradientPenaltyConfig(_PenaltyBase):
    """WGAN-GP: (||grad D(x_hat)|| - center)^2 on interpolates."""

    kind: Literal["gp"] = Field("gp", description="Selects this penalty in the penalties list.")
    weight: float = Field(10.0, ge=0, description="Multiplier (lambda).")
    center: float = Field(1.0, ge=0, description="Target gradient norm.")


class DraganConfig(_PenaltyBase):
    """DRAGAN: gradient penalty on perturbed real samples."""

    kind: Literal["dragan"] = Field("dragan", description="Selects this penalty in the penalties list.")
    weight: float = Field(10.0, ge=0, description="Multiplier (lambda).")
    center: float = Field(1.0, ge=0, description="Target gradient norm.")
    perturb_std: float = Field(0.5, gt=0, description="Perturbation scale relative to the data std.")


class R1Config(_PenaltyBase):
    """R1: gamma/2 * ||grad D(x_real)||^2."""

    kind: Literal["r1"] = Field("r1", description="Selects this penalty in the penalties list.")
    weight: float = Field(10.0, ge=0, description="gamma: the penalty is gamma/2 * E||grad D(x)||^2.")


class WeightClipConfig(_PenaltyBase):
    """WGAN weight clipping of D's parameters to [-clip, clip] after every D step."""

    kind: Literal["weight_clip"] = Field("weight_clip", description="Selects this penalty in the penalties list.")
    weight: float = Field(1.0, ge=0, description="Unused (clipping has no weight); kept for uniformity.")
    clip: float = Field(0.01, gt=0, description="Clip value c.")


class ConsistencyConfig(_PenaltyBase):
    """Balanced consistency regularization (bCR, Zhao et al. 2021)."""

    kind: Literal["bcr"] = Field("bcr", description="Selects this penalty in the penalties list.")
    weight: float = Field(10.0, ge=0, description="lambda_real = lambda_fake.")
    augment: str = Field("translation,cutout", description="DiffAugment policies used as the consistency transform.")

    @field_validator("augment")
    @classmethod
    def _known_policies(cls, policy: str) -> str:
        if not policy.strip():
            raise ValueError("bcr needs at least one transform: color, translation or cutout")
        return _check_policies(policy)


class PathLengthConfig(_PenaltyBase):
    """StyleGAN2 path-length regularization on G."""

    kind: Literal["path_length"] = Field("path_length", description="Selects this penalty in the penalties list.")
    weight: float = Field(2.0, ge=0, description="pl_weight.")
    every: int = Field(4, ge=1, description="Lazy interval (StyleGAN2: 4).")
    decay: float = Field(0.01, gt=0, lt=1, description="Decay of the running mean path length.")
    batch_shrink: int = Field(2, ge=1, description="Use batch/shrink samples for the penalty.")


class OrthoConfig(_PenaltyBase):
    """BigGAN orthogonal regularization of G's (or D's) weights (off-diagonal only)."""

    kind: Literal["ortho"] = Field("ortho", description="Selects this penalty in the penalties list.")
    weight: float = Field(1e-4, ge=0, description="beta.")
    net: Literal["g", "d"] = Field("g", description="The net regularized: g (BigGAN's G_ortho) or d (its D_ortho).")


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
    translation_ratio: float = Field(
        0.125, ge=0, le=0.5, description="DiffAugment translation: max shift as a fraction of the image side."
    )
    cutout_ratio: float = Field(
        0.5, ge=0, le=1, description="DiffAugment cutout: box side as a fraction of the image side."
    )

    @field_validator("diffaugment")
    @classmethod
    def _known_policies(cls, policy: str) -> str:
        return _check_policies(policy)
