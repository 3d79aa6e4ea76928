"""How the tests compare weights trained two ways (strategies, world sizes, resumes) so that any CPU passes.

Two runs that sum the same numbers in another order differ by round-off, and that round-off depends on the CPU's
vector width (AVX2, AVX-512, none). A per-tensor relative norm ||a - b|| / ||b|| is not a stable measure of it: a
tensor that starts at 0 (an attention gamma, a bias) is tiny after a few steps, so its round-off divided by its own
norm jumped from under 1e-5 on an AVX2 machine to 1.07e-5 on an AVX-512 one. Two rules that do not have that flaw:

- model-wide, ||a - b|| / ||b|| over all of a net's floating tensors at once, which must stay under MODEL_RTOL;
- elementwise, torch.isclose's rule |a - b| <= atol + rtol * |b| as a local guard: `excess` is the worst
  |a - b| / (atol + rtol |b|), so <= 1 means every element is close; atol is the floor for (near-)zero elements.

Measured (2 gloo ranks against one process, 2 steps, AVX2 and ATEN_CPU_CAPABILITY=default): model-wide errors of
1e-9 to 3e-7 (BigGAN's G), and single elements off by up to 6e-6 where Adam divides a round-off-sized gradient by
its own square root. A real error (a wrong gather, a missing all-reduce, a batch seen twice) moves weights by about
one Adam step, lr (1e-4 to 2e-3 in the test configs), per element: model-wide about lr / |w| ~ 1e-3, and past atol
in every element it touches.
"""
from __future__ import annotations

import torch

MODEL_RTOL = 1e-5
# a fifth of one Adam step at the test configs' smallest lr (1e-4); measured round-off stays under 6e-6
ATOL = 2e-5
RTOL = 1e-4


def excess(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL, rtol: float = RTOL) -> float:
    """max |a - b| / (atol + rtol * |b|) over the elements: <= 1 when a is close to b everywhere."""
    a, b = a.detach().double(), b.detach().double()
    return float(((a - b).abs() / (atol + rtol * b.abs())).max()) if b.numel() else 0.0


def matches(report: dict) -> bool:
    """Whether a compare_state report passes both rules."""
    return report["excess"] <= 1 and report["model_relative"] < MODEL_RTOL


def compare_state(sa: dict, sb: dict, skip: set[str] = frozenset(), atol: float = ATOL,
                  rtol: float = RTOL) -> dict:
    """The worst elementwise excess (and the tensor it is in) and the model-wide relative error of two state dicts."""
    assert sa.keys() == sb.keys(), sorted(set(sa) ^ set(sb))
    keys = [k for k in sb if sb[k].dtype.is_floating_point and k not in skip]
    per_tensor = {k: excess(sa[k], sb[k], atol, rtol) for k in keys}
    worst = max(per_tensor, key=per_tensor.get)
    diff = torch.cat([(sa[k].double() - sb[k].double()).flatten() for k in keys])
    ref = torch.cat([sb[k].double().flatten() for k in keys])
    return {"excess": per_tensor[worst], "worst": worst,
            "model_relative": float(diff.norm() / max(float(ref.norm()), 1e-30))}
