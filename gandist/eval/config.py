"""Config of evaluation during and after training."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from gandist.configbase import Section
from gandist.registry import METRICS as METRIC_HOMES

METRICS = tuple(METRIC_HOMES)  # fid, kid, is, pr, modes, intra_fid, ppl


class EvalConfig(Section):
    """Periodic evaluation, best-checkpoint tracking and metric settings (also the defaults of `gandist eval`)."""

    every: int = Field(0, ge=0, description="Evaluate every k steps during training (0: off).")
    metrics: list[str] = Field(default_factory=list, description="Metrics: fid, kid, is, pr, modes, intra_fid (conditional), ppl ([]: modes for toy2d and stacked digits, plus fid for images).")
    num: int = Field(2000, gt=0, description="Generated samples per evaluation (split across ranks).")
    reference_num: int = Field(0, ge=0, description="Real samples for the reference statistics (0: same as num).")
    features: Literal["auto", "digits", "inception"] = Field("auto", description="Feature network: digits (built in), inception (needs features_path); auto: digits.")
    features_path: str | None = Field(None, description="Weights of the feature network: a path or fsspec URL (inception: pt_inception-2015-12-05-6726825d.pth).")
    features_sha256: str | None = Field(None, description="Expected sha256 of the weights (default for inception: the file's published prefix 6726825d).")
    resize: Literal["pytorch_fid", "clean", "tf_compat"] = Field("pytorch_fid", description="Inception input: images quantized to uint8, then resized to 299 as pytorch-fid (torch bilinear), clean-fid (PIL bicubic, antialias) or TF1/torch-fidelity (tf_compat); recorded with every result.")
    reference_stats: str | None = Field(None, description="FID reference statistics from `gandist eval stats` (.npz over the whole dataset, no flips); refused when its data, resolution, resize or feature network differ; results record its sha256.")
    batch_size: int = Field(250, gt=0, description="Samples per generator/feature batch.")
    kid_subsets: int = Field(100, gt=0, description="KID: number of random subsets.")
    kid_subset_size: int = Field(1000, gt=1, description="KID: samples per subset (capped at the samples available).")
    pr_k: int = Field(3, gt=0, description="Precision/recall: k of the k-NN manifold radius (Kynkaanniemi et al.: 3).")
    max_buffer: int = Field(10000, gt=0, description="KID and precision/recall use at most this many feature vectors per side.")
    is_splits: int = Field(10, gt=0, description="Inception Score: number of splits.")
    intra_fid_num: int = Field(0, ge=0, description="intra_fid: generated samples per class (0: num / classes); each class is compared with all its real images.")
    ppl_num: int = Field(0, ge=0, description="ppl: latent pairs (0: num; stylegan2-ada: 50000).")
    ppl_space: Literal["auto", "w", "z"] = Field("auto", description="ppl: interpolate in w (StyleGAN2's mapping output, lerp) or z (slerp); auto: w when G has a mapping network.")
    ppl_sampling: Literal["end", "full"] = Field("end", description="ppl: t at the path endpoints (end: t = 0, StyleGAN2's ppl_wend) or uniform in [0, 1) (full).")
    ppl_epsilon: float = Field(1e-4, gt=0, lt=1, description="ppl: step along the path; the distance is divided by epsilon^2.")
    ppl_crop: bool = Field(False, description="ppl: stylegan2-ada's face crop before LPIPS (its ppl_*; False: the whole image, its ppl2_wend as in the StyleGAN2 paper).")
    lpips_path: str | None = Field(None, description="ppl: LPIPS v0.1 VGG linear heads (the lpips package's weights/v0.1/vgg.pth), a path or fsspec URL.")
    lpips_sha256: str | None = Field(None, description="ppl: expected sha256 of lpips_path (no published value is known to gandist; recorded either way).")
    vgg16_path: str | None = Field(None, description="ppl: torchvision's VGG16 weights vgg16-397923af.pth, the LPIPS backbone (a path or fsspec URL).")
    vgg16_sha256: str | None = Field(None, description="ppl: expected sha256 of vgg16_path (default: the file name's prefix 397923af).")
    min_share: float = Field(0.1, gt=0, le=1, description="toy2d: a mode is captured with >= min_share x N/K high-quality samples.")
    seed: int = Field(1234, ge=0, description="Seed of the evaluation latents and real-sample draws (fixed: runs compare fairly).")
    best_metric: str | None = Field(None, description="Metric that picks the best checkpoint (default: fid if computed, else modes).")

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, metrics: list[str]) -> list[str]:
        for m in metrics:
            if m not in METRICS:
                raise ValueError(f"unknown metric {m!r}; choose from {', '.join(METRICS)}")
        return metrics


def min_samples(metric: str, *, k: int = 3, splits: int = 10) -> int:
    """The fewest samples a metric can be computed from (for early, clear errors)."""
    return {"fid": 2, "kid": 2, "is": splits, "pr": k + 1, "ppl": 2}.get(metric, 1)
