"""Inline SVG line charts for ``rlkit report``: no plotting library, no JavaScript, no network.

Each panel is one ``<svg class="curve">`` with a polyline per series, the y range and step range as
axis labels, a legend below it, and a ``<title>`` tooltip on every point (step and value).
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

WIDTH, HEIGHT = 420, 220
_LEFT, _RIGHT, _TOP, _BOTTOM = 58, 12, 28, 34
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf")

# Panels of the report, in order: (title, metric names); a name ending in "/" takes every metric
# with that prefix. A panel with none of its metrics logged is left out.
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("reward", ("reward/mean", "val/reward/mean", "reward/max", "reward/min")),
    ("response length", ("response_length/mean", "response_length/max", "val/response_length/mean")),
    ("KL", ("actor/ppo_kl", "actor/kl_loss", "actor/reward_kl_penalty")),
    ("entropy", ("actor/entropy",)),
    ("gradient norm", ("actor/grad_norm", "critic/grad_norm")),
    ("policy loss", ("actor/pg_loss",)),
    ("value loss", ("critic/vf_loss",)),
    ("SFT loss", ("sft/loss", "val/loss")),
    ("rollout vs trainer log-prob gap", ("rollout/logprob_gap_abs",)),
    ("timings by stage (s)", ("timing/",)),
    ("throughput (tokens/s)", ("throughput/tokens_per_s", "throughput/tokens_per_s_per_device")),
)


def series_of(rows: list[dict[str, Any]], names: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` for the panel's metrics that the rows hold as finite numbers."""
    wanted: list[str] = []
    for name in names:
        if name.endswith("/"):
            found = sorted({k for r in rows for k in r if k.startswith(name)})
            wanted += [k for k in found if k not in wanted]
        elif name not in wanted:
            wanted.append(name)
    out: dict[str, list[tuple[int, float]]] = {}
    for name in wanted:
        points = [(int(r["step"]), float(r[name])) for r in rows if _finite(r.get(name))]
        if points:
            out[name] = points
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value: float) -> str:
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-2):
        return f"{value:.3g}"
    return f"{value:.3f}".rstrip("0").rstrip(".") if value % 1 else f"{value:.0f}"


def line_chart(title: str, series: dict[str, list[tuple[int, float]]]) -> str:
    """One panel: an ``<svg>`` drawing every series against ``step``."""
    steps = [s for points in series.values() for s, _ in points]
    values = [v for points in series.values() for _, v in points]
    x0, x1 = min(steps), max(steps)
    y0, y1 = min(values), max(values)
    if y0 == y1:
        y0, y1 = y0 - 0.5, y1 + 0.5
    x1 = x1 if x1 > x0 else x0 + 1
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM

    def xy(step: int, value: float) -> tuple[float, float]:
        return (_LEFT + (step - x0) / (x1 - x0) * plot_w, _TOP + (y1 - value) / (y1 - y0) * plot_h)

    parts = [
        f'<svg class="curve" data-title="{escape(title)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(title)}">',
        f'<text x="{_LEFT}" y="16" class="panel-title">{escape(title)}</text>',
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" class="frame"/>',
        f'<text x="{_LEFT - 4}" y="{_TOP + 4}" class="tick" text-anchor="end">{_fmt(y1)}</text>',
        f'<text x="{_LEFT - 4}" y="{_TOP + plot_h}" class="tick" text-anchor="end">{_fmt(y0)}</text>',
        f'<text x="{_LEFT}" y="{HEIGHT - 18}" class="tick">{x0}</text>',
        f'<text x="{WIDTH - _RIGHT}" y="{HEIGHT - 18}" class="tick" text-anchor="end">{x1}</text>',
        f'<text x="{_LEFT + plot_w / 2}" y="{HEIGHT - 18}" class="tick" text-anchor="middle">step</text>',
    ]
    for i, (name, points) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        coords = [xy(s, v) for s, v in points]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        parts.append(
            f'<polyline points="{path}" stroke="{color}" class="line" data-metric="{escape(name)}"/>'
        )
        if len(points) <= 60:
            for (s, v), (x, y) in zip(points, coords, strict=True):
                parts.append(
                    f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}">'
                    f"<title>{escape(name)} step {s}: {v:.6g}</title></circle>"
                )
    parts.append("</svg>")
    legend = "".join(
        f'<span style="color:{COLORS[i % len(COLORS)]}">&#9632; {escape(name)}</span> '
        for i, name in enumerate(series)
    )
    return f'<figure class="panel">{"".join(parts)}<figcaption>{legend}</figcaption></figure>'


def panels(rows: list[dict[str, Any]]) -> list[str]:
    """Every panel of :data:`PANELS` that has data, as HTML."""
    out = []
    for title, names in PANELS:
        series = series_of(rows, names)
        if series:
            out.append(line_chart(title, series))
    return out
