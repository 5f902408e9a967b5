"""CPU threads: a passive OpenMP wait policy and a thread count from the CPUs this process may use.

PyTorch's CPU kernels run on an OpenMP thread pool. By default its threads *spin* (busy-wait)
between parallel regions, and the pool has one thread per physical core of the machine.
Both are right on an idle machine of one's own and wrong on a shared one (a laptop with a
browser, a workstation, a CI box, a cluster node running several jobs): spinning threads
take CPU from the threads that do the work, and a process confined to a few cores
(``taskset``, cgroups, Slurm) still starts one thread per core of the machine.

robsal therefore

* sets ``OMP_WAIT_POLICY=PASSIVE`` when ``robsal`` is imported before ``torch`` and the
  user has not set the variable (:func:`configure_wait_policy`; OpenMP reads it once, when
  torch loads its runtime, so it cannot be changed later in the process), and
* sets the intra-op thread count to the CPUs this process may use
  (``os.sched_getaffinity``), divided among the processes of a ``torchrun`` job on the same
  node (``LOCAL_WORLD_SIZE``), unless a count is asked for (``--threads N``, the config's
  ``threads``, or ``ROBSAL_THREADS``) (:func:`set_threads`).

``bench/threads.py`` measures both against PyTorch's defaults, idle and beside a CPU-bound
process.
"""

from __future__ import annotations

import os
import sys

from robsal.errors import ConfigError

WAIT_POLICY = "OMP_WAIT_POLICY"
THREADS_ENV = "ROBSAL_THREADS"


def configure_wait_policy() -> str | None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user set a policy or torch is already imported.

    Returns the policy now in the environment (None when none is set and torch was
    imported first, so the runtime's default applies).
    """
    if WAIT_POLICY not in os.environ and "torch" not in sys.modules:
        os.environ[WAIT_POLICY] = "PASSIVE"
    return os.environ.get(WAIT_POLICY)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """The process's share of its CPUs: all of them, or 1/k of them for k local torchrun processes."""
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, available_cpus() // local)


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

    if n is None:
        n = parse_threads(os.environ.get(THREADS_ENV), THREADS_ENV)
    n = default_threads() if n is None else int(n)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
