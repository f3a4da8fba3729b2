"""The CSS and JavaScript inlined into every ``rlkit report`` page (no file or network fetched).

The script filters and sorts the sample table (search box, step, "truncated only", best / worst
reward, a click on a numeric column's header), reads the same settings from the page's address
(``report.html#q=TEXT&step=N&truncated=1&sort=reward&dir=desc``) so a view can be linked, and marks
each drawn curve ``data-drawn="1"`` and the page ``data-ready="1"`` once it has run.
"""

from __future__ import annotations

CSS = """
body { font-family: system-ui, -apple-system, "DejaVu Sans", sans-serif; margin: 0 1.5em 2em; color: #222; background: #fff; }
h1 { font-size: 1.5em; margin: .6em 0 .2em; } h2 { font-size: 1.2em; margin-top: 1.4em; border-bottom: 1px solid #ddd; }
.summary td { padding: 1px 1.2em 1px 0; } .summary td:first-child { color: #666; }
.panels { display: flex; flex-wrap: wrap; gap: 10px; }
figure.panel { margin: 0; border: 1px solid #eee; padding: 4px; }
figcaption { font-size: 11px; max-width: 420px; }
svg.curve .frame { fill: #fafafa; stroke: #ccc; } svg.curve .line { fill: none; stroke-width: 1.8; }
svg.curve .tick { font-size: 10px; fill: #555; } svg.curve .panel-title { font-size: 13px; font-weight: 600; fill: #222; }
.controls { margin: .5em 0; display: flex; gap: .8em; align-items: center; flex-wrap: wrap; }
.controls input[type=search] { width: 22em; padding: 3px; }
table.data { border-collapse: collapse; font-size: 12px; width: 100%; }
table.data th, table.data td { border: 1px solid #ddd; padding: 3px 5px; vertical-align: top; text-align: left; }
table.data th { background: #f3f3f3; position: sticky; top: 0; }
table.data th[data-sort] { cursor: pointer; } table.data th[data-sort]:hover { background: #e6e6e6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.text pre { margin: 0; white-space: pre-wrap; word-break: break-word; max-height: 12em; overflow: auto; font-size: 11px; }
tr.length td.finish { color: #b30000; font-weight: 600; }
pre.config { background: #f7f7f7; padding: .6em; font-size: 12px; max-height: 40em; overflow: auto; }
.muted { color: #777; }
"""

JS = r"""
(function () {
  "use strict";
  var table = document.getElementById("samples");
  var state = { q: "", step: "", truncated: false, sort: "", dir: "desc" };
  function rows() { return table ? Array.prototype.slice.call(table.tBodies[0].rows) : []; }
  function apply() {
    if (!table) { return; }
    var q = state.q.toLowerCase(), shown = 0, all = rows();
    if (state.sort) {
      var sign = state.dir === "asc" ? 1 : -1, key = state.sort;
      all.sort(function (a, b) {
        var x = parseFloat(a.dataset[key]), y = parseFloat(b.dataset[key]);
        if (isNaN(x)) { x = -Infinity; } if (isNaN(y)) { y = -Infinity; }
        return x === y ? (parseInt(a.dataset.order, 10) - parseInt(b.dataset.order, 10)) : sign * (x - y);
      });
      all.forEach(function (r) { table.tBodies[0].appendChild(r); });
    }
    all.forEach(function (r) {
      var ok = (!q || r.textContent.toLowerCase().indexOf(q) >= 0)
        && (!state.step || parseFloat(r.dataset.step) === parseFloat(state.step))
        && (!state.truncated || r.dataset.finish === "length");
      r.hidden = !ok;
      if (ok) { shown += 1; }
    });
    document.getElementById("count").textContent = shown + " of " + all.length + " samples";
    table.dataset.shown = String(shown);
  }
  function fromHash() {
    var h = window.location.hash.replace(/^#/, "");
    h.split("&").forEach(function (part) {
      var kv = part.split("="), k = decodeURIComponent(kv[0] || ""), v = decodeURIComponent((kv[1] || "").replace(/\+/g, " "));
      if (k === "q") { state.q = v; } else if (k === "step") { state.step = v; }
      else if (k === "truncated") { state.truncated = v === "1"; }
      else if (k === "sort") { state.sort = v; } else if (k === "dir") { state.dir = v === "asc" ? "asc" : "desc"; }
    });
    var q = document.getElementById("q"), st = document.getElementById("step"), tr = document.getElementById("truncated");
    if (q) { q.value = state.q; } if (st) { st.value = state.step; } if (tr) { tr.checked = state.truncated; }
  }
  function wire() {
    if (!table) { return; }
    document.getElementById("q").addEventListener("input", function (e) { state.q = e.target.value; apply(); });
    document.getElementById("step").addEventListener("change", function (e) { state.step = e.target.value; apply(); });
    document.getElementById("truncated").addEventListener("change", function (e) { state.truncated = e.target.checked; apply(); });
    document.getElementById("best").addEventListener("click", function () { state.sort = "reward"; state.dir = "desc"; apply(); });
    document.getElementById("worst").addEventListener("click", function () { state.sort = "reward"; state.dir = "asc"; apply(); });
    Array.prototype.forEach.call(table.tHead.querySelectorAll("th[data-sort]"), function (th) {
      th.addEventListener("click", function () {
        var key = th.dataset.sort;
        state.dir = state.sort === key && state.dir === "desc" ? "asc" : "desc";
        state.sort = key; apply();
      });
    });
  }
  function markCurves() {
    Array.prototype.forEach.call(document.querySelectorAll("svg.curve"), function (svg) {
      var lines = svg.querySelectorAll("polyline"), drawn = lines.length > 0;
      Array.prototype.forEach.call(lines, function (l) {
        var box = l.getBBox();
        if (!(box.width > 0 || box.height > 0 || l.points.numberOfItems === 1)) { drawn = false; }
      });
      svg.dataset.drawn = drawn ? "1" : "0";
    });
  }
  rows().forEach(function (r, i) { r.dataset.order = String(i); });
  fromHash(); wire(); apply(); markCurves();
  window.addEventListener("hashchange", function () { fromHash(); apply(); });
  document.body.dataset.ready = "1";
})();
"""
