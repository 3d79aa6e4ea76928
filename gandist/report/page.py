"""The HTML page: plotly figures from the panel specs, plotly.js inlined once, samples inlined as base64."""
from __future__ import annotations

import base64
import html
import json

import numpy as np

from gandist.report.panels import Panel

MARKER_COLOURS = {"rollback": "#d62728", "diverged": "#8b0000", "gave_up": "#000000", "checkpoint": "#2ca02c",
                  "resumed": "#9467bd"}
MAX_SAMPLE_GRIDS = 40  # grids over time on the page (evenly spaced, the last always included)
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


def _compact(a: np.ndarray) -> np.ndarray:
    """float32 / int32 arrays: plotly ships them as base64 typed arrays, half the bytes of float64."""
    return a.astype(np.int32 if a.dtype.kind in "iu" else np.float32)


def figure(panel: Panel):
    """A plotly Figure of one panel spec."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = len(panel.rows)
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.08 if rows > 1 else 0.02)
    for line in panel.lines:
        fig.add_trace(go.Scatter(x=_compact(line.x), y=_compact(line.y), name=line.name,
                                   mode="lines+markers" if line.markers else "lines",
                                   legendgroup=str(line.row)), row=line.row, col=1)
    if panel.heat is not None:
        h = panel.heat
        fig.add_trace(go.Heatmap(x=_compact(h.x), y=h.labels, z=_compact(h.z), colorscale="Viridis",
                                 colorbar={"title": {"text": h.colorbar}}, name="sigma",
                                 hovertemplate="step %{x}<br>%{y}<br>log10 sigma %{z:.3f}<extra></extra>"),
                      row=h.row, col=1)
    for row, value, label in panel.bounds:  # a trace, not add_hline: its annotation lands off a log axis
        xs = np.concatenate([line.x for line in panel.lines if line.row == row] or [np.zeros(1)])
        fig.add_trace(go.Scatter(x=[float(xs.min()), float(xs.max())], y=[value, value], name=label, mode="lines",
                                 line={"dash": "dash", "color": "#ff7f0e", "width": 1.5},
                                 legendgroup=str(row)), row=row, col=1)
    for marker in panel.markers:
        colour = MARKER_COLOURS.get(marker.kind, "#555")
        fig.add_shape(type="line", xref="x", yref="paper", x0=marker.x, x1=marker.x, y0=0, y1=1,
                      line={"color": colour, "width": 1, "dash": "dot" if marker.kind == "checkpoint" else "solid"},
                      label={"text": marker.label, "textposition": "end", "font": {"size": 9, "color": colour}})
    for r, title in enumerate(panel.rows, 1):
        # only ever set "log": forcing "linear" on the heatmap's categorical (layer name) axis draws NaN-high images
        fig.update_yaxes(title_text=title, row=r, col=1, **({"type": "log"} if r in panel.log_rows else {}))
    fig.update_xaxes(title_text="step", row=rows, col=1)
    layers = len(panel.heat.labels) if panel.heat else 0
    fig.update_layout(title={"text": panel.title}, height=260 + 170 * rows + 8 * layers,
                      margin={"l": 70, "r": 30, "t": 60, "b": 40}, legend={"orientation": "v"},
                      template="plotly_white")
    return fig


def _figure_html(panel: Panel) -> str:
    import plotly.io as pio

    return pio.to_html(figure(panel), include_plotlyjs=False, full_html=False, div_id=f"plot-{panel.id}",
                       config=PLOT_CONFIG)


def _pick_samples(samples: list) -> list:
    if len(samples) <= MAX_SAMPLE_GRIDS:
        return samples
    idx = np.unique(np.linspace(0, len(samples) - 1, MAX_SAMPLE_GRIDS).round().astype(int))
    return [samples[i] for i in idx]


def _samples_html(samples: list) -> str:
    if not samples:
        return "<p>No sample grids in samples/ (telemetry.sample_every: 0, or none written yet).</p>"
    shown = _pick_samples(samples)
    note = f" (showing {len(shown)} of {len(samples)}, evenly spaced)" if len(shown) < len(samples) else ""
    imgs = []
    for step, path in shown:
        data = base64.b64encode(path.read_bytes()).decode()
        imgs.append(f'<img class="thumb" data-step="{step}" title="step {step}" alt="samples at step {step}" '
                    f'src="data:image/png;base64,{data}">')
    last = len(shown) - 1
    return f"""
