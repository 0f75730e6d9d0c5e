"""The `bench` command line."""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from bench_harness.errors import BenchError
from bench_harness.paths import absolute_path


def _runs(n: int) -> str:
    """"1 run", "7 runs"."""
    return f"{n} run{'' if n == 1 else 's'}"


def _registry():
    from bench_harness.contract.plugins import get_registry

    return get_registry()


def _light_registry(args):
    """The plugin registry read from its cache (no plugin imported) when that is valid; a note on stderr with
    ``-v`` when the plugins had to be imported."""
    from bench_harness.contract.registry import light_registry

    verbose = getattr(args, "notes", False) or getattr(args, "verbose", False)
    return light_registry(note=(lambda msg: print(f"note: {msg}", file=sys.stderr)) if verbose else None)


def cmd_plugins(args) -> int:
    reg = _light_registry(args)
    hidden = 0
    for info in sorted(reg.plugins.values(), key=lambda i: (i.distribution != "bench-harness", i.name)):
        shown = {}
        for kind, names in info.registers.items():
            keep = [n for n in names if args.all or not getattr(reg.get(kind, n), "test_only", False)]
            hidden += len(names) - len(keep)
            if keep:
                shown[kind] = keep
        if info.registers and not shown and not info.error:
            continue  # a plugin of test-only pruners (a test fixture that is installed)
        status = f"  ERROR: {info.error}" if info.error else ""
        print(f"{info.name}  ({info.distribution} {info.version}; {info.module}){status}")
        for kind, names in sorted(shown.items()):
            print(f"    {kind}s: {', '.join(sorted(names))}")
            if args.verbose and kind == "pruner":
                for name in sorted(names):
                    cls = reg.get("pruner", name)
                    print(f"      {name} v{cls.version}: {cls.description} [regime={cls.regime.value}, "
                          f"sparsity={cls.sparsity_kind.value}, "
                          f"granularity={cls.granularity.value}, needs data={cls.requires.data}, "
                          f"labels={cls.requires.labels}, pretrained={cls.requires.pretrained}]")
                    for pname, (default, help_text) in cls.param_help().items():
                        print(f"        {pname} = {default!r}: {help_text}")
    if hidden:
        print(f"({hidden} test-only {'entry' if hidden == 1 else 'entries'} not listed: bench plugins --all)")
    return 0


def cmd_check_plugin(args) -> int:
    from bench_harness.conformance import check_pruner_in_child, kit_params
    from bench_harness.conformance.output import header_lines, progress_printer, report_lines

    cls = _registry().get("pruner", args.name)
    from bench_harness.contract import registry as lazy

    problem = lazy.stages_problem(lazy.light_registry().get("pruner", args.name), cls)
    if problem:
        raise BenchError(problem)
    raw = json.loads(args.params) if args.params else {}
    kit_params(cls, raw)  # bad parameters: one line here, before the child process starts
    print("\n".join(header_lines(cls, raw)), file=sys.stderr, flush=True)
    report = check_pruner_in_child(args.name, raw, timeout_s=args.timeout or None,
                                   listener=progress_printer(sys.stderr))
    print("\n".join(report_lines(report, args.verbose)))
    return 1 if report.failed or report.stopped else 0


def cmd_validate(args) -> int:
    from bench_harness.config.suite import load_suite

    if args.schema:
        from bench_harness.config.schema import suite_json_schema

        print(json.dumps(suite_json_schema(), indent=1))
        return 0
    if not args.suite:
        raise BenchError("bench validate SUITE (or --schema to print the suite file's JSON Schema)")
    suite = load_suite(args.suite, _light_registry(args))
    if suite.raw.get("slurm"):
        from bench_harness.config.slurm import slurm_plan

        slurm_plan(suite)  # the slurm: section too (checked here; the cluster is asked only at submission)
    print(f"{args.suite}: suite {suite.name!r} is valid: {_runs(len(suite.runs))}")
    return 0


