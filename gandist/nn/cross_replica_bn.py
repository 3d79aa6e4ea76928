"""Batch norm whose statistics are reduced over a process group (works on gloo and NCCL alike).

`batch_norm(...)` is what models call: a plain BatchNorm when no group is given, the cross-replica one otherwise.
"""
from __future__ import annotations

from typing import Any

from torch import nn


def batch_norm(num_features: int, process_group: Any = None, affine: bool = True, eps: float = 1e-5,
               momentum: float = 0.1, dims: int = 2) -> nn.Module:
    """BatchNorm{1,2}d, or CrossReplicaBatchNorm when `process_group` is given."""
    if process_group is None:
        cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        return cls(num_features, eps=eps, momentum=momentum, affine=affine)
    return CrossReplicaBatchNorm(num_features, process_group, affine=affine, eps=eps, momentum=momentum)  # noqa: F821
