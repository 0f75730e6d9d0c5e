"""Fault injection, as a hostile user and a busy shared cluster would: then check that nothing was lost, duplicated,
wrong, or failed silently.

    .venv/bin/python benchmarks/faults.py [--iterations 50] [--store-rounds 12] [--seed 0] [--keep DIR]

Phases (each counted in the final line; figures recorded in docs/reliability.md):

A. **Sweep**: a 12-run suite (MLP on synthetic data) run once undisturbed as the reference; then ``--iterations``
   times `bench run`, killed with SIGKILL or SIGTERM after 1–8 s, and at random beside it: a second runner with
   two workers, a SLURM-task process (``slurm.task.execute_once`` over the suite: the other executor's claim and
   its resume checkpoints), `bench aggregate --compact` (compaction racing runners and readers, sometimes killed),
   `bench results` (a reader); between iterations a shard or a compacted part truncated, a malicious checkpoint
   planted into an unfinished run's work folder (it would create a marker file if unpickled), a checkpoint's bytes
   flipped. Finally the suite is finished and every run must have exactly one row equal to the reference's, the
   dataset folder must read the same rows in pandas, and no marker may exist.
B. **Store race**: 3,000 run files; ``--store-rounds`` rounds of a compaction (killed with SIGKILL at a random point
   in a third of the rounds) racing three readers and a writer that adds 100 runs and redoes 20 compacted ones with
   new values; every reader must see no fewer rows than were finished before it started, and at the end the rows
   must be exactly the last value written for each run.
C. **Hostile plugins**: a pruner plugin (installed the way a third-party package is: a ``.dist-info`` with an
   entry point) that calls ``sys.exit``, raises ``KeyboardInterrupt``, calls ``os._exit``, segfaults, returns
   ``None``, changes weights without declaring it, prunes everything, or changes the working directory; run in
   process and with ``--workers 2``: every hostile run must be a failure row with an error (the ``chdir`` one an
   ok row in the right folder), every ``magnitude`` run ok, and `bench run` must say so and exit 1.
D. **Disk full** (root only: a 3 MB tmpfs): `bench run` must stop with one line naming the folder and its free
   space, no traceback, and every row it stored must read back.
E. **Planted files** in a compacted store of 200 rows, each in its own copy: FIFOs where the cache, the journal, a
   run file or a legacy index belong; a journal naming real files whose "new part" does not hold them; a garbage
   part with the highest sequence number; another suite's part; a symbolic link in ``runs/`` to another suite's
   file; a legacy index with stale rows; a crafted cache; a folder merged in with ``../`` run ids. After a reader
   (in a subprocess: a hang is a failure) and a compaction, the harness and pandas must read exactly the 200 rows.

A "silent failure" is a fault the harness neither tolerated nor reported: a marker created, a run without a row
after a command said it finished, a hostile run recorded ok, exit status 0 with failures, a traceback instead of
an error line.
"""
from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

BENCH = str(Path(sys.executable).with_name("bench"))
SUITE = """
name: faults
grid:
  models: [mlp]
  datasets: [{{name: synthetic, params: {{num_classes: 4, image_size: 8, train_size: 512, test_size: 128}}}}]
  sparsities: [0.5, 0.8]
  seeds: [0, 1]
  pruners: [magnitude, random, snip]
recipe: {{epochs: 3, batch_size: 32, lr: 0.05}}
results_root: {root}
"""
COMPARED = ["top1", "top5", "loss", "top1_before_training", "achieved_sparsity", "params_nonzero"]

SLURM_TASK = """
import sys, warnings
warnings.simplefilter("ignore")
from bench_harness.config.suite import load_suite
from bench_harness.slurm.task import execute_once
for run in load_suite(sys.argv[1]).runs:
    execute_once(run)
"""

PLANT = """
import pathlib, sys, torch

class Payload:
    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(sys.argv[2]),))

torch.save({"model": Payload()}, sys.argv[1])
"""


class Tally:
    def __init__(self) -> None:
        self.faults: collections.Counter = collections.Counter()
        self.lost = self.duplicated = self.wrong = self.silent = 0
        self.notes: list[str] = []

    def silent_failure(self, what: str) -> None:
        self.silent += 1
        self.notes.append(what)
        print(f"SILENT FAILURE: {what}", file=sys.stderr)