def _load_suite(args, light: bool = False):
    """The suite file ``args.suite`` with the command line's overrides (``--results-root``, ``--download``).
    ``light``: validated against the plugin registry's cache (for commands that run no model: its runs' Params are
    rebuilt from the cache, their ids are the same)."""
    from bench_harness.config.suite import load_suite

    suite = load_suite(args.suite, _light_registry(args) if light else None)
    changes = {}
    if getattr(args, "results_root", None):
        changes["results_root"] = args.results_root
    if getattr(args, "download", False):
        changes["download"] = True
    return suite.with_settings(**changes) if changes else suite


def _compact_after_run(suite) -> None:
    """Fold the run files when there are many, or when a compacted run was redone (by this command or an earlier
    one that was killed): the results folder then holds one row per run. Never fails a finished sweep."""
    from bench_harness.results.compaction import maybe_compact

    root = suite.results_root
    if not (Path(root) / suite.name / "runs").is_dir():
        return
    try:
        maybe_compact(root, suite.name)
    except Exception as exc:  # noqa: BLE001 - the rows are stored; compaction waits for the next command
        print(f"note: {suite.name}: run files not compacted ({type(exc).__name__}: "
              f"{getattr(exc, 'strerror', None) or exc})", file=sys.stderr)


def cmd_run(args) -> int:
    # a dry run and a SLURM submission run no model here: validated from the plugin registry's cache (the jobs
    # validate their runs' parameters again with the plugins, RunSpec.__setstate__)
    suite = _load_suite(args, light=args.dry_run or args.executor == "slurm")
    if args.dry_run:
        from bench_harness.results.store import finished_run_ids

        finished = set() if args.force else finished_run_ids(suite.results_root, suite.name)
        done = [r for r in suite.runs if r.run_id in finished]
        todo = [r for r in suite.runs if r.run_id not in finished]
        lines = [f"[{'done' if run.run_id in finished else 'todo'}] {run.describe()}" for run in suite.runs]
        sys.stdout.write("\n".join(lines) + ("\n" if lines else ""))
        print(f"{len(suite.runs)} runs: {len(done)} finished, {len(todo)} to run")
        return 0
    if args.executor == "slurm":
        return _run_slurm(suite, args)
    if args.executor != "local":
        raise BenchError(f"unknown executor {args.executor!r}: use 'local' or 'slurm'")
    from bench_harness.running.executor import pending_runs, run_local

    todo, done = pending_runs(suite, args.force)
    print(f"suite {suite.name}: {len(suite.runs)} runs, {len(done)} already finished, {len(todo)} to run "
          f"-> {suite.results_dir}", file=sys.stderr)
    t0 = time.perf_counter()
    report = run_local(suite, force=args.force, workers=args.workers, progress=not args.no_progress,
                       isolate=args.isolate)
    elapsed = time.perf_counter() - t0
    _compact_after_run(suite)
    if report.interrupted:
        print(f"\ninterrupted: {len(report.ok) + len(report.failed)} runs of this sweep are saved; run the same "
              f"command again to continue with the rest", file=sys.stderr)
        return 130
    print(f"finished in {elapsed:.1f} s: {len(report.ok)} ok, {len(report.failed)} failed, "
          f"{len(report.skipped)} skipped (already done)"
          + (f", {len(report.busy)} left to another runner that holds them" if report.busy else ""), file=sys.stderr)
    print_results(suite.name, suite.results_root)
    return 1 if report.failed else 0


def _submit(suite, runs, what: str) -> None:
    from bench_harness.slurm.executor import submit_runs

    if not runs:
        print(f"suite {suite.name}: nothing to submit ({what})", file=sys.stderr)
        return
    sub = submit_runs(suite, runs)
    arrays = ", ".join(f"{job} ({n} tasks)" for job, n in sub.arrays)
    stages = f"; stage jobs {', '.join(sub.stage_jobs)}" if sub.stage_jobs else ""
    print(f"submitted {_runs(sub.runs)} of suite {suite.name} in {len(sub.arrays)} array(s): {arrays}{stages} "
          f"[{sub.seconds:.1f} s]", file=sys.stderr)  # runs left out by a submit limit: submit_runs says which


