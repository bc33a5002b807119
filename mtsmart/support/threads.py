"""How many intra-op threads a run uses (`train.threads`; docs/performance.md "A shared machine").

Two jobs that each start one thread per core on the same cores spin against each other: on the
2-core machine a quickstart beside one other job took 2.7x its idle time and spent 40% of its CPU
time in the kernel. So by default a run takes the cores that are not already busy when it starts.
"""
from __future__ import annotations

import os
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
    `mtsmart study` set it); else the cores not already busy — cores − the 1-minute load average,
    rounded, at least 1."""
    if configured > 0:
        return configured, "train.threads"
    if env.get("OMP_NUM_THREADS", "").strip():
        try:
            return max(1, int(env["OMP_NUM_THREADS"])), "OMP_NUM_THREADS"
        except ValueError:
            pass  # torch itself ignores a malformed value; so does this
    cores = available_cores() if cores is None else cores
    load = os.getloadavg()[0] if load is None else load
    threads = max(1, cores - round(load))
    return threads, f"{cores} cores, load average {load:.1f} at start; train.threads=N to choose"
