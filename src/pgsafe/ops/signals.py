"""Turning termination signals into an exception, so that cleanup code runs.

A command that starts servers or leaves temporary files behind wraps its work in
``interruptible()``: SIGINT, SIGTERM and SIGHUP then raise ``Interrupted`` in the main
thread, unwinding through its ``finally`` blocks. Cleanup itself runs inside
``shielded()``, where further signals are held until it is done (a second Ctrl-C must
not leave a half-removed scratch server behind). Outside the main thread both are
no-ops: Python delivers signals to the main thread only.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from pgsafe.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _raise(signum: int, _frame: Any) -> None:
    raise Interrupted(f"interrupted by {signal.Signals(signum).name}")


@contextmanager
def interruptible() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def shielded() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP while the block runs; raise Interrupted afterwards
    if one arrived (unless an exception is already on its way)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _f: pending.append(signum)) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if pending:
        _raise(pending[0], None)