def _run_slurm(suite, args) -> int:
    from bench_harness.slurm.executor import reconcile, wait

    states = reconcile(suite)
    wanted = {"missing", "failed"} | ({"done"} if args.force else set())
    runs = [s.run for s in states if s.state in wanted]
    _submit(suite, runs, "every run is finished or queued")
    if args.wait:
        states = wait(suite, progress=not args.no_progress)
        failed = [s for s in states if s.state == "failed"]
        print_results(suite.name, suite.results_root)
        return 1 if failed else 0
    return 0


def cmd_status(args) -> int:
    from collections import Counter

    from bench_harness.slurm.executor import reconcile

    suite = _load_suite(args, light=True)
    states = reconcile(suite)
    counts = Counter(s.state for s in states)
    print(f"suite {suite.name}: {len(states)} runs: " + ", ".join(
        f"{counts[k]} {k}" for k in ("done", "running", "pending", "failed", "missing") if counts[k]))
    for s in states:
        if s.state == "failed":
            from bench_harness.paths import shard_path
            from bench_harness.results.store import read_shard

            shard = shard_path(s.run.results_root, s.run.suite, s.run.run_id)
            error = read_shard(shard).get("error") if shard.exists() else s.detail
            print(f"\nFAILED {s.run.describe()}\n  job {s.job_id or '-'}: {error}")
            if s.log:
                print("  " + s.log.replace("\n", "\n  "))
    return 0


def cmd_resubmit(args) -> int:
    from bench_harness.slurm.executor import reconcile

    if not (args.failed or args.missing):
        raise BenchError("say what to resubmit: --failed, --missing or both")
    suite = _load_suite(args, light=True)
    wanted = ({"failed"} if args.failed else set()) | ({"missing"} if args.missing else set())
    runs = [s.run for s in reconcile(suite) if s.state in wanted]
    _submit(suite, runs, f"no {' or '.join(sorted(wanted))} runs")
    return 0


def cmd_cancel(args) -> int:
    from bench_harness.slurm.executor import cancel_suite

    suite = _load_suite(args, light=True)
    jobs = cancel_suite(suite)
    print(f"cancelled {len(jobs)} jobs of suite {suite.name}" + (f": {', '.join(jobs)}" if jobs else ""))
    return 0


def print_results(suite_name: str, results_root: str, where: list[str] | None = None,
                  failed_only: bool = False) -> int:
    """Print a suite's runs (one line per run, failures with their error); returns the number printed."""
    import pandas as pd

    from bench_harness.results.store import load_results

    df = load_results(results_root, [suite_name])
    if df.empty:
        print(f"no results for suite {suite_name!r} under {results_root}")
        return 0
    for clause in where or []:
        key, sep, value = clause.partition("=")
        if not sep or key not in df.columns:
            raise BenchError(f"--where {clause!r}: write COLUMN=VALUE with a column of the results, e.g. "
                             f"pruner=snip, seed=0, status=failed")
        df = df[df[key].astype(str) == value]
    if failed_only:
        df = df[df.status != "ok"]
    if df.empty:
        print("no run matches")
        return 0
    from bench_harness.results.stats import at_chance

    chance = at_chance(pd.to_numeric(df.top1, errors="coerce"), pd.to_numeric(df.get("num_classes"), errors="coerce"))
    collapse = df["layer_collapse"].astype("boolean").fillna(False) if "layer_collapse" in df else [False] * len(df)
    df["flags"] = [", ".join(f for f, on in (("collapse", c), ("at chance", a)) if on)
                   for c, a in zip(collapse, chance & (df.status == "ok").to_numpy())]
    cols = ["model", "dataset", "pruner", "pruner_params", "ablation", "target_sparsity", "seed", "status",
            "top1", "top5", "top1_before_training", "achieved_sparsity", "flags", "prune_seconds",
            "train_seconds", "error"]
    df = df[[c for c in cols if c in df.columns]].copy()
    if "error" in df:
        df["error"] = [("" if not isinstance(e, str) else (e if len(e) <= 60 else e[:57] + "…")) for e in df["error"]]
        if (df["error"] == "").all():
            df = df.drop(columns=["error"])
    df["pruner_params"] = df["pruner_params"].replace("{}", "")
    if df["ablation"].isna().all():
        df = df.drop(columns=["ablation"])
    df = df.sort_values(["model", "dataset", "target_sparsity", "pruner", "seed"])
    rename = {"target_sparsity": "sparsity", "top1_before_training": "top1_pre", "achieved_sparsity": "achieved",
              "prune_seconds": "prune_s", "train_seconds": "train_s",
              "pruner_params": "params"}
    with pd.option_context("display.max_rows", 500, "display.width", 200, "display.max_colwidth", 40,
                           "display.float_format", lambda v: f"{v:.4f}"):
        print(df.rename(columns=rename).to_string(index=False))
    return len(df)


