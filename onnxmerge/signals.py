"""Every way a run ends cleans up: SIGINT, SIGTERM and SIGHUP unwind the run like Ctrl-C does.

Python turns only SIGINT into an exception (KeyboardInterrupt); SIGTERM (``timeout``, a container stop, a
CI cancellation) and SIGHUP (a closed terminal) kill the process on the spot by default, so no ``finally``
runs: the build's weight folder (``onnxmerge.runtime.weights``) and the temporary file of an interrupted write
were left behind. Inside :func:`handled` all three raise :class:`Interrupted`, so every ``finally`` and
context manager on the way out runs (temporary outputs are unlinked, the weight folder is removed by its
finaliser at exit), and the CLI ends with one line and the shell's status for the signal (128 + number).

Temporary files registered with :func:`temporary` are also removed by an ``atexit`` hook, for the exits
that do not unwind (``sys.exit`` from a thread, an exception inside a cleanup). SIGKILL cannot be caught:
the weight folders it leaves are removed by the next run (``weights.remove_stale``).

SIGXFSZ is ignored while handled, so a file-size limit (``ulimit -f``) makes a write fail with EFBIG, which
the CLI reports in one line, instead of killing the process without a word.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
from collections.abc import Iterator

#: The signals a run turns into :class:`Interrupted` (those that exist on this platform).
HANDLED = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

_temporary: dict[str, None] = {}


class Interrupted(KeyboardInterrupt):
    """A termination signal, raised where the main thread was so the run unwinds and cleans up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.name = signal.Signals(signum).name

    @property
    def status(self) -> int:
        """The exit status a shell gives a process ended by this signal: 128 + its number."""
        return 128 + self.signum


def _raise(signum: int, frame) -> None:
    # the first signal starts the cleanup; a second one (an impatient Ctrl-C, a supervisor repeating
    # SIGTERM) must not interrupt it half-way, so later ones are ignored until the run is over
    for sig in HANDLED:
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Within the block (in the main thread), SIGINT/SIGTERM/SIGHUP raise :class:`Interrupted` and SIGXFSZ
    is ignored; the previous handlers are restored afterwards (the CLI may run inside another program)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in HANDLED}
    if hasattr(signal, "SIGXFSZ"):
        previous[signal.SIGXFSZ] = signal.getsignal(signal.SIGXFSZ)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    for sig in HANDLED:
        if previous[sig] is not signal.SIG_IGN:  # nohup's ignored SIGHUP stays ignored
            signal.signal(sig, _raise)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def register(path: str | os.PathLike) -> None:
    """Remove ``path`` at exit if it still exists then (an output's temporary file)."""
    _temporary[os.fspath(path)] = None


def unregister(path: str | os.PathLike) -> None:
    """``path`` was renamed into place or removed: nothing to do at exit."""
    _temporary.pop(os.fspath(path), None)


@contextlib.contextmanager
def temporary(path: str | os.PathLike) -> Iterator[None]:
    """``path`` is removed when the block ends, however it ends, unless the block renamed it away."""
    register(path)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        unregister(path)


@atexit.register
def _remove_leftovers() -> None:
    for path in list(_temporary):
        with contextlib.suppress(OSError):
            os.unlink(path)
    _temporary.clear()
