"""`bench publish`: a static leaderboard site that works from file:// and any static host, with no network at
view time — every table is in the HTML, the sorting script and styles are inline, plots are local files."""
from __future__ import annotations

import html
import json
import math
import shutil
from pathlib import Path

import pandas as pd

from bench_harness.results.leaderboard import display_table
from bench_harness.results.plots import method_colour

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1320px;color:#222;padding:0 1rem}
.scroll{overflow-x:auto;max-width:100%} #runs{font-size:.75rem} #runs td{white-space:nowrap}
.filters input,.filters select{font-size:.8rem;margin:0 .5rem .5rem 0}
.swatch{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin-right:.35em;vertical-align:-.05em}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;font-size:.85rem} dl.meta dt{color:#666}
table{border-collapse:collapse;width:100%;font-size:.85rem;margin:1rem 0}
th,td{border-bottom:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4;cursor:pointer;user-select:none;position:sticky;top:0}
th.sorted-asc::after{content:" \\25B2"} th.sorted-desc::after{content:" \\25BC"}
tr:hover td{background:#fafafa} .flags{color:#b00} img{max-width:100%;border:1px solid #eee}
.plots{display:grid;grid-template-columns:1fr;gap:1.5rem} .plots img{width:100%;max-width:1100px}
details pre{white-space:pre-wrap;font-size:.75rem;max-width:60rem} code{background:#f4f4f4;padding:0 .2rem}
"""

SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('th').forEach(function(th, col){
    th.addEventListener('click', function(){
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var asc = !th.classList.contains('sorted-asc');
      table.querySelectorAll('th').forEach(function(h){ h.classList.remove('sorted-asc','sorted-desc'); });
      th.classList.add(asc ? 'sorted-asc' : 'sorted-desc');
      function key(row){
        var cell = row.cells[col];
        var v = cell.getAttribute('data-sort');
        if (v === null) v = cell.textContent.trim();
        var n = parseFloat(v);
        return (v !== '' && !isNaN(n) && isFinite(v.replace(/^[+]/, ''))) ? n : v.toLowerCase();
      }
      rows.sort(function(a, b){
        var x = key(a), y = key(b);
        if (typeof x === typeof y) return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
        return (typeof x === 'number' ? -1 : 1) * (asc ? 1 : -1);
      });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
});
function applyRunFilters(){
  var text = (document.getElementById('run-filter') || {value: ''}).value.toLowerCase();
  var status = (document.getElementById('run-status') || {value: ''}).value;
  var table = document.getElementById('runs');
  if (!table) return;
  var shown = 0;
  Array.prototype.forEach.call(table.tBodies[0].rows, function(row){
    var ok = (!text || row.textContent.toLowerCase().indexOf(text) >= 0) &&
             (!status || row.getAttribute('data-status') === status);
    row.style.display = ok ? '' : 'none';
    if (ok) shown += 1;
  });
  var count = document.getElementById('run-count');
  if (count) count.textContent = shown + ' shown';
}
['run-filter', 'run-status'].forEach(function(id){
  var el = document.getElementById(id);
  if (el) el.addEventListener('input', applyRunFilters);
});
"""


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'><link rel='icon' href='data:,'>"
            f"<style>{STYLE}</style></head><body>{body}<script>{SCRIPT}</script></body></html>")


def _cell(value) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "<td></td>"
    text = html.escape(str(value))
    sort = ""
    if isinstance(value, str) and value[:1] in "+-0123456789" and (" ± " in value or value.endswith(" (chance)")):
        sort = f" data-sort='{html.escape(value.split(' ')[0])}'"  # "10.00 ± 0.40 (chance)" sorts as 10.00
    return f"<td{sort}>{text}</td>"


def _method_cell(method: str, among: list[str]) -> str:
    """A method's name with its swatch: the colour its plots use (``among``: the methods shown together)."""
    colour = method_colour(method, among)
    return (f"<td data-sort='{html.escape(method)}'><span class='swatch' style='background:{colour}'>"
            f"</span>{html.escape(method)}</td>")


def _table(df: pd.DataFrame, table_id: str) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    method_col = list(df.columns).index("method") if "method" in df.columns else -1
    among = sorted({str(m) for m in df["method"].dropna()}) if method_col >= 0 else []
    rows = "".join("<tr>" + "".join(_method_cell(v, among) if i == method_col else _cell(v)
                                    for i, v in enumerate(row))
                   + "</tr>" for row in df.itertuples(index=False))
    return (f"<div class='scroll'><table class='sortable' id='{table_id}'><thead><tr>{head}</tr></thead>"
            f"<tbody>{rows}</tbody></table></div>")


RUN_COLUMNS = ["run_id", "model", "dataset", "method", "target_sparsity", "sparsity_bin", "seed", "status", "top1",
               "achieved_sparsity", "prune_seconds", "train_seconds"]
PROVENANCE = ["config", "pruner_version", "pruner_distribution", "harness_version", "git_commit", "torch_version",
              "cuda_version", "device", "host", "started_at", "finished_at", "error"]


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and str(value) not in ("", "nan",
                                                                                                              "None")


def _runs_table(runs: pd.DataFrame, limit: int = 5000) -> str:
    runs = runs.sort_values(["model_label", "dataset", "method", "target_sparsity", "seed"]).head(limit)
    head = "".join(f"<th>{c}</th>" for c in RUN_COLUMNS + ["details"])
    rows = []
    among = sorted({str(m) for m in runs["method"].dropna()}) if "method" in runs else []
    for _, r in runs.iterrows():
        cells = []
        for c in RUN_COLUMNS:
            v = r.get(c)
            if c == "method":
                cells.append(_method_cell(str(v), among))
                continue
            if isinstance(v, float):
                v = "" if math.isnan(v) else f"{v:.4f}" if c not in ("target_sparsity", "sparsity_bin") else f"{v:.4g}"
            cells.append(f"<td>{html.escape(str(v))}</td>")
        info = {k: str(r.get(k)) for k in PROVENANCE if _present(r.get(k))}  # only what the run has
        try:
            info["config"] = json.loads(r.get("config") or "{}")
        except (TypeError, ValueError):
            pass
        detail = html.escape(json.dumps(info, indent=1, default=str))
        cells.append(f"<td><details><summary>provenance</summary><pre>{detail}</pre></details></td>")
        rows.append(f"<tr data-status='{html.escape(str(r.get('status')))}'>" + "".join(cells) + "</tr>")
    note = f"<p>First {limit} of {len(runs)} runs.</p>" if len(runs) >= limit else ""
    filters = ("<div class='filters'><input id='run-filter' type='search' placeholder='filter runs (method, model, "
               "seed, …)'><select id='run-status'><option value=''>any status</option><option value='ok'>ok</option>"
               "<option value='failed'>failed</option></select><span id='run-count'></span></div>")
    return (f"{note}{filters}<div class='scroll'><table class='sortable' id='runs'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _meta(name: str, runs: pd.DataFrame, card: dict) -> str:
    """The context of a suite: description, recipe, when, with what code, on which hardware."""
    def values(col):
        if col not in runs:
            return []
        return sorted({str(v) for v in runs[col] if _present(v)})

    when = ""
    if "finished_at" in runs and runs.finished_at.notna().any():
        when = f"{str(runs.finished_at.min())[:16]} – {str(runs.finished_at.max())[:16]} UTC"
    items = [("description", card.get("description") or "—"),
             ("recipe", json.dumps(card.get("recipe") or {}, sort_keys=True)),
             ("scoring", json.dumps(card.get("scoring") or {}, sort_keys=True)),
             ("run", when), ("git commit", ", ".join(c[:12] for c in values("git_commit")) or "—"),
             ("bench-harness", ", ".join(values("harness_version"))), ("torch", ", ".join(values("torch_version"))),
             ("hardware", ", ".join(values("device"))), ("hosts", ", ".join(values("host")[:8]))]
    return "<dl class='meta'>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>"
                                         for k, v in items) + "</dl>"


def suite_card(results_root: str | Path, name: str) -> dict:
    """The suite file saved next to its results by `bench run` (description, recipe, ...), or {}. Read with the
    suite files' bounded loader: a results folder is shared, and a planted file must not exhaust memory."""
    import yaml

    from bench_harness.safe_yaml import YamlInputError, load_yaml_file

    path = Path(results_root) / name / "suite.yaml"
    try:
        data = load_yaml_file(path)
    except (OSError, yaml.YAMLError, YamlInputError):
        return {}
    return data if isinstance(data, dict) else {}


def publish_suite(name: str, board: pd.DataFrame, runs: pd.DataFrame, plot_files: list[Path], out: Path,
                  card: dict | None = None) -> Path:
    site = out / name
    site.mkdir(parents=True, exist_ok=True)
    board.to_parquet(site / "leaderboard.parquet", index=False)
    runs.drop(columns=[c for c in runs.columns if c.startswith("_")]).to_parquet(site / "runs.parquet", index=False)
    plots_dir = site / "plots"
    plots_dir.mkdir(exist_ok=True)
    imgs = []
    for f in plot_files:
        shutil.copy2(f, plots_dir / f.name)
        if f.suffix == ".svg":
            png, pdf = f.with_suffix(".png").name, f.with_suffix(".pdf").name
            imgs.append(f"<figure><img src='plots/{html.escape(f.name)}' alt='{html.escape(f.stem)}'>"
                        f"<figcaption>{html.escape(f.stem)} (<a href='plots/{html.escape(f.name)}'>SVG</a>, "
                        f"<a href='plots/{html.escape(png)}'>PNG</a>, <a href='plots/{html.escape(pdf)}'>PDF</a>)"
                        f"</figcaption></figure>")
    counts = runs.status.value_counts().to_dict() if len(runs) else {}
    body = (f"<p><a href='../index.html'>all suites</a></p><h1>Suite {html.escape(name)}</h1>"
            + _meta(name, runs, card or {}) +
            f"<p>{len(runs)} runs: " + ", ".join(f"{v} {html.escape(str(k))}" for k, v in counts.items()) + ". "
            "Top-1 in percent, mean ± 95 % confidence interval over seeds; “vs” columns: paired per-seed "
            "differences against the controls at the same sparsity. Click a column to sort.</p>"
            "<p>Download: <a href='leaderboard.parquet'>leaderboard.parquet</a> · "
            "<a href='runs.parquet'>runs.parquet</a></p>"
            "<h2>Leaderboard</h2>" + _table(display_table(board), "leaderboard") +
            "<h2>Plots</h2><div class='plots'>" + "".join(imgs) + "</div>"
            "<h2>Runs</h2>" + _runs_table(runs))
    (site / "index.html").write_text(_page(f"{name} — bench-harness leaderboard", body))
    return site / "index.html"


def publish_index(out: Path, suites: dict[str, tuple[pd.DataFrame, pd.DataFrame]], cross: pd.DataFrame | None,
                  cards: dict[str, dict] | None = None) -> Path:
    items = []
    for name, (board, runs) in sorted(suites.items()):
        card = (cards or {}).get(name, {})
        models = ", ".join(sorted(set(board.model))) if len(board) else ""
        datasets = ", ".join(sorted(set(board.dataset))) if len(board) else ""
        finished = str(runs.finished_at.max())[:10] if len(runs) and "finished_at" in runs else ""
        items.append(f"<tr><td><a href='{html.escape(name)}/index.html'>{html.escape(name)}</a></td>"
                     f"<td>{html.escape(str(card.get('description') or ''))}</td><td>{html.escape(models)}</td>"
                     f"<td>{html.escape(datasets)}</td>"
                     f"<td>{len(runs)}</td><td>{int((runs.status == 'ok').sum()) if len(runs) else 0}</td>"
                     f"<td>{board.method.nunique() if len(board) else 0}</td><td>{finished}</td></tr>")
    body = ("<h1>bench-harness leaderboards</h1><div class='scroll'><table class='sortable' id='suites'><thead><tr>"
            "<th>suite</th><th>description</th><th>models</th><th>data sets</th><th>runs</th><th>ok</th>"
            "<th>methods</th><th>last run</th></tr></thead><tbody>" + "".join(items) + "</tbody></table></div>")
    if cross is not None and len(cross):
        cross.to_parquet(out / "leaderboard.parquet", index=False)
        body += ("<h2>Across suites</h2><p><a href='leaderboard.parquet'>leaderboard.parquet</a></p>"
                 + _table(display_table(cross), "cross"))
    (out / "index.html").write_text(_page("bench-harness leaderboards", body))
    return out / "index.html"
