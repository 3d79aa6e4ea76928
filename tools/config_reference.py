"""Writes docs/config.md: every config key with its type, default and description (from the pydantic models).

Run: python tools/config_reference.py [--check]   (--check exits 1 when the committed file is stale; a test runs it)
"""
from __future__ import annotations

import os
import sys
import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gandist.config import ExperimentConfig  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "config.md")


def _models(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in typing.get_args(annotation):
        found += _models(arg)
    return found


def _type_name(annotation) -> str:
    text = getattr(annotation, "__name__", None) if not typing.get_args(annotation) else None
    text = text or str(annotation).replace("typing.", "")
    return text.replace("|", "\\|")


def _default(field) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        value = field.default_factory()
    else:
        return "**required**"
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{value!r}`"


def section_rows(model: type[BaseModel], prefix: str, lines: list[str], seen: set) -> None:
    nested = []
    for name, field in model.model_fields.items():
        subs = _models(field.annotation)
        key = f"{prefix}{name}"
        if subs:
            nested.append((key, subs, field))
            continue
        lines.append(f"| `{key}` | {_type_name(field.annotation)} | {_default(field)} | {field.description or ''} |")
    for key, subs, field in nested:
        for sub in subs:
            tag = next((f for f in ("arch", "kind") if f in sub.model_fields and len(subs) > 1), None)
            title = f"{key}" + (f" ({tag}: {' | '.join(typing.get_args(sub.model_fields[tag].annotation))})" if tag else "")
            if (title, sub) in seen:
                continue
            seen.add((title, sub))
            lines += ["", f"### `{title}`", "", (sub.__doc__ or field.description or "").strip().splitlines()[0], "",
                      "| key | type | default | description |", "|---|---|---|---|"]
            section_rows(sub, f"{key}.", lines, seen)


def render() -> str:
    lines = ["# Config reference", "", "Generated from the pydantic models by `python tools/config_reference.py`;",
             "do not edit by hand. Every key can be set in YAML or with `--set key=value`.", "",
             "| key | type | default | description |", "|---|---|---|---|"]
    section_rows(ExperimentConfig, "", lines, set())
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        current = open(OUT).read() if os.path.exists(OUT) else ""
        if current != text:
            print(f"{OUT} is stale: run python tools/config_reference.py")
            sys.exit(1)
        sys.exit(0)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    open(OUT, "w").write(text)
    print(f"wrote {OUT}")
