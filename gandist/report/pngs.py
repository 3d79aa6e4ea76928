"""`gandist report --png DIR`: the same panel specs drawn with matplotlib (no browser needed, for papers and notes).

matplotlib rather than plotly's static export: kaleido needs a Chrome of its own (it downloads one when none is
found), while matplotlib is already a dependency and renders offline with the Agg backend.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from gandist.fileio import atomic_write_bytes
from gandist.report.page import MARKER_COLOURS
from gandist.report.panels import Panel


def panel_png(panel: Panel) -> bytes:
    """PNG bytes of one panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(panel.rows)
    height = 2.4 * rows + (0.12 * len(panel.heat.labels) if panel.heat else 0)
    fig, axes = plt.subplots(rows, 1, figsize=(10, 1.2 + height), sharex=True, squeeze=False)
    axes = axes[:, 0]
    for line in panel.lines:
        axes[line.row - 1].plot(line.x, line.y, marker="o" if line.markers else None, markersize=3, lw=1,
                                label=line.name)
    if panel.heat is not None:
        h = panel.heat
        ax = axes[h.row - 1]
        x = h.x if len(h.x) > 1 else np.array([h.x[0], h.x[0] + 1])
        image = ax.pcolormesh(x, np.arange(len(h.labels)), np.ma.masked_invalid(h.z[:, :len(x)]), shading="nearest",
                              cmap="viridis")
        ax.set_yticks(np.arange(len(h.labels)), h.labels, fontsize=6)
        fig.colorbar(image, ax=ax, label=h.colorbar)
    for row, value, label in panel.bounds:
        axes[row - 1].axhline(value, ls="--", color="#ff7f0e", lw=1.2, label=label)
    for marker in panel.markers:
        for ax in axes:
            ax.axvline(marker.x, color=MARKER_COLOURS.get(marker.kind, "#555"), lw=0.8,
                       ls=":" if marker.kind == "checkpoint" else "-")
        axes[0].annotate(marker.label, (marker.x, 1.0), xycoords=("data", "axes fraction"), fontsize=7,
                         rotation=90, va="top", ha="right", color=MARKER_COLOURS.get(marker.kind, "#555"))
    for r, (ax, title) in enumerate(zip(axes, panel.rows), 1):
        ax.set_ylabel(title)
        if r in panel.log_rows:
            ax.set_yscale("log")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
    axes[-1].set_xlabel("step")
    axes[0].set_title(panel.title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def write_pngs(panels: list[Panel], folder: str) -> list[Path]:
    """One DIR/<panel id>.png per panel (written atomically); returns the paths."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for panel in panels:
        path = out / f"{panel.id}.png"
        atomic_write_bytes(path, panel_png(panel))
        paths.append(path)
    return paths
