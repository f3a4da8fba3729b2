"""``rlkit report RUN_DIR``: one self-contained HTML page of a run.

The page holds the run's summary, its curves (inline SVG, :mod:`rlkit.logging.report_svg`), a
table of sample traces (``RUN/traces``, searchable and sortable by the inlined script of
:mod:`rlkit.logging.report_assets`), its checkpoints and its resolved config. Nothing is fetched
when the page is opened: no network, no server, no file beside it.
"""

from __future__ import annotations

import json
import os
import time
from html import escape
from pathlib import Path
from typing import Any

from rlkit.ckpt.report import checkpoint_rows
from rlkit.errors import UserError
from rlkit.logging.metrics import read_metrics
from rlkit.logging.report_assets import CSS, JS
from rlkit.logging.report_svg import panels
from rlkit.logging.traces import read_traces, require_run_dir

# Numeric columns of the sample table: (trace column, header, data attribute used for sorting).
_NUMERIC = (
    ("step", "step", "step"),
    ("reward", "reward", "reward"),
    ("advantage", "advantage", "advantage"),
    ("response_length", "length", "length"),
    ("logprob_gap_mean", "log-prob gap", "gap"),
)


def write_report(run_dir: Path, out: Path | None = None, *, max_samples: int = 2000) -> Path:
    """Write the report of ``run_dir`` (default ``RUN_DIR/report.html``) atomically; returns its path."""
    require_run_dir(run_dir, "report")
    page = render(run_dir, max_samples=max_samples)
    out = out or run_dir / "report.html"
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out


def render(run_dir: Path, *, max_samples: int = 2000) -> str:
    """The HTML of the report of ``run_dir``."""
    rows = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    traces = read_traces(run_dir, max_rows=max_samples)
    config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    curves = panels(rows)
    body = [
        f"<h1>{escape(run_dir.name)}</h1>",
        _summary(run_dir, rows, config),
        "<h2>Curves</h2>",
        f'<div class="panels">{"".join(curves)}</div>'
        if curves
        else '<p class="muted">no metrics logged yet</p>',
        "<h2>Samples</h2>",
        _samples(traces),
        "<h2>Checkpoints</h2>",
        _checkpoints(run_dir),
        "<h2>Config</h2>",
        f'<pre class="config">{escape(config)}</pre>' if config else '<p class="muted">no config.yaml</p>',
        f'<p class="muted">written by rlkit report at {time.strftime("%Y-%m-%d %H:%M:%S")}</p>',
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>rlkit report: {escape(run_dir.name)}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{CSS}</style></head><body>{''.join(body)}<script>{JS}</script></body></html>\n"
    )


def _summary(run_dir: Path, rows: list[dict[str, Any]], config: str) -> str:
    """The table at the top: recipe, model, steps done, last reward, where the run is."""
    recipe = model = "?"
    total: Any = "?"
    try:
        import yaml

        cfg = yaml.safe_load(config) or {}
        recipe = cfg.get("recipe", "?")
        model = (cfg.get("model") or {}).get("path", "?")
        total = (cfg.get("trainer") or {}).get("total_steps", "?")
    except Exception:  # a damaged config.yaml still gets a report (its text is shown below)
        pass
    steps = [r["step"] for r in rows if isinstance(r.get("step"), int)]
    last: dict[str, Any] = next((r for r in reversed(rows) if "reward/mean" in r), {})
    val: dict[str, Any] = next((r for r in reversed(rows) if "val/reward/mean" in r), {})
    items = [
        ("recipe", recipe),
        ("model", model),
        ("steps", f"{max(steps) if steps else 0} of {total}"),
        ("last reward/mean", _num(last.get("reward/mean"))),
        ("last val/reward/mean", _num(val.get("val/reward/mean"))),
        ("folder", str(run_dir.resolve())),
    ]
    cells = "".join(f"<tr><td>{escape(k)}</td><td>{escape(str(v))}</td></tr>" for k, v in items)
    return f'<table class="summary">{cells}</table>'


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "-"


def _samples(traces: list[dict[str, Any]]) -> str:
    """The controls and the sample table (one row per trace row)."""
    if not traces:
        return '<p class="muted">no sample traces (trainer.trace_every=0, or a run from before traces)</p>'
    steps = sorted({t["step"] for t in traces})
    options = "".join(f'<option value="{s}">step {s}</option>' for s in steps)
    controls = (
        '<div class="controls"><input type="search" id="q" placeholder="search prompts, responses, answers">'
        f'<select id="step"><option value="">all steps</option>{options}</select>'
        '<label><input type="checkbox" id="truncated"> truncated only</label>'
        '<button id="best" type="button">best reward</button><button id="worst" type="button">worst reward</button>'
        '<span id="count"></span></div>'
    )
    head = "".join(f'<th data-sort="{attr}">{label}</th>' for _, label, attr in _NUMERIC)
    head += "<th>finish</th><th>source</th><th>prompt</th><th>response</th><th>answer</th>"
    body = "".join(_sample_row(t) for t in traces)
    return f'{controls}<table class="data" id="samples"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _sample_row(t: dict[str, Any]) -> str:
    data = " ".join(f'data-{attr}="{_attr_num(t.get(col))}"' for col, _, attr in _NUMERIC)
    finish = str(t.get("finish_reason") or "")
    cells = "".join(f'<td class="num">{_cell_num(t.get(col))}</td>' for col, _, _ in _NUMERIC)
    response = str(t.get("response") or "")
    if t.get("trajectory"):
        response += "\n\n[trajectory]\n" + _pretty_json(str(t["trajectory"]))
    texts = (str(t.get("prompt") or ""), response, str(t.get("ground_truth") or ""))
    cells += f'<td class="finish">{escape(finish)}</td><td>{escape(str(t.get("data_source") or ""))}</td>'
    cells += "".join(f'<td class="text"><pre>{escape(text)}</pre></td>' for text in texts)
    return f'<tr class="{escape(finish)}" data-finish="{escape(finish)}" {data}>{cells}</tr>'


def _attr_num(value: Any) -> str:
    return repr(float(value)) if isinstance(value, (int, float)) else ""


def _cell_num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}" if isinstance(value, float) else escape(str(value))


def _pretty_json(text: str) -> str:
    try:
        return json.dumps(json.loads(text), indent=1, ensure_ascii=False)
    except ValueError:
        return text


def _checkpoints(run_dir: Path) -> str:
    """The run's checkpoints as ``rlkit ckpt ls`` lists them."""
    try:
        _, rows, columns = checkpoint_rows(run_dir)
    except UserError:
        rows, columns = [], []
    if not rows:
        return '<p class="muted">no checkpoints</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in ("step", "status", "size", "saved", "path"))
    head += "".join(f"<th>{escape(label)}</th>" for _, label in columns)
    body = []
    for row in rows:
        info = row.info
        status = (
            info.status + (" (latest)" if row.latest else "") + (f": {info.problem}" if info.problem else "")
        )
        saved = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.created))
        cells = [str(info.step), status, f"{info.size_bytes / 2**20:.1f} MiB", saved, str(info.path)]
        cells += [_num(row.metrics.get(key)) for key, _ in columns]
        body.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    return f'<table class="data" id="checkpoints"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
