"""The thread plumbing shared by drivers that work in the background (replayers, recorders)."""

from __future__ import annotations

import threading
from typing import Self


class BackgroundWorker:
    """One worker thread per object: `stop()` asks it to finish, `join()` waits and re-raises
    the error it died of, so a caller never mistakes a crashed replay for a finished one.

    Subclasses create `self._stop` (an Event) in __init__ and start `self._thread`, storing
    any exception of the thread in `self.error`; `_release()` frees what the thread used.
    """

    _stop: threading.Event
    _thread: threading.Thread | None = None
    error: BaseException | None = None

    def stop(self) -> None:
        """Ask the thread to stop after its current step."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread; True once it has finished. Re-raises an error it hit."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False
        if self.error is not None:
            raise self.error
        return True

    def close(self) -> None:
        """Stop, wait a moment for the thread, then release its resources (idempotent)."""
        self.stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)
        self._release()

    def _release(self) -> None:
        """Free the streams or files the worker used (subclasses override)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
