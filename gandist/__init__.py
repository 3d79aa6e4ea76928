"""gandist: train BigGAN- and StyleGAN2-scale GANs across many GPUs, stably."""
from __future__ import annotations

__version__ = "0.1.0"


def load_run(run_dir: str, checkpoint: str | int = "latest", device: str = "cpu"):
    """Load a trained run (see gandist.api.load_run)."""
    from gandist.api import load_run as _load_run

    return _load_run(run_dir, checkpoint, device)


__all__ = ["load_run", "__version__"]
