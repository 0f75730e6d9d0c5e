"""Check a suite's SLURM requests against the cluster before anything is submitted, and turn sbatch's refusals into
errors that name the suite key to change.

Checked (from ``scontrol show partition/node`` and ``sacctmgr``): the partition exists; the account and QOS are
allowed for this user (where associations are enforced) and by the partition; ``time_min`` is within the
partition's MaxTime; some node of the partition has enough CPUs, memory and GPUs (GRES), the ``constraint``
feature, and is not excluded by ``additional: {exclude: ...}``."""
from __future__ import annotations

import getpass
import re
import sys
from dataclasses import dataclass

from bench_harness.config.slurm import Resources
from bench_harness.errors import BenchError
from bench_harness.slurm import cluster


@dataclass
class Request:
    """One resource profile of the suite and where its settings come from (``origin('gpus')`` -> suite key)."""
    resources: Resources
    origin: object  # callable: setting name -> suite key
    runs: int = 0


class ClusterInfo:
    """What the checks need, read once per submission."""

    def __init__(self) -> None:
        self.partitions = cluster.read_partitions()
        self.nodes = cluster.read_nodes()
        self.enforce = cluster.enforced()
        self.user = getpass.getuser()
        self._assocs = None

    @property
    def associations(self) -> list[cluster.Association] | None:
        if self._assocs is None and "associations" in self.enforce:
            try:
                self._assocs = cluster.user_associations(self.user)
            except BenchError:
                self._assocs = []
        return self._assocs


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def check(requests: list[Request], info: ClusterInfo | None = None) -> None:
    """Raise one BenchError listing every problem (each with its suite key), or return quietly."""
    info = info or ClusterInfo()
    problems: list[str] = []
    for req in requests:
        problems += [p for p in _check_one(req, info) if p not in problems]
    if problems:
        raise BenchError("the suite's SLURM request does not fit the cluster; nothing was submitted:\n  - "
                         + "\n  - ".join(problems))


