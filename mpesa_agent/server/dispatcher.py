"""Delivers the webhook outbox (webhooks, and email / SMS / WhatsApp through channels.py), off every
request thread: one thread picks due rows and hands them to a pool of senders, records each attempt
(a batch per commit) and reschedules failures. Started by serve.py beside the reconciler.

At least once: a row leaves `pending` only in the commit that records its 2xx (or its last
failure), so a crash between sending and recording sends it again after the restart. Receivers
deduplicate on `webhook-id`. Only the dispatcher's own process sends, so rows in flight are
tracked in memory.
"""
from __future__ import annotations

import logging
import queue
import smtplib
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import requests

from mpesa_agent.config import Settings
from mpesa_agent.payments.webhooks import signed_headers
from mpesa_agent.server import channels
from mpesa_agent.server.outbox import RESPONSE_KEPT, Attempt, Delivery, Outbox, url_problem
from mpesa_agent.server.store import utcnow

log = logging.getLogger("callback_server.webhooks")

DELIVERY_THREADS = 32  # attempts in flight at once (a slow receiver holds one each for up to the timeout)
PER_ENDPOINT = 16  # attempts in flight to one endpoint: a slow or dead one never takes every sender
IDLE_SECONDS = 1.0  # without a wake-up, look again this often (another process's commits, clock drift)


class Dispatcher:
    """`start()` runs it in a daemon thread; `stop()` ends it (attempts in flight are sent again later)."""

    def __init__(self, outbox: Outbox, settings: Settings, threads: int = DELIVERY_THREADS):
        self.outbox, self.settings, self.threads = outbox, settings, threads
        self._wake, self._stopping = threading.Event(), threading.Event()
        self._finished: queue.SimpleQueue[Attempt] = queue.SimpleQueue()
        self._in_flight: dict[int, str] = {}  # outbox id -> endpoint id
        self._sessions = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "Dispatcher":
        self.outbox.store.outbox_listeners.append(self._wake.set)  # rows were queued: send them now
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="webhook")
        self._thread = threading.Thread(target=self._run, name="webhook-dispatcher", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)
        if self._pool:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()  # before looking: a wake-up while we look is not lost
            try:
                # PostgreSQL: one process sends (SQLite: always us); the others wait to take over.
                pause = self.run_once() if self.outbox.store.leader("webhook dispatcher") else IDLE_SECONDS
            except Exception:  # the database refused, say: the rows stay pending
                log.exception("webhook dispatcher: pass failed; trying again in %s s", IDLE_SECONDS)
                pause = IDLE_SECONDS
            self._wake.wait(pause)

    def run_once(self) -> float:
        """Record finished attempts and send what is due; returns how long to sleep at most."""
        finished = []
        while not self._finished.empty():
            finished.append(self._finished.get())
        if finished:
            for note in self.outbox.record(finished, self.settings.webhook_retry_schedule, time.time()):
                log.warning("webhook endpoint %s", note)
            for attempt in finished:
                self._in_flight.pop(attempt.delivery.outbox_id, None)
        free, busy = self.threads - len(self._in_flight), Counter(self._in_flight.values())
        for endpoint_id in self.outbox.enabled_ids() if free > 0 else ():
            room = min(free, PER_ENDPOINT - busy[endpoint_id])
            for delivery in self.outbox.due(time.time(), room + busy[endpoint_id], endpoint_id) if room > 0 else ():
                if room > 0 and delivery.outbox_id not in self._in_flight:
                    self._in_flight[delivery.outbox_id] = endpoint_id
                    room, free = room - 1, free - 1
                    self._pool.submit(self._send, delivery)
        next_due, now = self.outbox.next_due(), time.time()
        if next_due is None or next_due <= now:  # nothing queued, or all due rows are in flight: a finish wakes us
            return IDLE_SECONDS
        return min(IDLE_SECONDS, next_due - now)

    def _send(self, delivery: Delivery) -> None:
        """One attempt: POST the signed message (only a 2xx is a success), or send the notification."""
        started, attempted_at = time.perf_counter(), utcnow()
        status, text, delivered = None, "", None
        try:
            if channels.is_channel(delivery.url):  # email, SMS or WhatsApp (server/channels.py)
                status, delivered, text = channels.send(delivery, self.settings, self._session())
            elif problem := url_problem(delivery.url, self.settings.webhooks_allow_private_urls):  # DNS may change
                text = f"not sent: the url's {problem}"
            else:
                body = delivery.body
                headers = signed_headers(str(delivery.event.id), body, delivery.secrets, time.time())
                with self._session().post(delivery.url, data=body.encode(), headers=headers, stream=True,
                                          timeout=self.settings.webhook_timeout, allow_redirects=False) as response:
                    status = response.status_code
                    text = response.raw.read(RESPONSE_KEPT * 4, decode_content=True).decode("utf-8", "replace")
        except requests.Timeout:
            text = f"no answer within {self.settings.webhook_timeout:g} s"
        except (requests.RequestException, OSError, smtplib.SMTPException) as exc:
            text = f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            log.exception("webhook %s to %s: unexpected error", delivery.event.id, delivery.endpoint_id)
            text = f"internal error ({type(exc).__name__})"
        finally:
            self._finished.put(Attempt(delivery, status, (time.perf_counter() - started) * 1000, text, attempted_at,
                                       delivered))
            self._wake.set()

    def _session(self) -> requests.Session:
        """One keep-alive session per sender thread; no proxies from the environment (the url is what was checked)."""
        session = getattr(self._sessions, "session", None)
        if session is None:
            session = self._sessions.session = requests.Session()
            session.trust_env = False
        return session
