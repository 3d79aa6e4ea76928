"""The Strategy ABC declares everything the loop and its parts use of a strategy (no `hasattr`, no reaching into one
strategy's own attributes such as single's `optimizers`).

What counts as a use: an attribute read on a name `s` or `strategy`, or on any `.strategy`, in the packages that
drive a strategy (train/, objectives/, watchdog/, eval/, telemetry/).
"""
from __future__ import annotations

import ast
from pathlib import Path

from gandist.strategies.base import Strategy

PACKAGE = Path(__file__).resolve().parents[2] / "gandist"
USERS = ("train", "objectives", "watchdog", "eval", "telemetry")


def strategy_uses(source: str) -> set[str]:
    """Attribute names read on a strategy in `source`."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            base = node.value
            if (isinstance(base, ast.Name) and base.id in ("s", "strategy")) or (
                    isinstance(base, ast.Attribute) and base.attr == "strategy"):
                out.add(node.attr)
    return out


def declared() -> set[str]:
    names = set(dir(Strategy))
    for cls in Strategy.__mro__:
        names |= set(getattr(cls, "__annotations__", {}))
    return names


def test_the_strategy_abc_declares_what_the_loop_uses():
    uses: dict[str, list[str]] = {}
    for package in USERS:
        for path in sorted((PACKAGE / package).glob("*.py")):
            for name in strategy_uses(path.read_text()):
                uses.setdefault(name, []).append(f"{package}/{path.name}")
    assert len(uses) > 15  # the finder sees the loop's calls (setup, backward, step, all_reduce, ...)
    missing = {name: files for name, files in uses.items() if name not in declared()}
    assert missing == {}, missing


def test_the_finder_sees_an_undeclared_attribute():
    uses = strategy_uses("def f(tr, s):\n    tr.strategy.optimizers.clear()\n    s.step('D')\n")
    assert uses == {"optimizers", "step"}
    assert "optimizers" not in declared()