def cmd_results(args) -> int:
    names, root = _resolve_suites([args.suite], args.results_root, args)
    print_results(names[0], root, args.where, args.failed)
    return 0


def cmd_verify(args) -> int:
    """Check every run's row of a suite: ok, failed, compacted (its row is in a part), missing or damaged (a
    damaged one is redone by bench run); and every compacted part."""
    from collections import Counter

    from bench_harness import paths
    from bench_harness.results.store import verify_store

    suite = _load_suite(args, light=True)
    counts: Counter = Counter()
    damaged = 0
    root = suite.results_root
    report = verify_store(root, suite.name, [r.run_id for r in suite.runs])
    counts.update(report.counts)
    for path, problem in report.damaged:
        damaged += 1
        print(f"DAMAGED {path}: {problem}")
    if report.extra:
        print(f"{paths.runs_dir(root, suite.name)}: {report.extra} rows of runs that are not in the suite file "
              f"(an earlier version of it, or another suite's files): kept, not checked", file=sys.stderr)
    print(f"suite {suite.name}: {len(suite.runs)} runs: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    if damaged:
        print("damaged files count as missing: `bench run` runs their runs again", file=sys.stderr)
    return 1 if damaged else 0


def _resolve_suites(names: list[str], results_root: str | None, args=None) -> tuple[list[str], str]:
    """Suite files or names -> (names, results root)."""
    out, root = [], results_root
    for name in names:
        if Path(name).is_file():
            from bench_harness.config.suite import load_suite  # only for a file: a name needs no suite schema

            suite = load_suite(name, _light_registry(args))
            out.append(suite.name)
            root = root or suite.results_root
        elif not name.replace("-", "").replace("_", "").isalnum():
            raise BenchError(f"{name!r} is neither a suite file nor a suite name (letters, digits, '-', '_')")
        else:
            out.append(name)
    root = root or "results"
    for name in out:
        if not (Path(root) / name / "runs").is_dir():
            known = sorted(p.parent.name for p in Path(root).glob("*/runs") if p.is_dir())
            raise BenchError(f"no results for suite {name!r} under {root}/{name}/runs: run it first "
                             f"(bench run SUITE) or give --results-root"
                             + (f"; suites with results under {root}: {', '.join(known)}" if known else ""))
    return out, root


def cmd_aggregate(args) -> int:
    from bench_harness.results.aggregate import aggregate, leaderboard_path
    from bench_harness.results.compaction import maybe_compact

    suites, root = _resolve_suites(args.suites, args.results_root, args)
    t0 = time.perf_counter()
    for suite in suites:
        try:
            done = maybe_compact(root, suite, force=args.compact)
            if done:
                print(f"{suite}: {done['compacted']} run files compacted into a part of {suite}/runs/", file=sys.stderr)
        except (OSError, BenchError, RuntimeError) as exc:  # a read-only folder: aggregate without compacting
            print(f"note: {suite}: run files not compacted ({getattr(exc, 'strerror', None) or exc})",
                  file=sys.stderr)
    result = aggregate(root, suites, rebuild=args.rebuild)
    elapsed = time.perf_counter() - t0
    for suite in suites:
        board, runs = result.boards[suite], result.runs[suite]
        print(f"{suite}: {len(runs)} runs -> {len(board)} leaderboard rows -> {leaderboard_path(root, suite)}")
    if result.cross is not None:
        print(f"across suites: {len(result.cross)} rows -> {leaderboard_path(root, None)}")
    print(f"aggregated in {elapsed:.2f} s")
    return 0


def cmd_leaderboard(args) -> int:
    from bench_harness.results.aggregate import aggregate
    from bench_harness.results.leaderboard import display_table, to_latex, to_markdown

    suites, root = _resolve_suites(args.suites, args.results_root, args)
    result = aggregate(root, suites)
    board = result.cross if result.cross is not None else result.boards[suites[0]]
    if board is None or board.empty:
        raise BenchError("no finished runs to rank yet")
    if args.format == "parquet":
        if not args.out:
            raise BenchError("--format parquet needs --out FILE")
        board.to_parquet(args.out, index=False)
        print(f"wrote {args.out}")
        return 0
    table = display_table(board)
    text = {"md": to_markdown, "latex": to_latex, "csv": lambda t: t.to_csv(index=False)}[args.format](table)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def cmd_plot(args) -> int:
    from bench_harness.results.aggregate import aggregate
    from bench_harness.results.plots import make_plots

    suites, root = _resolve_suites(args.suites, args.results_root, args)
    result = aggregate(root, suites)
    for suite in suites:
        out = Path(args.out) / suite if args.out else Path(root) / suite / "plots"
        files = make_plots(result.boards[suite], result.runs[suite], out, style=args.style,
                           names=_registry().display_names())
        print(f"{suite}: {len(files)} files in {out}")
    return 0


def cmd_publish(args) -> int:
    from bench_harness.results.aggregate import aggregate
    from bench_harness.results.plots import make_plots
    from bench_harness.results.publish import publish_index, publish_suite

    suites, root = _resolve_suites(args.suites, args.results_root, args)
    result = aggregate(root, suites)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from bench_harness.results.publish import suite_card

    cards = {suite: suite_card(root, suite) for suite in suites}
    for suite in suites:
        plots = make_plots(result.boards[suite], result.runs[suite], Path(root) / suite / "plots",
                           names=_registry().display_names())
        publish_suite(suite, result.boards[suite], result.runs[suite], plots, out, cards[suite])
    index = publish_index(out, {s: (result.boards[s], result.runs[s]) for s in suites}, result.cross, cards)
    print(f"site written: {index} (open it in a browser, or copy {out} to any static host)")
    return 0


def cmd_artifacts(args) -> int:
    """Stage artifacts of a suite: stored ones with their users, planned ones still missing; checksums verified."""
    from bench_harness import paths
    from bench_harness.contract.artifacts import list_artifacts
    from bench_harness.results.store import load_results
    from bench_harness.running.plan import artifact_plan

    suite = _load_suite(args)
    root = suite.results_root
    reg = _registry()
    planned: dict[tuple[str, str], list[str]] = {}  # (name, key) -> run ids of this suite that use it
    for run in suite.runs:
        for artifact in artifact_plan(run, reg):
            planned.setdefault((artifact.name, artifact.key), []).append(run.run_id)
    used: dict[tuple[str, str], set[str]] = {}
    rows = load_results(root, [suite.name])
    if "artifacts" in rows:
        for run_id, cell in zip(rows.run_id, rows.artifacts):
            if isinstance(cell, str) and cell:
                for name, record in json.loads(cell).items():
                    used.setdefault((name, record["key"]), set()).add(run_id)
    stored = {(a.get("name"), a.get("key")): a for a in list_artifacts(paths.artifacts_dir(root))}
    wanted_keys = set(planned) | set(used)
    if not wanted_keys:
        print(f"suite {suite.name!r} uses no stage artifacts")
        return 0
    bad = 0
    print(f"{'artifact':<20} {'key':<17} {'state':<8} {'size':>10}  {'sha256':<13} {'users':>12}  producer")
    for name, key in sorted(wanted_keys):
        a = stored.get((name, key))
        users = f"{len(used.get((name, key), ()))}/{len(planned.get((name, key), ()))}"
        if a is None:
            print(f"{name:<20} {key:<17} {'missing':<8} {'':>10}  {'':<13} {users:>12}  (produced by the first run "
                  f"that needs it, or a SLURM stage job)")
            continue
        state = "ok" if a["ok"] else "DAMAGED"
        bad += not a["ok"]
        size = a.get("size") or 0
        print(f"{name:<20} {key:<17} {state:<8} {size:>10,}  {str(a.get('sha256', ''))[:12]:<13} {users:>12}  "
              f"{a.get('producer', '')} on {a.get('host', '')} at {str(a.get('created_at', ''))[:19]}")
    print("users: runs of this suite whose rows record the artifact / runs that need it")
    if bad:
        print(f"{bad} damaged artifact(s): the next run that needs one produces it again", file=sys.stderr)
    return 1 if bad else 0


def cmd_merge(args) -> int:
    from bench_harness.results.aggregate import merge_results

    stats = merge_results(args.sources, args.into)
    print(f"merged into {args.into}: {stats['copied']} new, {stats['replaced']} replaced by newer, "
          f"{stats['kept']} kept (already newest)"
          + (f", {stats['refused']} refused (see the warnings)" if stats["refused"] else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description="Benchmark harness for neural-network pruning.")
    parser.add_argument("-v", "--verbose", dest="notes", action="store_true",
                        help="notes on stderr (e.g. why the plugin registry's cache was not used)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plugins", help="list plugins, their distributions and what they register")
    p.add_argument("-v", "--verbose", action="store_true", help="show pruner hyperparameters")
    p.add_argument("--all", action="store_true", help="also the pruners that exist for tests (test_only)")
    p.set_defaults(func=cmd_plugins)
    p = sub.add_parser("check-plugin", help="run the pruner conformance kit")
    p.add_argument("name")
    p.add_argument("--params", help="pruner hyperparameters as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="show passed checks and the stand-ins too")
    p.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                   help="end the kit after this long; the checks it did not reach are reported as not run "
                        "(default 300; 0: no limit)")
    p.set_defaults(func=cmd_check_plugin)
    p = sub.add_parser("validate", help="check a suite file (--schema: print its JSON Schema for editors)")
    p.add_argument("suite", nargs="?")
    p.add_argument("--schema", action="store_true", help="print the JSON Schema of suite files and exit")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("run", help="run a suite's unfinished runs")
    p.add_argument("suite")
    p.add_argument("--dry-run", action="store_true", help="list the expanded runs and their state")
    p.add_argument("--force", action="store_true", help="rerun finished runs too")
    p.add_argument("--executor", default="local", help="local (default) or slurm (submits and returns)")
    p.add_argument("--wait", action="store_true", help="slurm: block until every run has finished")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1: in-process)")
    p.add_argument("--isolate", action="store_true", help="run each run in a worker process even with one worker: "
                   "a pruner that ends or crashes its process (os._exit, a segfault) costs only its own run")
    p.add_argument("--results-root", type=absolute_path, help="override the suite's results_root")
    p.add_argument("--download", action="store_true", help="allow downloading missing data sets")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("results", help="print a suite's results table")
    p.add_argument("suite", help="suite file or suite name")
    p.add_argument("--results-root", type=absolute_path)
    p.add_argument("--where", action="append", metavar="COLUMN=VALUE", help="keep matching runs (repeatable)")
    p.add_argument("--failed", action="store_true", help="only failed runs")
    p.set_defaults(func=cmd_results)
    p = sub.add_parser("verify", help="check every result shard of a suite (damaged ones are redone by bench run)")
    p.add_argument("suite")
    p.add_argument("--results-root", type=absolute_path)
    p.set_defaults(func=cmd_verify)
    for name, func, help_text in (("status", cmd_status, "SLURM: counts by state, failures with their logs"),
                                  ("cancel", cmd_cancel, "SLURM: cancel the suite's queued and running jobs"),
                                  ("resubmit", cmd_resubmit, "SLURM: submit failed and/or missing runs again")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("suite")
        p.add_argument("--results-root", type=absolute_path)
        if name == "resubmit":
            p.add_argument("--failed", action="store_true")
            p.add_argument("--missing", action="store_true")
        p.set_defaults(func=func)
    p = sub.add_parser("logs", help="SLURM: print a run's job log (stdout and stderr)")
    p.add_argument("run_id", help="a run id (a unique prefix is enough)")
    p.add_argument("--suite", help="suite file or name (default: search every suite under the results root)")
    p.add_argument("--results-root", type=absolute_path)
    p.add_argument("--lines", type=int, help="only the last N lines of each log")
    p.set_defaults(func=lambda args: __import__("bench_harness.slurm.logs", fromlist=["cmd_logs"]).cmd_logs(args))
    p = sub.add_parser("aggregate", help="build Parquet leaderboards (per suite and across suites)")
    p.add_argument("suites", nargs="+", help="suite files or names")
    p.add_argument("--results-root", type=absolute_path)
    p.add_argument("--rebuild", action="store_true", help="read every run file again")
    p.add_argument("--compact", action="store_true", help="fold the run files into one part of runs/ now (automatic "
                   "from 1,000 run files)")
    p.set_defaults(func=cmd_aggregate)
    p = sub.add_parser("leaderboard", help="export a leaderboard table")
    p.add_argument("suites", nargs="+", help="suite files or names (several: the cross-suite leaderboard)")
    p.add_argument("--format", choices=["md", "csv", "latex", "parquet"], default="md")
    p.add_argument("--out", help="write to this file instead of standard output")
    p.add_argument("--results-root", type=absolute_path)
    p.set_defaults(func=cmd_leaderboard)
    p = sub.add_parser("plot", help="plots (PNG, SVG, PDF) of a suite's leaderboard")
    p.add_argument("--style", choices=["default", "paper", "paper-wide"], default="default",
                   help="paper: one journal column (3.5 in), paper-wide: two (7.2 in); 8 pt serif text, embedded fonts")
    p.add_argument("suites", nargs="+")
    p.add_argument("--out", help="folder (default: results/<suite>/plots)")
    p.add_argument("--results-root", type=absolute_path)
    p.set_defaults(func=cmd_plot)
    p = sub.add_parser("publish", help="a static leaderboard site")
    p.add_argument("suites", nargs="+")
    p.add_argument("--out", required=True, help="folder of the site")
    p.add_argument("--results-root", type=absolute_path)
    p.set_defaults(func=cmd_publish)
    p = sub.add_parser("artifacts", help="a suite's stage artifacts: name, key, size, producer, users; checksums")
    p.add_argument("suite")
    p.add_argument("--results-root", type=absolute_path)
    p.set_defaults(func=cmd_artifacts)
    p = sub.add_parser("merge", help="combine result folders (one row per run id, newest wins)")
    p.add_argument("sources", nargs="+", help="results roots to merge")
    p.add_argument("--into", required=True, help="results root to merge into")
    p.set_defaults(func=cmd_merge)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("default", category=UserWarning, module="bench_harness")
    try:
        return args.func(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
