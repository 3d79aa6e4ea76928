"""Config sections of each data source, discriminated by `data.kind`."""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator

from gandist.configbase import Section


class Toy2DConfig(Section):
    """2-D Gaussian mixtures (the PacGAN/VEEGAN protocol)."""

    kind: Literal["toy2d"] = "toy2d"
    mixture: Literal["ring8", "grid25"] = Field("ring8", description="ring8: 8 modes, radius 2, std 0.02; grid25: 5x5 at {-4..4}, std 0.05.")


class DigitsConfig(Section):
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), upsampled."""

    kind: Literal["digits"] = "digits"
    resolution: Literal[8, 16, 32, 64] = Field(16, description="Output size in pixels (bilinear upsampling from 8x8).")
    channels: Literal[1, 3] = Field(1, description="1 (grey) or 3 (grey repeated).")
    limit: int = Field(0, ge=0, le=1797, description="Train on the first N images only (0: all 1797; small-data runs).")


class StackedDigitsConfig(Section):
    """Three digits stacked in the colour channels: 1000 modes (Stacked-MNIST on scikit-learn's digits)."""

    kind: Literal["stacked_digits"] = "stacked_digits"
    resolution: Literal[8, 16, 32] = Field(16, description="Output size in pixels.")


class FolderConfig(Section):
    """An image folder: one sub-folder per class, or images directly in it (unconditional)."""

    kind: Literal["folder"] = "folder"
    path: str = Field(..., description="Folder holding images (class = sub-folder).")
    resolution: int = Field(32, gt=0, description="Images are resized (shorter side) and centre-cropped to this.")
    channels: Literal[1, 3] = Field(3, description="1 (grey) or 3 (RGB).")
    hflip: bool = Field(True, description="Random horizontal flips.")


class WebDatasetConfig(Section):
    """Sharded WebDataset tar streams over fsspec (local, s3://, gs://, ...)."""

    kind: Literal["webdataset"] = "webdataset"
    urls: str = Field(..., description="Brace pattern of shard URLs, e.g. s3://bucket/train-{000000..000127}.tar.")
    resolution: int = Field(64, gt=0, description="Decoded images are resized and centre-cropped to this.")
    channels: Literal[1, 3] = Field(3, description="1 (grey) or 3 (RGB).")
    num_classes: int = Field(0, ge=0, description="Classes in .cls (0: unconditional).")
    storage_options: dict = Field(default_factory=dict, description="Passed to fsspec (endpoint_url, profile, anon). Never credentials.")
    shuffle_buffer: int = Field(1000, ge=0, description="Samples in the shuffle buffer (0: no shuffling).")
    resampled: bool = Field(True, description="Sample shards with replacement forever, so ranks never run out unevenly.")
    workers: int = Field(2, ge=0, description="DataLoader worker processes per rank.")
    prefetch: int = Field(2, ge=1, description="Batches prefetched per worker.")
    hflip: bool = Field(True, description="Random horizontal flips.")
    image_key: str = Field("jpg;png;jpeg;webp", description="Keys tried for the image, in order.")
    max_skip_fraction: float = Field(0.01, ge=0, le=1, description="Stop with an error when skipped/seen samples exceed this.")
    retries: int = Field(3, ge=0, description="Retries (with backoff) of a transient read error.")
    retry_backoff: float = Field(0.5, ge=0, description="Seconds before the first retry; doubled on each next one.")

    @field_validator("storage_options")
    @classmethod
    def _no_credentials(cls, options: dict) -> dict:
        # Config files get copied into run dirs, logs and job specs: secrets must come from the environment.
        found = cls.credential_keys(options)
        if found:
            raise ValueError(
                f"credentials do not belong in the config ({', '.join(found)}); set AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY in the environment or name an AWS profile (storage_options.profile)"
            )
        return options

    @staticmethod
    def credential_keys(options: dict, prefix: str = "") -> list[str]:
        """Dotted keys of `options` (searched recursively) that look like credentials."""
        found = []
        for key, value in options.items():
            name, lower = f"{prefix}{key}", str(key).lower()
            if lower == "key" or any(w in lower for w in ("secret", "password", "token", "access_key", "credential")):
                found.append(name)
            if isinstance(value, dict):
                found += WebDatasetConfig.credential_keys(value, f"{name}.")
        return found


DataConfig = Annotated[
    Union[Toy2DConfig, DigitsConfig, StackedDigitsConfig, FolderConfig, WebDatasetConfig],
    Field(discriminator="kind"),
]
