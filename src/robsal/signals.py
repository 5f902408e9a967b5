"""Ctrl-C (SIGINT) and SIGTERM: stop cleanly, never in the middle of a checkpoint write.

* :func:`handle_termination` (used by :func:`robsal.cli.main`) turns SIGTERM into a
  :class:`Terminated` exception, the way Python already turns SIGINT into
  ``KeyboardInterrupt``. Both derive from ``BaseException``, so no ``except Exception``
  swallows them; the atomic writers (:mod:`robsal.io`) delete their temporary files on
  the way out and the CLI prints one line and exits with 130 (SIGINT) or 143 (SIGTERM).
* :func:`deferred` holds both signals while a block runs (a checkpoint write) and
  delivers them when it ends, so the checkpoint that was being written is complete.

Only the main thread can install signal handlers; elsewhere both helpers do nothing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, as shells report it


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM (see :func:`handle_termination`)."""

    exit_code = EXIT_CODES[signal.SIGTERM]


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(f"received signal {signal.Signals(signum).name}")


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def handle_termination() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` (restored afterwards)."""
    if not _main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)


@contextlib.contextmanager
def deferred(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[list[int]]:
    """Hold ``signums`` while the block runs; re-deliver them (once each, in order) when it ends.

    A held SIGINT then raises ``KeyboardInterrupt`` and a held SIGTERM :class:`Terminated`
    (or whatever handler was installed before the block). Yields the list of held signals.
    Blocks nest: an inner block hands its held signals to the outer one.
    """
    pending: list[int] = []
    if not _main_thread():
        yield pending
        return

    def hold(signum: int, frame: object) -> None:
        pending.append(signum)

    old = {s: signal.signal(s, hold) for s in signums}
    try:
        yield pending
    finally:
        for s, handler in old.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        for s in dict.fromkeys(pending):
            signal.raise_signal(s)  # the restored handler runs now, in this thread
