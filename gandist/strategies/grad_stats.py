"""Per-parameter gradient norms of a module, fused and on the device (what single's and ddp's step() report)."""
from __future__ import annotations

import weakref

import torch
from torch import nn

_NAMED_PARAMETERS: "weakref.WeakKeyDictionary[nn.Module, list]" = weakref.WeakKeyDictionary()


def _named_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """module.named_parameters(), listed once per module: the nets' parameters are fixed after setup, and walking
    the module tree twice a step was a measurable share of the step's framework cost (tools/bench/overhead.py)."""
    named = _NAMED_PARAMETERS.get(module)
    if named is None:
        named = _NAMED_PARAMETERS[module] = list(module.named_parameters())
    return named


def layer_grad_norms(module: nn.Module) -> tuple[torch.Tensor | float, dict[str, torch.Tensor], torch.Tensor | int]:
    """(total norm, per-parameter norms, non-finite count) of a module's current gradients, as device tensors.

    A parameter with a non-finite gradient element reports NaN. Fused: one `_foreach_norm` for the norms and one for
    the count (x * 0 is 0 for a finite x and NaN otherwise; the 0-norm counts the non-zeros), and no host sync.
    """
    named = [(name, p.grad.detach().float()) for name, p in _named_parameters(module) if p.grad is not None]
    if not named:
        return 0.0, {}, 0
    names, grads = zip(*named)
    norms = torch.stack(torch._foreach_norm(list(grads)))
    bad = torch.stack(torch._foreach_norm(torch._foreach_mul(list(grads), 0.0), 0))
    norms = torch.where(bad > 0, torch.full_like(norms, float("nan")), norms)
    total = norms.double().square().sum().sqrt()
    return total, dict(zip(names, norms.unbind())), bad.sum().long()
