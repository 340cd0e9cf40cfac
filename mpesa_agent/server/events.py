"""The event log over HTTP: `GET /events` (pages), `GET /events/stream` (Server-Sent Events) and
`GET /payment/<id>/events` (one payment's timeline). Readers only: the manager writes the log.

The stream sends every event with an id above the client's `Last-Event-ID` header (or `?after=`),
oldest first, then waits for new ones: ids strictly increase and an event is visible only once
its transaction is committed, so across a reconnect none is skipped and none repeated.
"""
from __future__ import annotations

import bisect
import math
import threading
import time
from typing import Callable

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context

from mpesa_agent.payments.callbacks import CHECKOUT_ID_PATTERN
from mpesa_agent.payments.states import EventType
from mpesa_agent.server.http import error, manager, seconds
from mpesa_agent.server.store import EVENT_POLL_SECONDS, MAX_EVENTS_PAGE, Event, Store

DEFAULT_PAGE = 100
KEEPALIVE_SECONDS = 15.0  # a comment line this often keeps proxies from closing an idle stream
RETRY_MILLISECONDS = 2000  # how soon an EventSource reconnects
BATCH_SECONDS = 0.1  # a stream sends at most this often: new events are gathered into one write
TAIL_KEPT = 10_000  # the newest events kept in memory for every stream of the process
FRAMES_KEPT = 20_000  # written frames kept (per framer and event)
EVENT_TYPES = frozenset(map(str, EventType))

blueprint = Blueprint("events", __name__)


@blueprint.get("/events")
def events():
    query, problem = _query(request.args.get("after"))
    if problem:
        return error(400, problem)
    limit, problem = _whole(request.args.get("limit"), "limit", DEFAULT_PAGE, 1, MAX_EVENTS_PAGE)
    if problem:
        return error(400, problem)
    store = manager().store
    found = store.events(limit=limit, **query)
    return jsonify({"events": [event.to_dict() for event in found],
                    "next_after": found[-1].id if found else query["after"], "last_id": store.last_event_id()})


@blueprint.get("/events/stream")
def stream():
    return stream_response(frame)


