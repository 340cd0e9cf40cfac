"""A local webhook receiver for tests, the reliability report and the benchmark: it verifies every
delivery with the `standardwebhooks` library, as a real receiver would, and records it."""
from __future__ import annotations

import threading
import time
from typing import Callable, NamedTuple

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from waitress import create_server

from harness import free_port


class Received(NamedTuple):
    webhook_id: str
    verified: bool
    message: dict | str  # the verified message, or why verification failed
    status: int  # what the receiver answered
    at: float  # time.monotonic() when it arrived


class Receiver:
    """An HTTP endpoint on 127.0.0.1 (`url`) answering each POST after `delay` seconds: first the
    statuses in `answers`, then 200; 401 when the signature does not verify with `secret`."""

    def __init__(self, delay: float = 0.0, answers: tuple[int, ...] = (), threads: int = 64):
        self.delay, self.answers, self.secret = delay, list(answers), None
        self.received: list[Received] = []
        self._changed = threading.Condition()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        self._server = create_server(self._app, host="127.0.0.1", port=self.port, threads=threads)

    def __enter__(self) -> "Receiver":
        threading.Thread(target=self._server.run, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.close()

    def _app(self, environ, start_response):
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        headers = {key[5:].replace("_", "-").lower(): value for key, value in environ.items() if key.startswith("HTTP_")}
        try:
            message, verified = Webhook(self.secret).verify(body, headers), True
        except (WebhookVerificationError, ValueError, TypeError) as exc:
            message, verified = f"{type(exc).__name__}: {exc}", False
        if self.delay:
            time.sleep(self.delay)
        with self._changed:
            status = (self.answers.pop(0) if self.answers else 200) if verified else 401
            self.received.append(Received(headers.get("webhook-id", ""), verified, message, status, time.monotonic()))
            self._changed.notify_all()
        start_response(f"{status} {'OK' if status < 300 else 'Not OK'}", [("Content-Type", "text/plain")])
        return [b"received" if status < 300 else b"try again"]

    def wait_for(self, condition: Callable[[list[Received]], bool], timeout: float) -> bool:
        """Block until `condition(received)` holds (True) or `timeout` passes (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: condition(self.received), timeout)

    def delivered_ids(self) -> set[int]:
        """Event ids received, verified and answered 2xx."""
        with self._changed:
            return {int(r.webhook_id) for r in self.received if r.verified and r.status < 300}
