"""CPU threads: an OpenMP wait policy that suits the machine's load, and a thread count from the CPUs this process may use.

PyTorch's CPU kernels run on an OpenMP thread pool. By default its threads *spin* (busy-wait)
for a while between parallel regions, and the pool has one thread per core of the machine.
Both are right on an idle machine and wrong on a shared one (a laptop with a browser, a
workstation, a CI box, a cluster node running several jobs): spinning threads take CPU from
the threads that do the work, and a process confined to a few cores (``taskset``, cgroups,
Slurm) still starts one thread per core of the machine.

Measured on a 2-core machine (``bench/threads.py``): beside one CPU-bound process,
``OMP_WAIT_POLICY=PASSIVE`` makes a PGD-7 training step 1.8x faster than PyTorch's default;
on the idle machine it makes it 1.2-1.5x *slower* (sleeping threads wake up late for every
small parallel region). So robsal

* sets ``OMP_WAIT_POLICY=PASSIVE`` when ``robsal`` is imported before ``torch``, the user has
  not set a policy, and other processes keep at least half a CPU busy at that moment
  (:func:`configure_wait_policy`, sampling ``/proc/stat`` for 0.1 s; OpenMP reads the policy
  once, when torch loads it, so it cannot change later in the process). The wait policy
  changes speed only, never a result.
* sets the intra-op thread count to the CPUs this process may use (``os.sched_getaffinity``),
  divided among the processes of a ``torchrun`` job on the same node (``LOCAL_WORLD_SIZE``)
  and at most PyTorch's own default (one per physical core, or ``OMP_NUM_THREADS``),
  unless a count is asked for (``--threads N``, the config's ``threads``, or
  ``ROBSAL_THREADS``) (:func:`set_threads`). The count does not follow the load: CPU
  kernels sum in a thread-dependent order, and a run must not change with its neighbours.
"""

from __future__ import annotations

import os
import sys

from robsal.errors import ConfigError

WAIT_POLICY = "OMP_WAIT_POLICY"
THREADS_ENV = "ROBSAL_THREADS"


BUSY_THRESHOLD = 0.5  # CPUs kept busy by other processes from which the passive policy pays


def configure_wait_policy(busy: float | None = None) -> str | None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` on a loaded machine, unless a policy is set or torch is loaded.

    ``busy``: CPUs (of this process's) kept busy by others; None = :func:`busy_cpus`.
    Returns the policy now in the environment (None: the runtime's default applies).
    """
    if WAIT_POLICY in os.environ or "torch" in sys.modules:
        return os.environ.get(WAIT_POLICY)
    if (busy_cpus() if busy is None else busy) >= BUSY_THRESHOLD:
        os.environ[WAIT_POLICY] = "PASSIVE"
    return os.environ.get(WAIT_POLICY)


def _cpu_times() -> dict[int, tuple[int, int]]:
    """cpu index -> (idle + iowait jiffies, total jiffies) from /proc/stat ({} where there is none)."""
    out = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if name.startswith("cpu") and name[3:].isdigit():
                    v = [int(x) for x in fields[:8]]
                    out[int(name[3:])] = (v[3] + v[4], sum(v))
    except (OSError, ValueError):
        return {}
    return out


def busy_cpus(window: float = 0.1) -> float:
    """How many of this process's CPUs other processes keep busy, sampled over ``window`` seconds (0 if unknown)."""
    import time

    try:
        mine = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        mine = None
    a = _cpu_times()
    if not a:
        return 0.0
    time.sleep(window)
    b = _cpu_times()
    busy = 0.0
    for cpu, (idle1, total1) in b.items():
        if (mine is not None and cpu not in mine) or cpu not in a:
            continue
        d_total = total1 - a[cpu][1]
        if d_total > 0:
            busy += 1.0 - (idle1 - a[cpu][0]) / d_total
    return busy


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        return max(1, os.cpu_count() or 1)


_TORCH_DEFAULT: list[int] = []  # torch's own thread count before robsal first changed it


def torch_default_threads() -> int:
    """PyTorch's own default (one thread per physical core, or OMP_NUM_THREADS), before any change."""
    import torch

    if not _TORCH_DEFAULT:
        _TORCH_DEFAULT.append(torch.get_num_threads())
    return _TORCH_DEFAULT[0]


def default_threads() -> int:
    """The process's share of its CPUs (1/k for k local torchrun processes), at most PyTorch's default.

    The cap keeps PyTorch's choice where it is already right: one thread per physical core
    (not per hyper-thread) and ``OMP_NUM_THREADS`` when the user set it.
    """
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, min(available_cpus() // local, torch_default_threads()))


def parse_threads(value: object, source: str) -> int | None:
    """A thread count from a flag, config value or environment variable; None = the default."""
    if value is None or value == "":
        return None
    try:
        n = int(value)  # type: ignore[arg-type]
        if isinstance(value, float) and value != n:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {value!r} is not a whole number of threads; use e.g. {source.split()[0]} 2") from None
    if n < 1:
        raise ConfigError(f"{source}: must be >= 1 thread, got {n}")
    return n


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count to ``n``, else ``ROBSAL_THREADS``, else :func:`default_threads`.

    Returns the count set. Asking for more threads than CPUs available is allowed (the user
    may know better) but rarely helps.
    """
    import torch

    torch_default_threads()  # remember torch's own default before the first change
    if n is None:
        n = parse_threads(os.environ.get(THREADS_ENV), THREADS_ENV)
    n = default_threads() if n is None else int(n)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
