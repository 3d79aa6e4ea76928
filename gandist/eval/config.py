"""Config of evaluation during and after training."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from gandist.configbase import Section
from gandist.registry import METRICS as METRIC_HOMES

METRICS = tuple(METRIC_HOMES)  # fid, kid, is, pr, modes, intra_fid, ppl
# the numbers an evaluation reports (what eval.early_stop.metric and eval.best_metric may name) -> the eval.metrics
# entry that computes them; high_quality is toy2d's only
RESULTS = {"fid": "fid", "kid": "kid", "is": "is", "precision": "pr", "recall": "pr", "density": "pr",
           "coverage": "pr", "modes": "modes", "high_quality": "modes", "reverse_kl": "modes",
           "intra_fid": "intra_fid", "ppl": "ppl"}
LOWER_IS_BETTER = {"fid", "kid", "reverse_kl", "intra_fid", "ppl"}


class EarlyStopConfig(Section):
    """Stop training when an evaluation metric has not improved for `patience` evaluations (exit 0)."""

    metric: str = Field(..., description=f"The reported number watched: {', '.join(RESULTS)} (lower is better for "
                        "fid, kid, reverse_kl, intra_fid and ppl, higher for the others).")
    patience: int = Field(..., ge=1, description="Evaluations without an improvement before the run stops.")
    min_delta: float = Field(0.0, ge=0, description="An improvement must beat the best value by more than this.")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in RESULTS:
            raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(RESULTS)}")
        return metric


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
    best_metric: str | None = Field(None, description="Metric that picks the best checkpoint (default: early_stop.metric if set, else fid if computed, else modes).")
    early_stop: EarlyStopConfig | None = Field(None, description=(
        "Early stopping on a metric (null: off): the run ends, exit 0, with an early_stop event; the best checkpoint "
        "by that metric is kept (checkpoint.keep_best)."))

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, metrics: list[str]) -> list[str]:
        for m in metrics:
            if m not in METRICS:
                raise ValueError(f"unknown metric {m!r}; choose from {', '.join(METRICS)}")
        return metrics


    @model_validator(mode="after")
    def _early_stop_fits(self) -> "EvalConfig":
        stop = self.early_stop
        if stop is None:
            return self
        if not self.every:
            raise ValueError("eval.early_stop watches the periodic evaluations, but eval.every=0 turns them off; set "
                             "eval.every (e.g. 500) or drop eval.early_stop")
        home = RESULTS[stop.metric]
        if self.metrics and home not in self.metrics:
            raise ValueError(f"eval.early_stop.metric={stop.metric} is computed by eval.metrics entry {home!r}, which "
                             f"eval.metrics={self.metrics} lacks; add {home} to eval.metrics")
        if self.best_metric not in (None, stop.metric):
            raise ValueError(f"eval.early_stop.metric={stop.metric} but eval.best_metric={self.best_metric}: the best "
                             "checkpoint kept would be by another metric; set them equal or drop eval.best_metric")
        return self


def min_samples(metric: str, *, k: int = 3, splits: int = 10) -> int:
    """The fewest samples a metric can be computed from (for early, clear errors)."""
    return {"fid": 2, "kid": 2, "is": splits, "pr": k + 1, "ppl": 2}.get(metric, 1)