def _rows(root: Path, suite: str = "faults") -> pd.DataFrame:
    import warnings

    from bench_harness.results.store import load_results

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_results(root, [suite]).set_index("run_id").sort_index()


def _spawn(cmd: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            **kwargs)


def _finish(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        try:
            p.wait(timeout=900)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _compare(reference: pd.DataFrame, got: pd.DataFrame, tally: Tally, what: str) -> None:
    lost = len(set(reference.index) - set(got.index))
    dup = int(got.index.duplicated().sum())
    common = reference.index.intersection(got.index)
    a, b = reference.loc[common, COMPARED], got.loc[common, COMPARED]
    wrong = int(((a != b) & ~(a.isna() & b.isna())).any(axis=1).sum())
    tally.lost += lost
    tally.duplicated += dup
    tally.wrong += wrong
    if lost or dup or wrong:
        print(f"{what}: {lost} lost, {dup} duplicated, {wrong} wrong", file=sys.stderr)


# ---- phase A: the sweep ------------------------------------------------------------------------------------------

def _plant_checkpoint(rng: random.Random, work: Path, suite_path: Path, markers: list[Path]) -> bool:
    """A malicious pruned.pt/train.pt in the work folder of a run that is not finished."""
    from bench_harness.config.suite import load_suite

    runs = load_suite(suite_path).runs
    root = Path(runs[0].results_root)
    done = set(_rows(root).query("status == 'ok'").index) if (root / "faults" / "runs").is_dir() else set()
    todo = [r for r in runs if r.run_id not in done]
    if not todo:
        return False
    run = rng.choice(todo)
    folder = root / "faults" / "work" / run.run_id
    folder.mkdir(parents=True, exist_ok=True)
    marker = work / f"pwned-{len(markers)}"
    markers.append(marker)
    subprocess.run([sys.executable, "-c", PLANT, str(folder / rng.choice(["pruned.pt", "train.pt"])), str(marker)],
                   check=True)
    return True


def _flip_checkpoint(rng: random.Random, root: Path) -> bool:
    files = sorted((root / "faults" / "work").glob("*/*.pt")) if (root / "faults" / "work").is_dir() else []
    if not files:
        return False
    f = rng.choice(files)
    data = bytearray(f.read_bytes())
    if len(data) < 200:
        return False
    for _ in range(8):
        i = rng.randrange(100, len(data))
        data[i] ^= 0x80
    f.write_bytes(bytes(data))
    return True


def _truncate(rng: random.Random, runs: Path, parts: bool) -> bool:
    files = [f for f in runs.glob("*.parquet") if f.name.startswith("part-") == parts] if runs.is_dir() else []
    if not files:
        return False
    f = rng.choice(files)
    f.write_bytes(f.read_bytes()[: rng.randint(0, 200)])
    return True


def phase_sweep(work: Path, iterations: int, rng: random.Random, tally: Tally) -> int:
    ref_suite, suite = work / "reference.yaml", work / "faults.yaml"
    ref_suite.write_text(SUITE.format(root=work / "reference"))
    suite.write_text(SUITE.format(root=work / "disturbed"))
    subprocess.run([BENCH, "run", str(ref_suite), "--no-progress"], check=True, capture_output=True)
    reference = _rows(work / "reference")
    root = work / "disturbed"
    runs_dir = root / "faults" / "runs"
    markers: list[Path] = []
    faults = tally.faults
    for i in range(iterations):
        if i and rng.random() < 0.25 and _plant_checkpoint(rng, work, suite, markers):
            faults["planted malicious checkpoint"] += 1
        procs = [_spawn([BENCH, "run", str(suite), "--no-progress"])]
        extras = []
        if rng.random() < 0.3:
            procs.append(_spawn([BENCH, "run", str(suite), "--no-progress", "--workers", "2"]))
            faults["second runner (2 workers)"] += 1
        if rng.random() < 0.3:
            procs.append(_spawn([sys.executable, "-c", SLURM_TASK, str(suite)]))
            faults["SLURM-task executor beside it"] += 1
        time.sleep(rng.uniform(1.0, 8.0))
        if rng.random() < 0.3 and runs_dir.is_dir():
            extras.append(_spawn([BENCH, "aggregate", "faults", "--results-root", str(root), "--compact"]))
            faults["compaction racing"] += 1
        if rng.random() < 0.3 and runs_dir.is_dir():
            extras.append(_spawn([BENCH, "results", "faults", "--results-root", str(root)]))
            faults["reader racing"] += 1
        victim = rng.choice(procs + extras)
        sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
        if victim.poll() is None:
            os.killpg(victim.pid, sig)
            faults[f"{signal.Signals(sig).name} of a {'runner' if victim in procs else 'reader/compaction'}"] += 1
        _finish(procs + extras)
        if rng.random() < 0.2 and _truncate(rng, runs_dir, parts=False):
            faults["truncated run file"] += 1
        if rng.random() < 0.1 and _truncate(rng, runs_dir, parts=True):
            faults["truncated compacted part"] += 1
        if rng.random() < 0.2 and _flip_checkpoint(rng, root):
            faults["flipped checkpoint bytes"] += 1
        print(f"iteration {i + 1}/{iterations}: {dict(faults)}", file=sys.stderr)
    # a last SLURM-task pass resumes whatever checkpoints are left (planted or damaged ones included), then bench run
    subprocess.run([sys.executable, "-c", SLURM_TASK, str(suite)], capture_output=True)
    subprocess.run([BENCH, "run", str(suite), "--no-progress"], capture_output=True)
    final = subprocess.run([BENCH, "run", str(suite), "--no-progress"], capture_output=True, text=True)
    if final.returncode != 0:
        tally.silent_failure(f"the last bench run of the sweep exited {final.returncode}: {final.stderr[-300:]}")
    _compare(reference, _rows(root), tally, "sweep")
    glob = pd.read_parquet(runs_dir)
    if len(glob) != len(reference) or not glob["run_id"].is_unique:
        tally.silent_failure(f"pandas over {runs_dir} read {len(glob)} rows ({glob['run_id'].nunique()} runs), "
                             f"expected {len(reference)}")
    for marker in markers:
        if marker.exists():
            tally.silent_failure(f"a planted checkpoint ran code ({marker})")
    leftovers = [f for f in runs_dir.iterdir() if f.name.endswith(".tmp")]
    if leftovers:
        tally.notes.append(f"{len(leftovers)} hidden temporary files left by killed writers")
    return len(reference)


# ---- phase B: compaction racing readers and writers ---------------------------------------------------------------

STORE_WRITER = """
import sys, datetime as dt
from bench_harness.results.store import write_shard
root, start, stop, redo, value = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
ids = list(range(start, stop)) + [int(x) for x in redo.split(",") if x]
for i in ids:
    write_shard({"run_id": f"{i:040x}", "suite": "race", "status": "ok", "top1": value if i < start else 0.5,
                 "seed": i, "finished_at": dt.datetime.now(dt.timezone.utc)}, root, "race")
"""

STORE_READER = """
import sys, warnings
warnings.simplefilter("ignore")
from bench_harness.results.store import load_results
for _ in range(3):
    print(len(load_results(sys.argv[1], ["race"])), flush=True)
"""

STORE_COMPACT = """
import warnings
warnings.simplefilter("ignore")
from bench_harness.results.compaction import compact
import sys
compact(sys.argv[1], "race")
"""


def phase_store(work: Path, rounds: int, rng: random.Random, tally: Tally) -> int:
    root = work / "race"
    n = 3000
    subprocess.run([sys.executable, "-c", STORE_WRITER, str(root), "0", str(n), "", "0"], check=True)
    expected = {i: 0.5 for i in range(n)}
    for r in range(rounds):
        redo = rng.sample(range(n), 20)
        value = round(0.6 + r / 100, 4)
        before = len(expected)
        compactor = subprocess.Popen([sys.executable, "-c", STORE_COMPACT, str(root)], start_new_session=True)
        readers = [subprocess.Popen([sys.executable, "-c", STORE_READER, str(root)], stdout=subprocess.PIPE,
                                    text=True) for _ in range(3)]
        writer = subprocess.Popen([sys.executable, "-c", STORE_WRITER, str(root), str(n), str(n + 100),
                                   ",".join(map(str, redo)), str(value)])
        tally.faults["store: compaction racing 3 readers and a writer"] += 1
        if rng.random() < 1 / 3:
            time.sleep(rng.uniform(0.5, 4.0))
            if compactor.poll() is None:
                os.killpg(compactor.pid, signal.SIGKILL)
                tally.faults["store: SIGKILL of compaction"] += 1
        compactor.wait()
        writer.wait()
        for reader in readers:
            seen = [int(x) for x in reader.communicate()[0].split()]
            if any(s < before for s in seen):
                tally.silent_failure(f"store round {r}: a reader saw {min(seen)} rows of {before}")
        for i in range(n, n + 100):
            expected[i] = 0.5
        for i in redo:
            expected[i] = value
        n += 100
    got = _rows(root, "race")["top1"].to_dict()
    want = {f"{i:040x}": v for i, v in expected.items()}
    lost = len(set(want) - set(got))
    wrong = sum(1 for k in set(want) & set(got) if got[k] != want[k])
    subprocess.run([sys.executable, "-c", STORE_COMPACT, str(root)], check=True)
    glob = pd.read_parquet(root / "race" / "runs")
    dup = len(glob) - glob["run_id"].nunique()
    tally.lost += lost
    tally.wrong += wrong
    tally.duplicated += dup
    if lost or wrong or dup:
        print(f"store: {lost} lost, {wrong} wrong, {dup} duplicated", file=sys.stderr)
    return len(want)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--store-rounds", type=int, default=12)
    parser.add_argument("--phases", default="ABCDE", help="which phases to run (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", help="keep the work folder here")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.keep or tempfile.mkdtemp(prefix="bench-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    tally = Tally()
    t0 = time.perf_counter()
    runs = {}
    if "A" in args.phases:
        runs["sweep"] = phase_sweep(work, args.iterations, rng, tally)
    if "B" in args.phases:
        runs["store"] = phase_store(work, args.store_rounds, rng, tally)
    if "C" in args.phases:
        runs["hostile"] = phase_hostile(work, tally)
    if "D" in args.phases:
        runs["disk full"] = phase_disk_full(work, tally)
    if "E" in args.phases:
        runs["planted"] = phase_planted(work, tally)
    injected = sum(tally.faults.values())
    print("faults injected:")
    for kind, count in sorted(tally.faults.items()):
        print(f"  {count:4d}  {kind}")
    print(f"runs {runs}, {injected} faults injected; rows lost {tally.lost}, rows duplicated {tally.duplicated}, "
          f"rows wrong {tally.wrong}, silent failures {tally.silent}; {time.perf_counter() - t0:.0f} s")
    for note in tally.notes:
        print(f"note: {note}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if tally.lost or tally.duplicated or tally.wrong or tally.silent else 0


HOSTILE_MODULE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "hostile" / "bench_hostile_plugins.py"
IN_PROCESS_SAFE = ["hostile_sys_exit", "hostile_keyboard_interrupt", "hostile_none", "hostile_changes_weights",
                   "hostile_all_pruned"]
KILLS_ITS_PROCESS = ["hostile_os_exit", "hostile_segfault"]


def _hostile_env(work: Path) -> dict:
    """The hostile pruners installed the way a third-party package is: a distribution with an entry point."""
    site = work / "site"
    dist = site / "bench_hostile-0.1.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    shutil.copy(HOSTILE_MODULE, site)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bench-hostile\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[bench_harness]\nhostile = bench_hostile_plugins\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(":")}


HOSTILE_SUITE = """
name: hostile
grid:
  models: [mlp]
  datasets: [{{name: synthetic, params: {{num_classes: 4, image_size: 8, train_size: 128, test_size: 64}}}}]
  sparsities: [0.5]
  seeds: [0, 1]
  pruners: [{pruners}]
recipe: {{epochs: 1, batch_size: 32}}
results_root: results
"""


def phase_hostile(work: Path, tally: Tally) -> int:
    env = _hostile_env(work)
    total = 0
    modes = {"in-process": ([], IN_PROCESS_SAFE), "--isolate": (["--isolate"], IN_PROCESS_SAFE + KILLS_ITS_PROCESS),
             "--workers 2": (["--workers", "2"], IN_PROCESS_SAFE + KILLS_ITS_PROCESS)}
    for mode, (flags, hostile) in modes.items():
        folder = work / f"hostile-{mode.strip('-').replace(' ', '')}"
        folder.mkdir()
        pruners = ["magnitude", *hostile, "hostile_chdir"]
        (folder / "hostile.yaml").write_text(HOSTILE_SUITE.format(pruners=", ".join(pruners)))
        proc = subprocess.run([BENCH, "run", "hostile.yaml", "--no-progress", *flags], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=3600)
        for name in hostile + ["hostile_chdir"]:
            tally.faults[f"hostile plugin: {name.removeprefix('hostile_')}"] += 2  # two seeds
        rows = _rows(folder / "results", "hostile")
        total += len(rows)
        if proc.returncode != 1:
            tally.silent_failure(f"hostile {mode}: bench run exited {proc.returncode} (expected 1: runs failed)")
        for name in pruners:
            mine = rows[rows["pruner"] == name]
            if len(mine) != 2:
                tally.silent_failure(f"hostile {mode}: {len(mine)} rows for {name}, expected 2")
                tally.lost += 2 - len(mine)
                continue
            want_ok = name in ("magnitude", "hostile_chdir")
            for _, row in mine.iterrows():
                if want_ok and row["status"] != "ok":
                    tally.wrong += 1
                    print(f"hostile {mode}: {name} failed: {row['error']}", file=sys.stderr)
                elif not want_ok and (row["status"] != "failed" or not row["error"]):
                    tally.silent_failure(f"hostile {mode}: {name} recorded {row['status']}")
            print(f"hostile {mode}: {name}: {', '.join(sorted(set(mine['status'])))}"
                  + ("" if want_ok else f" — {str(mine['error'].iloc[0]).splitlines()[0][:110]}"), file=sys.stderr)
    return total


def phase_disk_full(work: Path, tally: Tally) -> int:
    """A full disk before a run, and a disk that fills during a run (in process and isolated)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        tally.notes.append("phase D skipped: mounting a tmpfs needs root")
        return 0
    env = _hostile_env(work)
    cases = {"full before the first run": (["magnitude", "random"], [], 200 * 1024),
             "fills during a run (in process)": (["magnitude", "hostile_fills_disk", "random"], [], None),
             "fills during a run (--isolate)": (["magnitude", "hostile_fills_disk", "random"], ["--isolate"], None)}
    stored = 0
    for case, (pruners, flags, leave) in cases.items():
        disk = work / f"disk-{len(tally.notes)}-{abs(hash(case)) % 10000}"
        disk.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)]).returncode != 0:
            tally.notes.append("phase D skipped: tmpfs mount failed")
            return stored
        try:
            (disk / "hostile.yaml").write_text(HOSTILE_SUITE.format(pruners=", ".join(pruners))
                                               .replace("seeds: [0, 1]", "seeds: [0]"))
            (disk / "results").mkdir()
            if leave is not None:
                free = shutil.disk_usage(disk).free
                (disk / "ballast").write_bytes(b"\0" * max(0, free - leave))
            tally.faults[f"disk full: {case}"] += 1
            proc = subprocess.run([BENCH, "run", "hostile.yaml", "--no-progress", *flags], cwd=disk, env=env,
                                  capture_output=True, text=True, timeout=1800)
            errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
            if proc.returncode == 0 or "Traceback" in proc.stderr or len(errors) != 1 or "free" not in errors[0]:
                tally.silent_failure(f"disk full ({case}): exit {proc.returncode}, stderr {proc.stderr[-400:]!r}")
            else:
                print(f"disk full ({case}): {errors[0]}", file=sys.stderr)
            files = list((disk / "results" / "hostile" / "runs").glob("*.parquet")) \
                if (disk / "results" / "hostile" / "runs").is_dir() else []
            for f in files:  # every row the command stored reads back
                try:
                    pd.read_parquet(f)
                    stored += 1
                except Exception as exc:
                    tally.silent_failure(f"disk full ({case}): stored file {f.name} unreadable: {exc}")
        finally:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    return stored


PLANTED_READER = """
import sys, warnings
warnings.simplefilter("ignore")
from bench_harness.results.store import load_results
from bench_harness.results.compaction import compact
df = load_results(sys.argv[1], ["race"])
print(len(df), df["run_id"].nunique(), flush=True)
compact(sys.argv[1], "race")
"""


def _plant(kind: str, root: Path, other: Path) -> None:
    """One planted or crafted file in the store ``root/race`` (``other`` is another suite's store)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    suite, runs = root / "race", root / "race" / "runs"
    part = next(p for p in runs.iterdir() if p.name.startswith("part-"))
    row = pq.read_table(part).slice(0, 1).to_pylist()[0]
    if kind.startswith("fifo "):
        target = {"fifo cache": suite / "index.arrow", "fifo journal": suite / "compaction.json",
                  "fifo run file": runs / f"{'f' * 40}.parquet", "fifo legacy index": suite / "index.parquet"}[kind]
        target.unlink(missing_ok=True)
        os.mkfifo(target)
    elif kind == "journal naming real files":
        decoy = "part-00000009-0badc0de.parquet"
        pq.write_table(pa.Table.from_pylist([row]), runs / decoy)  # a copy of one row, not the folded ones
        (suite / "compaction.json").write_text(json.dumps(
            {"new_part": decoy, "replaced": [part.name],
             "consumed": {p.name: [0, 0, 0] for p in runs.iterdir() if not p.name.startswith("part-")}}))
    elif kind == "garbage part with the highest sequence":
        (runs / "part-99999999-deadbeef.parquet").write_bytes(b"garbage")
    elif kind == "another suite's part":
        pq.write_table(pa.Table.from_pylist([dict(row, suite="other", run_id="d" * 40)]),
                       runs / "part-00000042-00000042.parquet")
    elif kind == "symlink to another suite's file":
        os.symlink(next((other / "race" / "runs").iterdir()), runs / f"{'c' * 40}.parquet")
    elif kind == "legacy index with stale rows":
        stale = pd.read_parquet(part).head(20).assign(status="failed")
        stale.to_parquet(suite / "index.parquet", index=False)
    elif kind == "crafted cache":
        from bench_harness.results.index_parts import list_parts
        from bench_harness.results.shard_index import update_index

        update_index(root, "race")
        cache = suite / "index" / list_parts(suite / "index")[-1]  # the index's newest part
        table = pa.ipc.open_file(pa.OSFile(str(cache))).read_all()
        crafted = pa.concat_tables([table, table.slice(0, 3)])
        with pa.OSFile(str(cache), "wb") as sink, pa.ipc.new_file(sink, crafted.schema) as writer:
            writer.write_table(crafted)
    elif kind == "merge of a folder with ../ run ids":
        import warnings

        from bench_harness.results.aggregate import merge_results

        evil = other / "evil" / "race" / "runs"
        evil.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist([dict(row, run_id="../../../../escaped")]),
                       evil / "part-00000001-00000001.parquet")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            merge_results([other / "evil"], root)
    else:
        raise ValueError(kind)


PLANTS = ["fifo cache", "fifo journal", "fifo run file", "fifo legacy index", "journal naming real files",
          "garbage part with the highest sequence", "another suite's part", "symlink to another suite's file",
          "legacy index with stale rows", "crafted cache", "merge of a folder with ../ run ids"]


def phase_planted(work: Path, tally: Tally) -> int:
    base, other = work / "planted-base", work / "planted-other"
    for root, start in ((base, 0), (other, 10_000)):
        subprocess.run([sys.executable, "-c", STORE_WRITER, str(root), str(start), str(start + 150), "", "0"],
                       check=True)
        subprocess.run([sys.executable, "-c", STORE_COMPACT, str(root)], check=True)
        subprocess.run([sys.executable, "-c", STORE_WRITER, str(root), str(start + 150), str(start + 200), "", "0"],
                       check=True)
    expected = _rows(base, "race")
    for kind in PLANTS:
        root = work / f"planted-{PLANTS.index(kind)}"
        shutil.copytree(base, root, symlinks=True)
        _plant(kind, root, other)
        tally.faults[f"planted: {kind}"] += 1
        try:
            proc = subprocess.run([sys.executable, "-c", PLANTED_READER, str(root)], capture_output=True, text=True,
                                  timeout=600)
        except subprocess.TimeoutExpired:
            tally.silent_failure(f"planted {kind}: a reader hung")
            continue
        if proc.returncode != 0:
            tally.silent_failure(f"planted {kind}: the reader failed: {proc.stderr[-300:]}")
            continue
        got = _rows(root, "race")
        _compare(expected, got, tally, f"planted {kind}")
        extra = len(set(got.index) - set(expected.index))
        glob = pd.read_parquet(root / "race" / "runs")
        if extra or len(glob) != len(expected) or not glob["run_id"].is_unique:
            tally.silent_failure(f"planted {kind}: {extra} foreign rows read, pandas read {len(glob)} rows")
        if list(work.rglob("escaped*")):
            tally.silent_failure(f"planted {kind}: a file was written outside the results folder")
    return len(expected)


if __name__ == "__main__":
    sys.exit(main())
