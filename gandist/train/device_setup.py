"""Process-wide backend switches from `train.deterministic` (auto | true | false), set once before the nets run.

Why auto differs by device: on CPU gandist's tests and resumes rely on bitwise reproducibility, which costs nothing
there, so auto means deterministic. On CUDA the deterministic kernels are slower and cudnn.benchmark's autotuning
and TF32 matmul/conv give most of a GPU's throughput; stylegan2-ada-pytorch (training/training_loop.py) trains with
`torch.backends.cudnn.benchmark = True` and TF32 allowed and does not ask for deterministic algorithms, so auto
follows it on CUDA. `true` on CUDA makes cuBLAS deterministic too, which needs CUBLAS_WORKSPACE_CONFIG set before
the first cuBLAS handle is created: it is set here (unless the user set it) before any net is built.
Also here: train.compile's check for the C++ compiler inductor needs on CPU.
"""
from __future__ import annotations

import os

import torch

from gandist.errors import ConfigError


def wants_determinism(deterministic: str | bool, device: torch.device) -> bool:
    """True when train.deterministic asks for deterministic algorithms on this device."""
    return deterministic is True or (deterministic == "auto" and device.type != "cuda")


def configure_device(deterministic: str | bool, device: torch.device) -> bool:
    """Apply train.deterministic for `device`; returns whether deterministic algorithms are on."""
    on = wants_determinism(deterministic, device)
    if on:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS' documented deterministic setting
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
        return True
    torch.use_deterministic_algorithms(False)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return False


def check_cpp_compiler() -> None:
    """Inductor builds its CPU kernels with a C++ compiler: refuse train.compile before training when none is found."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception as err:  # noqa: BLE001  (torch raises its own compiler-search errors)
        raise ConfigError(f"train.compile=true with train.compile_backend=inductor on CPU needs a C++ compiler "
                          f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'not found'}); "
                          "install g++ (or set CXX), or set train.compile_backend=aot_eager or "
                          "train.compile=false") from None
