"""Work off the GUI thread: napari thread workers with progress, Cancel and one-line errors.

A job is a function ``work(report, cancel)`` run in a :func:`napari.qt.threading.create_worker`
thread. ``report(value)`` sends progress to the GUI thread through a Qt signal (queued across
threads, so widgets are only touched there); ``cancel`` is a :class:`CancelToken` that the
work polls. A :class:`~photongap.errors.PhotongapError` ends the job as a napari error
notification with the command line's one-line text, never as a traceback; other exceptions
are bugs and reach napari's own error handler with their traceback, as ``--debug`` would.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from napari.qt.threading import FunctionWorker, create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QObject, Signal

from photongap.errors import PhotongapError


class Cancelled(Exception):
    """Raised inside a job once its Cancel button was pressed (the job then leaves no result)."""


class CancelToken:
    """A flag the GUI thread sets and the worker thread polls."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if Cancel was pressed."""
        if self._event.is_set():
            raise Cancelled


class _CancellableWorker(FunctionWorker):
    """napari's function worker whose ``quit`` cancels the job.

    napari calls ``quit`` on running tasks from its activity panel and when the window closes;
    a plain function worker would only stop announcing its result and run on.
    """

    cancel_token: CancelToken | None = None

    def quit(self) -> None:
        if self.cancel_token is not None:
            self.cancel_token.cancel()


@dataclass(frozen=True)
class _Failed:
    message: str


class _Stopped:
    """What a cancelled job returns (not an exception: a worker re-raises a returned exception)."""


class _Relay(QObject):
    report = Signal(object)


class Job:
    """A running job: its worker, its cancel flag and the signal its reports travel by.

    Parameters
    ----------
    work : callable
        ``work(report, cancel) -> result``, run in the worker thread.
    on_report : callable
        Called in the GUI thread with each reported value.
    on_done : callable
        Called in the GUI thread with the result.
    on_end : callable
        Called in the GUI thread when the job is over, however it ended, with how it ended
        (``"done"``, ``"cancelled"``, ``"failed"``, after the error notification, or
        ``"crashed"``) and the error's message (empty unless it failed).
    """

    def __init__(self, work: Callable[[Callable[[Any], None], CancelToken], Any], *, on_report: Callable[[Any], None],
                 on_done: Callable[[Any], None], on_end: Callable[[str, str], None]) -> None:
        self.cancel_token = CancelToken()
        self._relay = _Relay()  # made here, in the GUI thread: its signal is delivered there
        self._relay.report.connect(on_report)
        self._on_done, self._on_end = on_done, on_end
        self._ended = False

        def guarded() -> Any:
            try:
                return work(self._relay.report.emit, self.cancel_token)
            except Cancelled:
                return _Stopped()
            except PhotongapError as error:
                return _Failed(str(error))
            except MemoryError:
                return _Failed("out of memory; try smaller tiles, fewer samples or a smaller image")

        # _ignore_errors: napari's worker already notifies of an exception once; not twice.
        self.worker = create_worker(guarded, _ignore_errors=True, _worker_class=_CancellableWorker)
        self.worker.cancel_token = self.cancel_token
        self.worker.returned.connect(self._returned)
        self.worker.errored.connect(lambda error: self._end("crashed"))
        self.worker.finished.connect(lambda: self._end("crashed"))  # a no-op once returned or errored ended it
        self.worker.start()

    def cancel(self) -> None:
        self.cancel_token.cancel()

    @property
    def running(self) -> bool:
        return not self._ended

    def _returned(self, outcome: Any) -> None:
        if isinstance(outcome, _Stopped):
            self._end("cancelled")
        elif isinstance(outcome, _Failed):
            show_error(outcome.message)
            self._end("failed", outcome.message)
        else:
            try:
                self._on_done(outcome)
            finally:
                self._end("done")

    def _end(self, how: str, message: str = "") -> None:
        if self._ended:
            return
        self._ended = True
        self._on_end(how, message)
