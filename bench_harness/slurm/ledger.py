"""The durable run ledger: ``results/<suite>/ledger/<run_id>.json``, one small file per run (written atomically,
so concurrent writers never corrupt each other): which job runs it, its state, attempts and log paths."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench_harness import paths

ACTIVE = {"SUBMITTED", "PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "CONFIGURING", "COMPLETING",
          "PREEMPTED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"}
FAILED = {"FAILED", "CANCELLED", "OUT_OF_MEMORY", "NODE_FAIL", "TIMEOUT", "BOOT_FAIL", "DEADLINE",
          "REVOKED", "SPECIAL_EXIT"}


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
    folder = ledger_dir(results_root, suite)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(asdict(entry), fh, indent=1)
    os.replace(tmp, folder / f"{entry.run_id}.json")


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
