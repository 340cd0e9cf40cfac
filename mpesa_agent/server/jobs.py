"""What the callback server's background jobs share (the reconciler, the bulk sender): a daemon
thread running `_run` until `stop()`, and `poke()` to wake it before its next tick."""
from __future__ import annotations

import threading


class BackgroundJob:
    thread_name = "job"

    def __init__(self):
        self._stopped, self._poked = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None

    def start(self):
        self._stopped.clear()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def poke(self) -> None:
        """Something to do: look now."""
        self._poked.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopped.set()
        self._poked.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        raise NotImplementedError
