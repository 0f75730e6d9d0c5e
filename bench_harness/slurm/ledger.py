"""The durable run ledger: ``results/<suite>/ledger/<run_id>.json``, one small file per run (written atomically,
so concurrent writers never corrupt each other): which job runs it, its state, attempts and log paths."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench_harness import paths
from bench_harness.atomic import atomic_write

FAILED = {"FAILED", "CANCELLED", "OUT_OF_MEMORY", "NODE_FAIL", "TIMEOUT", "BOOT_FAIL", "DEADLINE",
          "REVOKED", "SPECIAL_EXIT"}

UNSUBMITTED = "UNSUBMITTED"  # left out by a submit limit (job_id empty): submitted later by --wait or resubmit


@dataclass
class Entry:
    run_id: str
    job_id: str  # "123_4" for an array task, "123" otherwise
    state: str = "SUBMITTED"
    attempts: int = 1
    stdout: str = ""
    stderr: str = ""
    submitted_at: str = ""
    profile: dict = field(default_factory=dict)
    depends_on: list = field(default_factory=list)
    reason: str = ""


def ledger_dir(results_root: str | Path, suite: str) -> Path:
    return paths.suite_dir(results_root, suite) / "ledger"


def write(results_root: str | Path, suite: str, entry: Entry) -> None:
    text = json.dumps(asdict(entry), indent=1)
    atomic_write(ledger_dir(results_root, suite) / f"{entry.run_id}.json", lambda tmp: Path(tmp).write_text(text))


def read_all(results_root: str | Path, suite: str) -> dict[str, Entry]:
    folder = ledger_dir(results_root, suite)
    entries = {}
    if folder.is_dir():
        for f in folder.glob("*.json"):
            try:
                data = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            entries[data["run_id"]] = Entry(**{k: v for k, v in data.items() if k in Entry.__dataclass_fields__})
    return entries