def stream_response(framer: Callable[[Event], str]):
    """The Server-Sent Events answer for this request's filters, each event written by `framer`
    (the dashboard's stream sends the same events with its own frames)."""
    query, problem = _query(request.headers.get("Last-Event-ID") or request.args.get("after"))
    if problem:
        return error(400, problem)
    lasting, problem = seconds(request.args.get("timeout"), None)  # none: the stream stays open
    if problem:
        return error(400, problem)
    keepalive = current_app.config.get("EVENTS_KEEPALIVE_SECONDS", KEEPALIVE_SECONDS)
    batch = current_app.config.get("EVENTS_BATCH_SECONDS", BATCH_SECONDS)
    tail = current_app.extensions["event_tail"]
    response = Response(stream_with_context(_sse(tail, keepalive, batch, lasting, framer, **query)),
                        mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


@blueprint.get("/payment/<checkout_request_id>/events")
def timeline(checkout_request_id: str):
    store = manager().store
    found = store.events(checkout_request_id=checkout_request_id, limit=MAX_EVENTS_PAGE)
    if not found and store.payment(checkout_request_id) is None:
        return error(404, f"no payment registered with checkout_request_id {checkout_request_id[:100]!r}",
                     checkout_request_id=checkout_request_id[:100])
    return jsonify({"checkout_request_id": checkout_request_id, "events": [event.to_dict() for event in found]})


class EventTail:
    """The newest events of one store, read from it once and shared by every stream of this
    process, with each event's frame written once per framer. A thousand streams then cost one
    query per batch of commits instead of two each, and one write each per BATCH_SECONDS."""

    def __init__(self, store: Store):
        self.store = store
        self.events: list[Event] = []  # ascending ids: every event with start < id <= last
        self.last = self.start = store.last_event_id()
        self._lock = threading.Lock()
        self._frames: dict[tuple[Callable, int], bytes] = {}
        self._polled_at = time.monotonic()

    def after(self, cursor: int, type: str | None, checkout_request_id: str | None) -> tuple[list[Event], int] | None:
        """The matching events after `cursor` and the id they reach, or None when `cursor` is older
        than what is kept (the stream then reads the store itself)."""
        self._refresh()
        with self._lock:
            if cursor < self.start:
                return None
            found = self.events[bisect.bisect_right(self.events, cursor, key=_event_id):]
            last = self.last
        if type is not None or checkout_request_id is not None:
            found = [e for e in found if (type is None or e.type == type)
                     and (checkout_request_id is None or e.checkout_request_id == checkout_request_id)]
        return found, last

    def frame(self, framer: Callable[[Event], str], event: Event) -> bytes:
        """The event as `framer` writes it, encoded once for every stream."""
        key = (framer, event.id)
        text = self._frames.get(key)
        if text is None:
            text = self._frames[key] = framer(event).encode()
            if len(self._frames) > FRAMES_KEPT:
                for old in list(self._frames)[:FRAMES_KEPT // 2]:
                    self._frames.pop(old, None)
        return text

    def poll(self) -> None:
        """Ask the database for its newest event id, once per EVENT_POLL_SECONDS for all streams:
        events another writer committed (a SQLite file has no wake-up from other processes;
        PostgreSQL's LISTEN may be reconnecting) are found within that time."""
        now = time.monotonic()
        if now - self._polled_at >= EVENT_POLL_SECONDS:
            self._polled_at = now
            self.store.saw_events(self.store.last_event_id())

    def _refresh(self) -> None:
        known = self.store.known_last_event_id  # committed up to here (store.py)
        if known <= self.last:
            return
        with self._lock:
            while self.last < known:
                found = self.store.events(after=self.last, until=known, limit=MAX_EVENTS_PAGE)
                self.events += found
                self.last = found[-1].id if len(found) == MAX_EVENTS_PAGE else known
            if len(self.events) > TAIL_KEPT:
                drop = len(self.events) - TAIL_KEPT
                self.start = self.events[drop - 1].id
                del self.events[:drop]


def _event_id(event: Event) -> int:
    return event.id


def _sse(tail: EventTail, keepalive: float, batch: float, lasting: float | None, framer: Callable[[Event], str],
         after: int, type: str | None, checkout_request_id: str | None):
    """Every matching event after `after`, then each new one as it is committed, for `lasting` seconds."""
    yield f"retry: {RETRY_MILLISECONDS}\n\n"
    store, cursor = tail.store, after
    ends = time.monotonic() + lasting if lasting is not None else math.inf
    while True:
        kept = tail.after(cursor, type, checkout_request_id)
        if kept is not None:  # the usual case: from memory
            found, reached = kept
            cursor = max(cursor, reached)  # a client may start ahead of the log: never go back
            if found:
                yield b"".join([tail.frame(framer, event) for event in found])
        else:  # far behind (a reconnect after a long time): page through the store
            horizon = store.last_event_id()  # everything up to here is committed: read it all
            while True:
                found = store.events(after=cursor, until=horizon, limit=MAX_EVENTS_PAGE, type=type,
                                     checkout_request_id=checkout_request_id)
                if found:
                    yield "".join(map(framer, found))
                    cursor = found[-1].id
                if len(found) < MAX_EVENTS_PAGE:
                    break
            cursor = max(cursor, horizon)  # past the events the filters left out
        left = ends - time.monotonic()
        if left <= 0:
            return
        if not _wait(tail, cursor, min(keepalive, left), batch) and left > keepalive:
            yield ": keep-alive\n\n"


def _wait(tail: EventTail, cursor: int, timeout: float, batch: float) -> bool:
    """Until an event after `cursor` is committed (True) or `timeout` passes. With `batch`, a look
    at the store's newest id every `batch` seconds instead of a wake-up per commit: a thousand
    streams then cost a few thousand cheap looks a second, and each write carries many events."""
    store = tail.store
    if not batch:
        return store.wait_for_events(cursor, timeout)
    deadline = time.monotonic() + timeout
    while store.known_last_event_id <= cursor:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(batch, left))
        tail.poll()
    return True


def frame(event: Event) -> str:
    return f"id: {event.id}\nevent: {event.type}\ndata: {event.to_json()}\n\n"


def _query(after: str | None) -> tuple[dict, str | None]:
    """The filters shared by /events and /events/stream, or what is wrong with them."""
    position, problem = _whole(after, "after (or Last-Event-ID)", 0, 0, None)
    if problem:
        return {}, problem
    type, checkout_id = request.args.get("type") or None, request.args.get("checkout_request_id") or None
    if type is not None and type not in EVENT_TYPES:
        return {}, f"type must be one of {', '.join(EventType)}, got {type[:40]!r}"
    if checkout_id is not None and not CHECKOUT_ID_PATTERN.match(checkout_id):
        return {}, "checkout_request_id must be 1-100 letters, digits, _ . : or -"
    return {"after": position, "type": type, "checkout_request_id": checkout_id}, None


def _whole(raw: str | None, name: str, default: int, low: int, high: int | None) -> tuple[int, str | None]:
    if raw is None or raw.strip() == "":
        return default, None
    text = raw.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        return default, f"{name} must be a whole number, got {raw[:20]!r}"
    value = int(text)
    if value < low or (high is not None and value > high):
        return default, f"{name} must be between {low} and {high}" if high else f"{name} must be at least {low}"
    return value, None
