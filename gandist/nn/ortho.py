"""Orthogonal regularization as BigGAN defines it (Brock et al. 2019, sec. 3.1).

R(W) = beta * ||W W^T (.) (1 - I)||_F^2 / 2 per weight viewed as [out, -1], summed over every parameter with at least
two dimensions, skipping a blacklist (BigGAN-PyTorch skips G's shared class embedding). The factor 1/2 makes the
gradient exactly BigGAN-PyTorch's `utils.ortho`: beta * 2 * (W W^T (.) (1 - I)) W, which it adds to .grad in place.
Here it is a differentiable term, so it works under every strategy that backpropagates a loss.
"""
from __future__ import annotations

import torch
from torch import nn


def default_blacklist(module: nn.Module) -> list[nn.Parameter]:
    """Parameters BigGAN-PyTorch excludes: those of the module's `shared` class embedding, when it has one."""
    shared = getattr(module, "shared", None)
    return list(shared.parameters()) if isinstance(shared, nn.Module) else []


def ortho_penalty(module: nn.Module, beta: float, blacklist: list[nn.Parameter] | None = None) -> torch.Tensor:
    """beta/2 * sum over weights of ||W W^T masked off the diagonal||_F^2 (gradient = BigGAN-PyTorch's ortho)."""
    skip = {id(p) for p in (default_blacklist(module) if blacklist is None else blacklist)}
    total = None
    for param in module.parameters():
        if param.ndim < 2 or id(param) in skip or not param.requires_grad:
            continue
        w = param.reshape(param.shape[0], -1)
        gram = w @ w.t()
        off_diag = gram * (1.0 - torch.eye(w.shape[0], device=w.device, dtype=w.dtype))
        term = off_diag.square().sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros((), device=next(module.parameters()).device)
    return 0.5 * beta * total


def ortho_grad_reference(weight: torch.Tensor, beta: float) -> torch.Tensor:
    """BigGAN-PyTorch's closed-form gradient for one weight: beta * 2 * (W W^T (.) (1 - I)) W."""
    w = weight.reshape(weight.shape[0], -1)
    mask = 1.0 - torch.eye(w.shape[0], device=w.device, dtype=w.dtype)
    return (beta * 2 * ((w @ w.t()) * mask) @ w).reshape(weight.shape)
