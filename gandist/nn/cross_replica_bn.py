"""Batch norm whose statistics are reduced over a process group (works on gloo and NCCL alike).

`batch_norm(...)` is what models call: a plain BatchNorm when no group is given, the cross-replica one otherwise.

Why not torch.nn.SyncBatchNorm: it refuses CPU tensors ("SyncBatchNorm expected input tensor to be on GPU"), so it
cannot run on gloo. Here the forward all-reduces one float64 vector [count, sum, sum of squares] per layer (so
ranks may hold unequal batch sizes, even none), and the backward all-reduces [sum dy, sum dy*xhat] so that the input
gradient is the one plain BatchNorm gives on the concatenated batch. Weight and bias gradients stay local: the
strategy's gradient all-reduce sums them like any other parameter's.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def _reduce_dims(x: torch.Tensor) -> list[int]:
    return [0] + list(range(2, x.dim()))


def _channel_shape(x: torch.Tensor) -> list[int]:
    return [1, x.shape[1]] + [1] * (x.dim() - 2)


class _CrossReplicaBN(torch.autograd.Function):
    """y = (x - mean) / sqrt(var + eps) * weight + bias with mean/var over every rank's batch."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, group):
        channels = x.shape[1]
        dims, shape = _reduce_dims(x), _channel_shape(x)
        xf = x.float()
        count = x.numel() // channels if channels else 0
        if count > 0:
            local_mean = xf.mean(dims)
            local_m2 = (xf - local_mean.view(shape)).pow(2).sum(dims)  # two-pass locally: no cancellation
        else:  # this rank has no samples in this batch: contributes nothing
            local_mean = xf.new_zeros(channels)
            local_m2 = xf.new_zeros(channels)
        # float64 for the cross-rank combine: sum of squares minus n*mean^2 cancels only between-rank spread
        stats = torch.cat([
            torch.tensor([float(count)], dtype=torch.float64, device=x.device),
            (count * local_mean).double(),
            (local_m2.double() + count * local_mean.double().pow(2)),
        ])
        dist.all_reduce(stats, group=group)
        total = stats[0]
        if total.item() == 0:
            raise ValueError("cross-replica batch norm got an empty batch on every rank; give at least one sample")
        mean64 = stats[1:1 + channels] / total
        var64 = (stats[1 + channels:] / total - mean64.pow(2)).clamp_min(0)
        mean, var = mean64.float(), var64.float()
        invstd = torch.rsqrt(var + eps)
        xhat = (xf - mean.view(shape)) * invstd.view(shape)
        y = xhat
        if weight is not None:
            y = y * weight.float().view(shape) + bias.float().view(shape)
        ctx.save_for_backward(xhat, weight, invstd)
        ctx.total = float(total.item())
        ctx.group = group
        count_out = total.float().reshape(1)
        ctx.mark_non_differentiable(mean, var, count_out)
        return y.to(x.dtype), mean, var, count_out

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var, _grad_count):
        xhat, weight, invstd = ctx.saved_tensors
        dims, shape = _reduce_dims(xhat), _channel_shape(xhat)
        dy = grad_y.float()
        sum_dy = dy.sum(dims)
        sum_dy_xhat = (dy * xhat).sum(dims)
        grad_x = grad_weight = grad_bias = None
        if weight is not None:
            grad_weight = sum_dy_xhat.to(weight.dtype)  # local: the strategy all-reduces parameter grads
            grad_bias = sum_dy.to(weight.dtype)
        if ctx.needs_input_grad[0]:
            both = torch.cat([sum_dy, sum_dy_xhat])
            dist.all_reduce(both, group=ctx.group)
            channels = sum_dy.numel()
            mean_dy = (both[:channels] / ctx.total).view(shape)
            mean_dy_xhat = (both[channels:] / ctx.total).view(shape)
            scale = invstd if weight is None else invstd * weight.float()
            grad_x = (scale.view(shape) * (dy - mean_dy - xhat * mean_dy_xhat)).to(grad_y.dtype)
        return grad_x, grad_weight, grad_bias, None, None


class CrossReplicaBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over N-d inputs [N, C, ...] whose batch statistics cover every rank of `process_group`.

    Running statistics use the unbiased variance of the global batch (as BatchNorm does on one process), so every
    rank holds the same running_mean / running_var. In eval mode it is plain BatchNorm with those statistics.
    """

    def __init__(self, num_features: int, process_group: Any = None, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats)
        self.process_group = process_group

    def __deepcopy__(self, memo: dict) -> "CrossReplicaBatchNorm":
        """A copy sharing the process group (groups cannot be copied; EMA copies of G deep-copy their layers)."""
        if self.process_group is not None:
            memo[id(self.process_group)] = self.process_group
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"CrossReplicaBatchNorm expects input [N, C, ...], got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        use_batch_stats = self.training or not self.track_running_stats
        if not use_batch_stats:
            return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                            False, 0.0, self.eps)
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("CrossReplicaBatchNorm needs torch.distributed initialized; build models with "
                               "process_group=None (plain BatchNorm) on one process")
        y, mean, var, count = _CrossReplicaBN.apply(x, self.weight, self.bias, self.eps, self.process_group)
        if self.training and self.track_running_stats:
            self._update_running_stats(mean, var, float(count.item()))
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: float) -> None:
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative moving average, as nn.BatchNorm
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        # unbiased variance of the global batch (count: elements per channel over every rank)
        unbiased = var * (count / max(count - 1, 1))
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


def batch_norm(num_features: int, process_group: Any = None, affine: bool = True, eps: float = 1e-5,
               momentum: float = 0.1, dims: int = 2) -> nn.Module:
    """BatchNorm{1,2}d, or CrossReplicaBatchNorm when `process_group` is given."""
    if process_group is None:
        cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        return cls(num_features, eps=eps, momentum=momentum, affine=affine)
    return CrossReplicaBatchNorm(num_features, process_group, affine=affine, eps=eps, momentum=momentum)
