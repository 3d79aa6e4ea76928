"""Truncation curves (Brock et al. 2019, BigGAN's Fig. 4): the metrics at several truncations psi, and their plot.

Every psi uses the same evaluation latents and the same real reference (computed once by the Evaluator), so the
curve shows what truncation alone does: precision/IS up, recall/diversity down, FID first better then worse.
"""
from __future__ import annotations

import math
from pathlib import Path

from gandist.errors import UserError

PLOTTED = ("fid", "is", "kid", "precision", "recall", "density", "coverage", "modes")


def parse_truncations(text: str) -> list[float]:
    """'1.0,0.7,0.5' -> [1.0, 0.7, 0.5]; each psi must be a positive number."""
    values = []
    for part in (p.strip() for p in text.split(",")):
        try:
            psi = float(part)
        except ValueError:
            raise UserError(f"--truncation {text!r}: {part!r} is not a number; give e.g. 1.0,0.7,0.5") from None
        if not math.isfinite(psi) or psi <= 0:
            raise UserError(f"--truncation {text!r}: psi must be positive (1.0: no truncation), got {part}")
        values.append(psi)
    if not values:
        raise UserError("--truncation: give at least one psi, e.g. 1.0,0.7,0.5")
    return values


def truncation_curve(evaluator, G, truncations: list[float], strategy=None) -> list[dict]:
    """One metrics dict per psi (each with its `truncation`)."""
    return [{**evaluator.evaluate(G, strategy, truncation=psi), "truncation": psi} for psi in truncations]


def plot_curve(rows: list[dict], path: str | Path, title: str = "") -> list[str]:
    """PNG of each computed metric against psi, plus IS against FID (BigGAN's trade-off) when both are there;
    returns the metrics plotted."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on training machines
    import matplotlib.pyplot as plt

    names = [m for m in PLOTTED if all(isinstance(r.get(m), (int, float)) for r in rows)]
    tradeoff = "fid" in names and "is" in names
    panels = len(names) + tradeoff
    cols = min(max(panels, 1), 4)
    grid_rows = math.ceil(max(panels, 1) / cols)
    fig, grid = plt.subplots(grid_rows, cols, figsize=(3.2 * cols, 3.0 * grid_rows), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[panels:]:
        ax.axis("off")
    psis = [r["truncation"] for r in rows]
    for ax, name in zip(axes, names):
        ax.plot(psis, [r[name] for r in rows], "o-")
        ax.set_xlabel("truncation psi")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    if tradeoff:
        ax = axes[len(names)]
        ax.plot([r["is"] for r in rows], [r["fid"] for r in rows], "o-")
        for r in rows:
            ax.annotate(f"{r['truncation']:g}", (r["is"], r["fid"]), textcoords="offset points", xytext=(3, 3))
        ax.set_xlabel("IS")
        ax.set_ylabel("FID")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return names + (["is_vs_fid"] if tradeoff else [])


def format_curve(rows: list[dict]) -> str:
    """A table: one row per psi, one column per metric."""
    names = [m for m in ("truncation", *PLOTTED) if all(m in r for r in rows)]
    lines = ["  ".join(f"{n:>10}" for n in names)]
    lines += ["  ".join(f"{r[n]:>10.5g}" for n in names) for r in rows]
    return "\n".join(lines)
