"""`bench publish`: a static leaderboard site that works from file:// and any static host, with no network at
view time — every table is in the HTML, the sorting script and styles are inline, plots are local files."""
from __future__ import annotations

import html
import json
import math
import shutil
from pathlib import Path

import pandas as pd

from bench_harness.leaderboard import display_table

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
table{border-collapse:collapse;width:100%;font-size:.85rem;margin:1rem 0}
th,td{border-bottom:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4;cursor:pointer;user-select:none;position:sticky;top:0}
th.sorted-asc::after{content:" \\25B2"} th.sorted-desc::after{content:" \\25BC"}
tr:hover td{background:#fafafa} .flags{color:#b00} img{max-width:100%;border:1px solid #eee}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:1rem}
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
    if isinstance(value, str) and value[:1] in "+-0123456789" and " ± " in value:
        sort = f" data-sort='{html.escape(value.split(' ± ')[0])}'"
    return f"<td{sort}>{text}</td>"


def _table(df: pd.DataFrame, table_id: str) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in df.itertuples(index=False))
    return f"<table class='sortable' id='{table_id}'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


RUN_COLUMNS = ["run_id", "model", "dataset", "method", "target_sparsity", "seed", "status", "top1", "top5",
               "achieved_sparsity", "prune_seconds", "train_seconds"]
PROVENANCE = ["config", "pruner_version", "pruner_distribution", "harness_version", "git_commit", "torch_version",
              "cuda_version", "device", "host", "started_at", "finished_at", "error"]


def _runs_table(runs: pd.DataFrame, limit: int = 5000) -> str:
    runs = runs.sort_values(["model_label", "dataset", "target_sparsity", "method", "seed"]).head(limit)
    head = "".join(f"<th>{c}</th>" for c in RUN_COLUMNS + ["details"])
    rows = []
    for _, r in runs.iterrows():
        cells = []
        for c in RUN_COLUMNS:
            v = r.get(c)
            if isinstance(v, float):
                v = "" if math.isnan(v) else f"{v:.4f}" if c not in ("target_sparsity",) else f"{v:.4g}"
            cells.append(f"<td>{html.escape(str(v))}</td>")
        info = {k: (str(r.get(k)) if r.get(k) is not None else None) for k in PROVENANCE}
        try:
            info["config"] = json.loads(r.get("config") or "{}")
        except (TypeError, ValueError):
            pass
        detail = html.escape(json.dumps(info, indent=1, default=str))
        cells.append(f"<td><details><summary>provenance</summary><pre>{detail}</pre></details></td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    note = f"<p>First {limit} of {len(runs)} runs.</p>" if len(runs) >= limit else ""
    return (f"{note}<table class='sortable' id='runs'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def publish_suite(name: str, board: pd.DataFrame, runs: pd.DataFrame, plot_files: list[Path], out: Path) -> Path:
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
            png = f.with_suffix(".png").name
            imgs.append(f"<figure><a href='plots/{html.escape(f.name)}'><img src='plots/{html.escape(png)}' "
                        f"alt='{html.escape(f.stem)}'></a><figcaption>{html.escape(f.stem)} "
                        f"(<a href='plots/{html.escape(f.name)}'>SVG</a>, <a href='plots/{html.escape(png)}'>PNG</a>)"
                        f"</figcaption></figure>")
    counts = runs.status.value_counts().to_dict() if len(runs) else {}
    body = (f"<p><a href='../index.html'>all suites</a></p><h1>Suite {html.escape(name)}</h1>"
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


def publish_index(out: Path, suites: dict[str, tuple[pd.DataFrame, pd.DataFrame]], cross: pd.DataFrame | None) -> Path:
    items = []
    for name, (board, runs) in sorted(suites.items()):
        best = ""
        items.append(f"<tr><td><a href='{html.escape(name)}/index.html'>{html.escape(name)}</a></td>"
                     f"<td>{len(runs)}</td><td>{int((runs.status == 'ok').sum()) if len(runs) else 0}</td>"
                     f"<td>{board.method.nunique() if len(board) else 0}</td>{best}</tr>")
    body = ("<h1>bench-harness leaderboards</h1><table class='sortable' id='suites'><thead><tr><th>suite</th>"
            "<th>runs</th><th>ok</th><th>methods</th></tr></thead><tbody>" + "".join(items) + "</tbody></table>")
    if cross is not None and len(cross):
        cross.to_parquet(out / "leaderboard.parquet", index=False)
        body += ("<h2>Across suites</h2><p><a href='leaderboard.parquet'>leaderboard.parquet</a></p>"
                 + _table(display_table(cross), "cross"))
    (out / "index.html").write_text(_page("bench-harness leaderboards", body))
    return out / "index.html"
