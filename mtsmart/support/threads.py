"""How many intra-op threads a run uses (`train.threads`; README "A shared machine").

Two jobs that each start one thread per core on the same cores spin against each other: on the
2-core machine a quickstart beside one other job took 2.7x its idle time and spent 40% of its CPU
time in the kernel. So by default a run takes the cores that are not already busy when it starts.
"""
from __future__ import annotations

import os
import time
from typing import Mapping, Optional


def available_cores() -> int:
    """Cores this process may run on (its affinity mask; cgroup CPU quotas are not read)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def choose_threads(configured: int, env: Mapping[str, str] = os.environ, cores: Optional[int] = None,
                   load: Optional[float] = None) -> tuple[int, str]:
    """(threads, why): train.threads when > 0; else OMP_NUM_THREADS when set (torchrun and
    `mtsmart study` set it); else the cores not already busy — cores − the busy cores measured
    over a quarter second (`load`, for tests), rounded, at least 1."""
    if configured > 0:
        return configured, "train.threads"
    if env.get("OMP_NUM_THREADS", "").strip():
        try:
            return max(1, int(env["OMP_NUM_THREADS"])), "OMP_NUM_THREADS"
        except ValueError:
            pass  # torch itself ignores a malformed value; so does this
    cores = available_cores() if cores is None else cores
    load = busy_cores() if load is None else load
    threads = max(1, cores - round(load))
    return threads, f"{cores} cores, {load:.1f} busy at start; train.threads=N to choose"


def busy_cores(seconds: float = 0.25) -> float:
    """How many cores other work keeps busy now: the machine's non-idle CPU time over a short
    sample (/proc/stat). The load average would lag a minute behind: right after a run ends it
    still counts it, and the next run would take too few threads."""
    try:
        first = _cpu_times()
        time.sleep(seconds)
        second = _cpu_times()
    except (OSError, ValueError):
        return os.getloadavg()[0]  # no /proc/stat (not Linux)
    idle = second[0] - first[0]
    total = second[1] - first[1]
    return 0.0 if total <= 0 else (os.cpu_count() or 1) * (1 - idle / total)


def _cpu_times() -> tuple[int, int]:
    """(idle + iowait, all) jiffies of the machine from /proc/stat's first line."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields[:8])  # user nice system idle iowait irq softirq steal