<p>Sample grids over time{note}. Drag the slider or click a thumbnail; the last grid is shown first.</p>
<div class="samples">
  <div><input id="sample-slider" type="range" min="0" max="{last}" value="{last}">
  <span id="sample-step">step {shown[-1][0]}</span></div>
  <img id="sample-big" alt="sample grid" src="">
  <div class="strip">{''.join(imgs)}</div>
</div>"""


SAMPLES_JS = """
(function () {
  var thumbs = document.querySelectorAll('img.thumb'), big = document.getElementById('sample-big');
  var slider = document.getElementById('sample-slider'), label = document.getElementById('sample-step');
  if (!thumbs.length) return;
  function show(i) {
    big.src = thumbs[i].src; slider.value = i; label.textContent = 'step ' + thumbs[i].dataset.step;
    thumbs.forEach(function (t, j) { t.classList.toggle('current', j === i); });
  }
  slider.addEventListener('input', function () { show(parseInt(slider.value, 10)); });
  thumbs.forEach(function (t, j) { t.addEventListener('click', function () { show(j); }); });
  show(thumbs.length - 1);
})();
"""

CSS = """
body { font-family: system-ui, sans-serif; margin: 0 2em 3em; color: #222; }
table.facts { border-collapse: collapse; font-size: 14px; }
table.facts td { padding: 2px 12px 2px 0; vertical-align: top; } table.facts td:first-child { color: #666; }
.warn { background: #fff3cd; border: 1px solid #e0c060; padding: 6px 10px; }
.story { background: #fdecea; border-left: 4px solid #d62728; padding: 8px 12px; max-width: 70em; }
nav a { margin-right: 1em; } section { margin-top: 1.5em; }
img.thumb { height: 72px; margin: 2px; border: 2px solid transparent; cursor: pointer; image-rendering: pixelated; }
img.thumb.current { border-color: #d62728; } #sample-big { max-width: 520px; image-rendering: pixelated; }
.strip { overflow-x: auto; white-space: nowrap; }
"""


def _header_html(facts, warnings, refresh) -> str:
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in facts)
    warn = "".join(f'<p class="warn">{html.escape(w)}</p>' for w in warnings)
    watch = f"<p>Regenerated every {refresh} s by <code>gandist report --watch</code>; the page reloads itself.</p>" \
        if refresh else ""
    return f'<table class="facts" id="facts">{rows}</table>{warn}{watch}'


def render_html(title: str, facts, warnings, overview: list[Panel], rollbacks: list[Panel], samples: list,
                extra_stories: list[str], refresh: int | None = None) -> str:
    """The whole self-contained page."""
    from plotly.offline import get_plotlyjs

    nav = " ".join(f'<a href="#{p.id}">{html.escape(p.id)}</a>' for p in overview + rollbacks)
    body = [f"<h1>{html.escape(title)}</h1>", _header_html(facts, warnings, refresh),
            f"<nav>{nav} <a href=\"#samples\">samples</a></nav>"]
    for p in overview:
        body.append(f'<section id="{p.id}" class="panel" data-panel="{p.id}">{_figure_html(p)}</section>')
    body.append("<h2>Watchdog rollbacks</h2>")
    if not rollbacks:
        body.append("<p>No rollbacks: the watchdog never had to act.</p>")
    for p in rollbacks:
        body.append(f'<section id="{p.id}" class="panel rollback" data-panel="{p.id}"><h3>{html.escape(p.title)}</h3>'
                    f'<p class="story">{html.escape(p.note)}</p>{_figure_html(p)}</section>')
    body += [f'<pre class="story">{html.escape(s)}</pre>' for s in extra_stories]
    body.append(f'<section id="samples"><h2>Samples</h2>{_samples_html(samples)}</section>')
    meta = f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh else ""
    panels = json.dumps([p.id for p in overview + rollbacks])
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{meta}<title>{html.escape(title)}</title>'
            f'<style>{CSS}</style><script type="text/javascript">{get_plotlyjs()}</script></head><body>'
            f'{"".join(body)}<script>window.GANDIST_PANELS = {panels};{SAMPLES_JS}</script></body></html>')