def _check_one(req: Request, info: ClusterInfo) -> list[str]:
    res, key = req.resources, req.origin
    out: list[str] = []
    if res.partition:
        part = info.partitions.get(res.partition)
        if part is None:
            known = ", ".join(sorted(info.partitions)) or "none"
            return [f"{key('partition')}: partition {res.partition!r} does not exist (partitions: {known})"]
    else:
        part = next((p for p in info.partitions.values() if p.default), None)
        if part is None:
            return [f"{key('partition')}: the cluster has no default partition; set one "
                    f"(partitions: {', '.join(sorted(info.partitions))})"]
    where = f"partition {part.name!r}"
    if part.state in ("DRAIN", "INACTIVE"):
        out.append(f"{key('partition')}: {where} is {part.state} and accepts no jobs")
    elif part.state != "UP":
        print(f"warning: {where} is {part.state}: jobs wait until it is up", file=sys.stderr)

    # account and QOS: the user's associations (when enforced) and the partition's allow lists
    assocs = info.associations
    account = res.account
    if assocs is not None and assocs:
        mine = {a.account for a in assocs}
        if account and account not in mine:
            out.append(f"{key('account')}: you ({info.user}) have no association with account {account!r} "
                       f"(yours: {', '.join(sorted(mine))})")
        if res.qos and "qos" in info.enforce:
            allowed = {q for a in assocs if not account or a.account == account for q in a.qos}
            if allowed and res.qos not in allowed:
                out.append(f"{key('qos')}: QOS {res.qos!r} is not allowed for your association "
                           f"(allowed: {', '.join(sorted(allowed))})")
    elif assocs is not None and not assocs and "associations" in info.enforce:
        out.append(f"{key('account')}: you ({info.user}) have no SLURM association on this cluster: ask its "
                   f"administrators for an account")
    if account and "ALL" not in part.allow_accounts and account not in part.allow_accounts:
        out.append(f"{key('account')}: {where} allows only accounts {', '.join(part.allow_accounts)}")
    if res.qos and "ALL" not in part.allow_qos and res.qos not in part.allow_qos:
        out.append(f"{key('qos')}: {where} allows only QOS {', '.join(part.allow_qos)}")

    if part.max_time_min is not None and res.time_min > part.max_time_min:
        out.append(f"{key('time_min')}: {res.time_min} min is above the MaxTime of {where} "
                   f"({part.max_time_min} min)")

    nodes = [info.nodes[n] for n in part.nodes if n in info.nodes]
    excluded = set()
    extra = dict(res.additional)
    if extra.get("exclude"):
        excluded = set(cluster.expand_hostlist(extra["exclude"]))
        nodes_left = [n for n in nodes if n.name not in excluded]
        if nodes and not nodes_left:
            out.append(f"{key('additional')}.exclude: excludes every node of {where} "
                       f"({', '.join(n.name for n in nodes)})")
        nodes = nodes_left
    if extra.get("nodelist"):
        wanted = set(cluster.expand_hostlist(extra["nodelist"]))
        unknown = wanted - {n.name for n in nodes} - excluded
        if unknown:
            out.append(f"{key('additional')}.nodelist: {', '.join(sorted(unknown))} not in {where}")
    if not nodes:
        return out
    max_cpus = max(n.cpus for n in nodes)
    if res.cpus > max_cpus:
        out.append(f"{key('cpus')}: {res.cpus} CPUs per task, but the largest node of {where} has {max_cpus}")
    mem_mb = int(res.mem_gb * 1024) if res.mem_gb else 0
    max_mem = max(n.memory_mb for n in nodes)
    if part.max_mem_per_node_mb:
        max_mem = min(max_mem, part.max_mem_per_node_mb)
    if mem_mb > max_mem:
        out.append(f"{key('mem_gb')}: {res.mem_gb:g} GB, but the nodes of {where} have at most "
                   f"{max_mem / 1024:.1f} GB")
    max_gpus = max(n.gpus for n in nodes)
    if res.gpus > max_gpus:
        if max_gpus == 0:
            out.append(f"{key('gpus')}: {res.gpus} GPU{'s' if res.gpus > 1 else ''} per task, but no node of "
                       f"{where} has GPUs (GRES gpu); choose a GPU partition or set gpus: 0")
        else:
            out.append(f"{key('gpus')}: {res.gpus} GPUs per task, but the nodes of {where} have at most {max_gpus}")
    feature = res.constraint
    if feature and re.fullmatch(r"[\w.-]+", feature):
        if not any(feature in n.features for n in nodes):
            features = sorted({f for n in nodes for f in n.features})
            out.append(f"{key('constraint')}: no node of {where} has feature {feature!r} "
                       f"(features: {', '.join(features) or 'none'})")
    if not out:
        fits = [n for n in nodes if n.cpus >= res.cpus and n.memory_mb >= mem_mb and n.gpus >= res.gpus
                and (not feature or not re.fullmatch(r"[\w.-]+", feature) or feature in n.features)]
        if not fits:
            out.append(f"{key('cpus')}/{key('mem_gb')}/{key('gpus')}: no single node of {where} has "
                       f"{res.cpus} CPUs, {res.mem_gb or 0:g} GB and {res.gpus} GPUs together")
    return out


# ---- sbatch's refusals -> the suite key to change -----------------------------------------------------------------

_SBATCH_ERRORS = [
    (r"invalid partition", "partition", "the partition does not exist or is not open to you"),
    (r"invalid account|account/partition combination", "account",
     "the account does not exist, or you have no association with it (for this partition)"),
    (r"invalid qos", "qos", "the QOS does not exist or your association may not use it"),
    (r"invalid generic resource|gres", "gpus", "no node offers the requested GPUs (GRES)"),
    (r"time limit", "time_min", "the time limit is above what the partition or QOS allows"),
    (r"memory", "mem_gb", "no node has the requested memory"),
    (r"invalid feature|feature specification", "constraint", "no node has the requested feature"),
    (r"node configuration is not available|requested node config",
     "cpus/mem_gb/gpus/constraint/additional.exclude",
     "no node of the partition satisfies the request (CPUs, memory, GPUs, features, excluded nodes)"),
    (r"invalid node name", "additional.nodelist/additional.exclude", "a node name is not known to the cluster"),
]


def explain_sbatch_error(message: str, origin) -> str:
    """sbatch's stderr -> a sentence naming the suite key (``origin(setting)``) to change."""
    text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    text = re.sub(r"^.*?sbatch: error: ", "sbatch: error: ", text)
    for pattern, setting, why in _SBATCH_ERRORS:
        if re.search(pattern, text, re.I):
            keys = "/".join(origin(s.partition(".")[0]) + (s[s.index("."):] if "." in s else "")
                            for s in setting.split("/"))
            return f"sbatch refused the job: {why}; change {keys} ({text})"
    return f"sbatch refused the job ({text}); check the suite's slurm: section"
