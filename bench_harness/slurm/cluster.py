"""What the cluster allows, read from SLURM itself: partitions and nodes (``scontrol``), the submit limits that apply
to this user, account, QOS and partition (``scontrol show assoc_mgr`` with their current use, ``sacctmgr``), job
states (``sacct``)."""
from __future__ import annotations

import getpass
import os
import re
import subprocess
from dataclasses import dataclass, field

from bench_harness.errors import BenchError


def _run(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise BenchError(f"`{cmd[0]}` not found: the SLURM executor needs the SLURM client commands on PATH "
                         f"(and SLURM_CONF if the cluster's configuration is not in the default place)") from None
    except subprocess.TimeoutExpired:
        raise BenchError(f"`{' '.join(cmd)}` did not answer within 60 s: is the SLURM controller up?") from None
    if out.returncode != 0:
        raise BenchError(f"`{' '.join(cmd)}` failed: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def _fields(text: str) -> dict[str, str]:
    """``Key=value Key2=value two`` (scontrol's one-line records) -> dict; values may contain spaces."""
    out: dict[str, str] = {}
    for m in re.finditer(r"(\w[\w/:.]*)=(.*?)(?=\s+\w[\w/:.]*=|\s*$)", text):
        out[m.group(1)] = m.group(2).strip()
    return out


# ---- partitions and nodes -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    memory_mb: int
    gpus: int  # GPUs in the node's GRES (0: none)
    features: frozenset
    partitions: tuple
    state: str


@dataclass(frozen=True)
class Partition:
    name: str
    nodes: tuple
    default: bool
    max_time_min: int | None  # None: unlimited
    state: str
    allow_accounts: tuple  # ("ALL",) when open
    allow_qos: tuple
    qos: str | None  # the partition's own QOS
    max_mem_per_node_mb: int | None


def gres_gpus(gres: str) -> int:
    """GPUs in a GRES string: ``gpu:2``, ``gpu:a100:4(S:0-1)``, ``gpu:tesla:2,mps:100`` -> 2, 4, 2; ``(null)`` -> 0."""
    total = 0
    for part in re.split(r",(?![^(]*\))", gres or ""):
        part = re.sub(r"\(.*?\)", "", part).strip()
        bits = part.split(":")
        if bits and bits[0] == "gpu":
            total += int(bits[-1]) if len(bits) > 1 and bits[-1].isdigit() else 1
    return total


def parse_time_min(text: str) -> int | None:
    """SLURM time limits (``UNLIMITED``, ``30``, ``2:00:00``, ``1-12:00:00``) -> minutes, None when unlimited."""
    text = (text or "").strip()
    if not text or text.upper() in ("UNLIMITED", "INFINITE", "NONE", "N/A"):
        return None
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
    parts = [int(p) for p in text.split(":")]
    if len(parts) == 1:
        minutes = parts[0] if not days else parts[0] * 60  # "D-H"
    elif len(parts) == 2:
        minutes = parts[0] if not days else parts[0] * 60 + parts[1]  # "M:S" or "D-H:M"
    else:
        minutes = parts[0] * 60 + parts[1] + (1 if parts[2] else 0)
    return days * 1440 + minutes


def read_partitions() -> dict[str, Partition]:
    out = {}
    for line in _run(["scontrol", "show", "partition", "-o"]).splitlines():
        f = _fields(line)
        if "PartitionName" not in f:
            continue
        nodes = tuple(expand_hostlist(f.get("Nodes", ""))) if f.get("Nodes", "(null)") != "(null)" else ()
        mem = f.get("MaxMemPerNode", "UNLIMITED")
        out[f["PartitionName"]] = Partition(
            name=f["PartitionName"], nodes=nodes, default=f.get("Default") == "YES",
            max_time_min=parse_time_min(f.get("MaxTime", "")), state=f.get("State", "UP"),
            allow_accounts=tuple(f.get("AllowAccounts", "ALL").split(",")),
            allow_qos=tuple(f.get("AllowQos", "ALL").split(",")),
            qos=None if f.get("QoS", "N/A") in ("N/A", "(null)", "") else f["QoS"],
            max_mem_per_node_mb=int(mem) if mem.isdigit() else None)
    return out


def read_nodes() -> dict[str, Node]:
    out = {}
    for line in _run(["scontrol", "show", "node", "-o"]).splitlines():
        f = _fields(line)
        if "NodeName" not in f:
            continue
        features = f.get("AvailableFeatures", "(null)")
        out[f["NodeName"]] = Node(
            name=f["NodeName"], cpus=int(f.get("CPUTot", "0") or 0), memory_mb=int(f.get("RealMemory", "0") or 0),
            gpus=gres_gpus(f.get("Gres", "")), state=f.get("State", ""),
            features=frozenset() if features == "(null)" else frozenset(features.split(",")),
            partitions=tuple(p for p in f.get("Partitions", "").split(",") if p))
    return out


def expand_hostlist(hostlist: str) -> list[str]:
    """``node[01-03],gpu1`` -> node names (``scontrol show hostnames``)."""
    hostlist = (hostlist or "").strip()
    if not hostlist:
        return []
    if "[" not in hostlist:
        return [h for h in hostlist.split(",") if h]
    return _run(["scontrol", "show", "hostnames", hostlist]).split()


# ---- submit limits ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SubmitLimit:
    what: str  # e.g. "GrpSubmitJobs of account 'lab'"
    limit: int
    used: int

    @property
    def free(self) -> int:
        return max(0, self.limit - self.used)

    def describe(self) -> str:
        return f"{self.what} = {self.limit} ({self.used} in use)"


@dataclass(frozen=True)
class ClusterLimits:
    max_array_size: int  # array indices must be < MaxArraySize
    max_job_count: int
    submit_limits: tuple = ()  # the SubmitLimits that apply to this user/account/QOS/partition

    @property
    def free_slots(self) -> int | None:
        """Jobs (array tasks count one each) that can be submitted now; None when no limit applies."""
        return min((lim.free for lim in self.submit_limits), default=None)

    @property
    def binding(self) -> SubmitLimit | None:
        return min(self.submit_limits, key=lambda lim: lim.free, default=None)


def _config() -> str:
    return _run(["scontrol", "show", "config"])


def _config_value(config: str, name: str) -> str:
    m = re.search(rf"^{name}\s*=\s*(.*)$", config, re.MULTILINE)
    return m.group(1).strip() if m else ""


def _records(text: str, start: str) -> list[dict[str, str]]:
    """Records of ``scontrol show assoc_mgr``: each starts with a line ``ClusterName=...`` or ``QOS=...``."""
    records, current = [], None
    for line in text.splitlines():
        if line.startswith(start + "="):
            current = {"_text": line}
            records.append(current)
        elif current is not None:
            current["_text"] += "\n" + line
    for r in records:
        r.update(_fields(r["_text"].replace("\n", " ")))
    return records


def _limit_used(value: str | None) -> tuple[int | None, int]:
    """``7(3)`` -> (7, 3); ``N(3)`` -> (None, 3); ``5`` -> (5, 0); empty -> (None, 0)."""
    m = re.fullmatch(r"(\w+)(?:\((\d+)\))?", (value or "").strip())
    if not m:
        return None, 0
    return (int(m.group(1)) if m.group(1).isdigit() else None), int(m.group(2) or 0)


@dataclass
class Association:
    user: str
    account: str
    partition: str = ""
    qos: list = field(default_factory=list)
    default_qos: str = ""


def user_associations(user: str | None = None) -> list[Association]:
    user = user or getpass.getuser()
    out = _run(["sacctmgr", "-nP", "show", "assoc", "where", f"user={user}",
                "format=account,partition,qos,defaultqos"])
    assocs = []
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) >= 4 and parts[0]:
            assocs.append(Association(user, parts[0], parts[1], [q for q in parts[2].split(",") if q], parts[3]))
    return assocs


def default_account(user: str | None = None) -> str | None:
    user = user or getpass.getuser()
    out = _run(["sacctmgr", "-nP", "show", "user", user, "format=defaultaccount"]).strip()
    return out.splitlines()[0] if out else None


def enforced(config: str | None = None) -> set[str]:
    config = config if config is not None else _config()
    return {p.strip().lower() for p in _config_value(config, "AccountingStorageEnforce").split(",") if p.strip()}


def read_limits(account: str | None = None, qos: str | None = None, partition: str | None = None) -> ClusterLimits:
    """MaxArraySize and the submit limits that apply to a job of this user in ``account`` (default: the user's
    default account), ``qos`` (default: the association's default QOS) and ``partition`` (default: the default
    partition): the association's MaxSubmitJobs and the GrpSubmitJobs of it and every parent account, the QOS's
    GrpSubmitJobs, MaxSubmitJobsPerUser and MaxSubmitJobsPerAccount, the partition QOS's too, each with its
    current use. Limits are read only where the cluster enforces them (AccountingStorageEnforce=limits)."""
    config = _config()

    def value(name: str, default: int) -> int:
        v = _config_value(config, name)
        return int(v) if v.isdigit() else default

    base = dict(max_array_size=value("MaxArraySize", 1001), max_job_count=value("MaxJobCount", 10000))
    if not ({"limits", "safe"} & enforced(config)):
        return ClusterLimits(**base)
    try:
        return ClusterLimits(**base, submit_limits=tuple(_submit_limits(account, qos, partition)))
    except BenchError:
        # no accounting (sacctmgr/assoc_mgr unavailable): sbatch's own refusal is still handled per array
        return ClusterLimits(**base)


def _submit_limits(account: str | None, qos: str | None, partition: str | None) -> list[SubmitLimit]:
    user = getpass.getuser()
    uid = str(os.getuid())
    account = account or default_account(user)
    limits: list[SubmitLimit] = []
    if not account:
        return limits
    if partition is None:
        partition = next((p.name for p in read_partitions().values() if p.default), None)
    # the association chain: the user's association, its account, the parent accounts up to root
    assoc_text = _run(["scontrol", "show", "assoc_mgr", "flags=assoc", f"users={user}", f"accounts={account}"])
    records = _records(assoc_text, "ClusterName")
    mine = [r for r in records if r.get("Account") == account and r.get("UserName", "").split("(")[0] == user]
    user_rec = next((r for r in mine if r.get("Partition") == partition), None) or \
        next((r for r in mine if not r.get("Partition")), None)
    chain = []
    acc, seen = account, set()
    while acc and acc not in seen:
        seen.add(acc)
        recs = records if acc == account else _records(
            _run(["scontrol", "show", "assoc_mgr", "flags=assoc", f"users={user}", f"accounts={acc}"]), "ClusterName")
        rec = next((r for r in recs if r.get("Account") == acc and not r.get("UserName")), None)
        if rec is None:
            break
        chain.append(rec)
        acc = rec.get("ParentAccount", "").split("(")[0]
    if user_rec is not None:
        _, used_by_user = _limit_used(user_rec.get("GrpSubmitJobs"))
        # MaxSubmitJobs: the user's association's, else inherited from the nearest account that sets one
        for rec in [user_rec, *chain]:
            max_submit, _ = _limit_used(rec.get("MaxSubmitJobs"))
            if max_submit is not None:
                where = "your association" if rec is user_rec else f"account {rec['Account']!r}"
                limits.append(SubmitLimit(f"MaxSubmitJobs of {where}", max_submit, used_by_user))
                break
        grp, used = _limit_used(user_rec.get("GrpSubmitJobs"))
        if grp is not None:
            limits.append(SubmitLimit(f"GrpSubmitJobs of your association in account {account!r}", grp, used))
    for rec in chain:
        grp, used = _limit_used(rec.get("GrpSubmitJobs"))
        if grp is not None:
            limits.append(SubmitLimit(f"GrpSubmitJobs of account {rec['Account']!r}", grp, used))
    # QOS: the job's (given, else the association's default) and the partition's
    names = []
    if qos:
        names.append(qos)
    else:
        assoc = next((a for a in user_associations(user) if a.account == account and a.partition == (partition or "")),
                     None) or next((a for a in user_associations(user) if a.account == account and not a.partition),
                                   None)
        if assoc and assoc.default_qos:
            names.append(assoc.default_qos)
        elif assoc and len(assoc.qos) == 1:
            names.append(assoc.qos[0])
        else:
            names.append("normal")
    if partition:
        part = read_partitions().get(partition)
        if part and part.qos and part.qos not in names:
            names.append(part.qos)
    for name in names:
        table = _run(["sacctmgr", "-nP", "show", "qos", name, "format=name,maxsubmitpu,maxsubmitpa"]).strip()
        row = next((line.split("|") for line in table.splitlines() if line.split("|")[0] == name), None)
        text = _run(["scontrol", "show", "assoc_mgr", "flags=qos", f"qos={name}"])
        rec = next((r for r in _records(text, "QOS") if r.get("QOS", "").split("(")[0] == name), None)
        if rec is None:
            continue
        grp, used = _limit_used(rec.get("GrpSubmitJobs"))
        if grp is not None:
            limits.append(SubmitLimit(f"GrpSubmitJobs of QOS {name!r}", grp, used))
        per_user = int(row[1]) if row and len(row) > 1 and row[1].isdigit() else None
        per_account = int(row[2]) if row and len(row) > 2 and row[2].isdigit() else None
        body = rec["_text"]
        if per_user is not None:
            m = re.search(rf"User Limits.*?^\s*(?:\S+\()?{uid}\)?\s*$.*?MaxSubmitJobsPU=\w+\((\d+)\)", body,
                          re.S | re.M)
            limits.append(SubmitLimit(f"MaxSubmitJobsPerUser of QOS {name!r}", per_user, int(m.group(1)) if m else 0))
        if per_account is not None:
            m = re.search(rf"Account Limits.*?^\s*{re.escape(account)}(?:\(\d+\))?\s*$.*?"
                          rf"MaxSubmitJobsPA=\w+\((\d+)\)", body, re.S | re.M)
            limits.append(SubmitLimit(f"MaxSubmitJobsPerAccount of QOS {name!r}", per_account,
                                      int(m.group(1)) if m else 0))
    return limits


LIMIT_REASONS = ("SubmitJobsLimit", "SubmitJobLimit", "MaxSubmitJob", "job submit limit", "QOSMaxSubmitJob",
                 "AssocGrpSubmitJobsLimit", "AssocMaxSubmitJobLimit", "QOSGrpSubmitJobsLimit")


def is_submit_limit_error(message: str) -> bool:
    return any(r.lower() in message.lower() for r in LIMIT_REASONS)


# ---- job states ---------------------------------------------------------------------------------------------------

def sacct_states(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """One batched sacct call: job id (``123`` or ``123_4``) -> {state, exit_code, reason, elapsed}."""
    job_ids = [j for j in job_ids if j]
    if not job_ids:
        return {}
    roots = sorted({j.split("_")[0] for j in job_ids})
    out = _run(["sacct", "-n", "-P", "-X", "-j", ",".join(roots), "--format=JobID,State,ExitCode,Reason,Elapsed"])
    states = {}
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) < 5:
            continue
        job, state, code, reason, elapsed = parts[:5]
        states[job] = {"state": state.split()[0], "exit_code": code, "reason": reason, "elapsed": elapsed}
    return states


def expand_array_states(states: dict[str, dict[str, str]], job_id: str) -> dict[str, str] | None:
    """State of one array task, also when sacct shows it inside a pending range like ``123_[4-9]``."""
    if job_id in states:
        return states[job_id]
    if "_" not in job_id:
        return None
    root, index = job_id.split("_", 1)
    for key, value in states.items():
        m = re.fullmatch(rf"{root}_\[(.+)\]", key)
        if not m:
            continue
        for part in m.group(1).split("%")[0].split(","):
            lo, _, hi = part.partition("-")
            if lo.isdigit() and (int(lo) <= int(index) <= int(hi or lo)):
                return value
    return None


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        _run(["scancel", *sorted(set(job_ids))])
