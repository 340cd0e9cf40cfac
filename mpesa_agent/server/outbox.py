"""Outbound webhooks per the Standard Webhooks specification: endpoints, their outbox and attempts.

`Transaction.append_event` writes one outbox row per enabled endpoint subscribed to the event's
type, in the event's own transaction; the dispatcher (server/dispatcher.py) delivers them. Each
message is `{"type", "timestamp", "data": <the event>}` with the spec's `webhook-id` (the event's
id, the same on every retry), `webhook-timestamp` and `webhook-signature` (signed by the
`standardwebhooks` package; during 24 h after a rotation, by the old secret too).
"""
from __future__ import annotations

import base64
import ipaddress
import json
import random
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

from mpesa_agent.payments.states import EventType
from mpesa_agent.payments.webhooks import message
from mpesa_agent.server.store import Event, Store, utcnow

EVENT_TYPES = frozenset(map(str, EventType))
ROTATION_GRACE = timedelta(hours=24)  # the old secret keeps signing this long after a rotation
JITTER = 0.2  # each retry delay is scaled by a random factor in [1 - JITTER, 1 + JITTER]
MAX_URL_LENGTH = 2048
MAX_DESCRIPTION_LENGTH = 500
RESPONSE_KEPT = 500  # characters of an answer's body kept with its attempt
ENDPOINT_COLUMNS = ("id, url, events, description, enabled, note, created_at, updated_at,"
                    " previous_secret_expires_at")


class Invalid(ValueError):
    """A request to change endpoints is not acceptable; `problems` maps each field to why."""

    def __init__(self, problems: dict[str, str]):
        self.problems = problems
        super().__init__("; ".join(f"{name}: {why}" for name, why in problems.items()))


@dataclass(frozen=True)
class Delivery:
    """One due outbox row, with what is needed to send it."""

    outbox_id: int
    attempts: int  # made so far
    endpoint_id: str
    url: str
    secrets: tuple[str, ...]
    event: Event

    @property
    def body(self) -> str:
        """The same bytes on every retry: built from the event's stored JSON."""
        return message(self.event.type, self.event.created_at, self.event.to_json())


@dataclass(frozen=True)
class Attempt:
    """What one delivery attempt got: an HTTP status (None when no answer came) and the answer's start."""

    delivery: Delivery
    status_code: int | None
    latency_ms: float
    response: str
    attempted_at: str
    delivered: bool | None = None  # a channel's own verdict (an SMTP 250 is not a 2xx)

    @property
    def success(self) -> bool:
        if self.delivered is not None:
            return self.delivered
        return self.status_code is not None and 200 <= self.status_code < 300


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def url_problem(url: Any, allow_private: bool) -> str | None:
    """Why `url` cannot be an endpoint: not http(s), or (server-side request forgery) a host that
    resolves to a loopback, private, link-local or otherwise non-public address."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH or not url.isprintable() or " " in url:
        return f"must be an absolute http(s) URL of at most {MAX_URL_LENGTH} characters"
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return "must be an absolute http(s) URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an absolute http(s) URL"
    if allow_private:
        return None
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)}
    except (OSError, UnicodeError, ValueError):
        return f"its host {parts.hostname[:100]!r} does not resolve"
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        ip = getattr(ip, "ipv4_mapped", None) or ip
        if not ip.is_global or ip.is_multicast:
            return (f"its host resolves to {ip}, not a public address (refused: server-side request forgery); "
                    "set WEBHOOKS_ALLOW_PRIVATE_URLS=true for local development")
    return None


def retry_delay(attempts: int, schedule: tuple[float, ...], rand=random.random) -> float | None:
    """Seconds before the next attempt after `attempts` failed ones, with jitter; None: give up."""
    if attempts > len(schedule):
        return None
    return schedule[attempts - 1] * (1 - JITTER + 2 * JITTER * rand())


def _event_types(value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError('must be a non-empty list of event types, or ["*"]')
    unknown = [v for v in value if v != "*" and v not in EVENT_TYPES]
    if unknown:
        raise ValueError(f"unknown event type {unknown[0][:40]!r}; one of *, {', '.join(sorted(EVENT_TYPES))}")
    return ["*"] if "*" in value else sorted(set(value))


def checked(data: dict, allow_private: bool, partial: bool) -> dict:
    """The endpoint fields in `data` (all but enabled required unless `partial`), checked."""
    fields, problems = {}, {}
    allowed = {"url", "events", "description"} | ({"enabled"} if partial else set())
    for name in sorted(set(data) - allowed):
        problems[name[:40]] = "unknown field"
    if "url" in data or not partial:
        problem = url_problem(data.get("url"), allow_private)
        if problem:
            problems["url"] = problem
        fields["url"] = data.get("url")
    if "events" in data or not partial:
        try:
            fields["events"] = json.dumps(_event_types(data.get("events")))
        except ValueError as exc:
            problems["events"] = str(exc)
    if "description" in data:
        if not isinstance(data["description"], str) or len(data["description"]) > MAX_DESCRIPTION_LENGTH:
            problems["description"] = f"must be text of at most {MAX_DESCRIPTION_LENGTH} characters"
        fields["description"] = data["description"]
    if "enabled" in data:
        if not isinstance(data["enabled"], bool):
            problems["enabled"] = "must be true or false"
        fields["enabled"] = data["enabled"]
    if partial and not fields and not problems:
        problems["body"] = "nothing to change: send url, events, description or enabled"
    if problems:
        raise Invalid(problems)
    return fields


def _endpoint(row) -> dict:
    values = dict(zip(ENDPOINT_COLUMNS.split(", "), row))
    return {**values, "events": json.loads(values["events"]), "enabled": bool(values["enabled"])}


def _utc(text: Any, name: str) -> str:
    """An ISO 8601 date-time as the store writes them (UTC, milliseconds), to compare as text."""
    try:
        when = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise Invalid({name: "must be an ISO 8601 date-time, e.g. 2026-01-31T12:00:00Z"}) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds")


class Outbox:
    """The endpoints, their outbox rows and attempts, in the payments store."""

    def __init__(self, store: Store, allow_private: bool = False):
        self.store, self.allow_private = store, allow_private

    def create(self, data: dict) -> dict:
        """A new endpoint, with its secret (shown only here)."""
        fields = checked(data, self.allow_private, partial=False)
        endpoint_id, secret, now = "ep_" + secrets.token_hex(8), new_secret(), utcnow()
        with self.store.transaction() as tx:
            tx.conn.execute("INSERT INTO webhook_endpoints (id, url, events, description, secret, created_at,"
                            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (endpoint_id, fields["url"], fields["events"], fields.get("description", ""), secret,
                             now, now))
        return {**self.get(endpoint_id), "secret": secret}

    def get(self, endpoint_id: str) -> dict | None:
        with self.store.reader() as conn:
            row = conn.execute(f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = ?", (endpoint_id,)).fetchone()
        return _endpoint(row) if row else None

    def list(self) -> list[dict]:
        with self.store.reader() as conn:
            return [_endpoint(row) for row in conn.execute(
                f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY created_at, id")]

    def update(self, endpoint_id: str, data: dict) -> dict | None:
        """Change url, events, description or enabled; enabling clears the note and resumes its outbox."""
        fields = checked(data, self.allow_private, partial=True)
        if fields.get("enabled"):
            fields["note"] = None
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self.store.transaction() as tx:
            changed = tx.conn.execute(f"UPDATE webhook_endpoints SET {assignments}, updated_at = ? WHERE id = ?",
                                      (*fields.values(), utcnow(), endpoint_id)).rowcount
            tx.queued += bool(changed and fields.get("enabled"))  # its pending rows are deliverable again
        return self.get(endpoint_id) if changed else None

    def delete(self, endpoint_id: str) -> bool:
        with self.store.transaction() as tx:
            tx.conn.execute("DELETE FROM webhook_attempts WHERE endpoint_id = ?", (endpoint_id,))
            return tx.conn.execute("DELETE FROM webhook_endpoints WHERE id = ?", (endpoint_id,)).rowcount > 0

    def rotate(self, endpoint_id: str) -> dict | None:
        """A new secret; the current one keeps signing (a second signature) for ROTATION_GRACE."""
        secret = new_secret()
        expires = (datetime.now(timezone.utc) + ROTATION_GRACE).isoformat(timespec="milliseconds")
        with self.store.transaction() as tx:
            changed = tx.conn.execute(
                "UPDATE webhook_endpoints SET previous_secret = secret, previous_secret_expires_at = ?, secret = ?,"
                " updated_at = ? WHERE id = ?", (expires, secret, utcnow(), endpoint_id)).rowcount
        return {**self.get(endpoint_id), "secret": secret} if changed else None

    def attempts(self, endpoint_id: str, limit: int = 100) -> list[dict]:
        """The endpoint's delivery attempts, newest first."""
        with self.store.reader() as conn:
            rows = conn.execute("SELECT id, event_id, attempt, attempted_at, status_code, latency_ms, response, success"
                                " FROM webhook_attempts WHERE endpoint_id = ? ORDER BY id DESC LIMIT ?",
                                (endpoint_id, limit)).fetchall()
        return [{**dict(row), "success": bool(row["success"])} for row in rows]

    def replay(self, endpoint_id: str, data: dict) -> int:
        """Queue one event (`event_id`, whatever its type) or every subscribed event created in
        [`since`, `until`) for the endpoint again; returns how many."""
        extra = sorted(set(data) - {"event_id", "since", "until"})
        if extra:
            raise Invalid({extra[0][:40]: "unknown field"})
        now = (time.time(), utcnow())
        with self.store.transaction() as tx:
            if "event_id" in data:
                if data.keys() != {"event_id"} or not isinstance(data["event_id"], int) or isinstance(data["event_id"], bool):
                    raise Invalid({"event_id": "must be an event id alone (or send since and until instead)"})
                sql, args = " WHERE id = ?", [data["event_id"]]
            elif "since" in data:
                subscribed = self.store.subscribed("(SELECT events FROM webhook_endpoints WHERE id = ?)", "events.type")
                sql, args = (f" WHERE created_at >= ? AND created_at < ? AND {subscribed}",
                             [_utc(data["since"], "since"), _utc(data.get("until", now[1]), "until"), endpoint_id])
            else:
                raise Invalid({"body": "send event_id, or since (and optionally until)"})
            queued = tx.conn.execute("INSERT INTO webhook_outbox (event_id, endpoint_id, next_attempt_at, created_at)"
                                     f" SELECT id, ?, ?, ? FROM events{sql}", [endpoint_id, *now, *args]).rowcount
            if "event_id" in data and not queued:
                raise Invalid({"event_id": f"no event {data['event_id']}"})
            tx.queued += queued
        return queued

    def enabled_ids(self) -> list[str]:
        with self.store.reader() as conn:
            return [row[0] for row in conn.execute("SELECT id FROM webhook_endpoints WHERE enabled = 1 ORDER BY id")]

    def due(self, now: float, limit: int, endpoint_id: str | None = None) -> list[Delivery]:
        """Outbox rows due by `now` for enabled endpoints (or this one), oldest due first."""
        one = " AND o.endpoint_id = ?" if endpoint_id is not None else ""
        with self.store.reader() as conn:
            rows = conn.execute(
                "SELECT o.id, o.attempts, p.id, p.url, p.secret, p.previous_secret, p.previous_secret_expires_at,"
                " e.id, e.type, e.checkout_request_id, e.created_at, e.data FROM webhook_outbox o"
                " JOIN webhook_endpoints p ON p.id = o.endpoint_id JOIN events e ON e.id = o.event_id"
                f" WHERE o.status = 'pending' AND o.next_attempt_at <= ? AND p.enabled = 1{one}"
                " ORDER BY o.next_attempt_at LIMIT ?", (now, *([endpoint_id] if one else []), limit)).fetchall()
        today = utcnow()
        return [Delivery(r[0], r[1], r[2], r[3], (r[4], r[5]) if r[5] and r[6] > today else (r[4],),
                         Event(r[7], r[8], r[9], r[10], r[11])) for r in rows]

    def next_due(self) -> float | None:
        with self.store.reader() as conn:
            return conn.execute("SELECT MIN(o.next_attempt_at) FROM webhook_outbox o JOIN webhook_endpoints p"
                                " ON p.id = o.endpoint_id WHERE o.status = 'pending' AND p.enabled = 1").fetchone()[0]

    def record(self, attempts: list[Attempt], schedule: tuple[float, ...], now: float) -> list[str]:
        """Write attempts in one transaction: delivered, retried later, or failed for good (and the
        endpoint disabled with a note). Returns the notes of endpoints disabled."""
        disabled = []
        with self.store.transaction() as tx:
            for attempt in attempts:
                d = attempt.delivery
                tx.conn.execute("INSERT INTO webhook_attempts (outbox_id, endpoint_id, event_id, attempt, attempted_at,"
                                " status_code, latency_ms, response, success) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                (d.outbox_id, d.endpoint_id, d.event.id, d.attempts + 1, attempt.attempted_at,
                                 attempt.status_code, round(attempt.latency_ms, 1), attempt.response[:RESPONSE_KEPT],
                                 attempt.success))
                delay = None if attempt.success else retry_delay(d.attempts + 1, schedule)
                status = "delivered" if attempt.success else "pending" if delay is not None else "failed"
                tx.conn.execute("UPDATE webhook_outbox SET status = ?, attempts = attempts + 1, next_attempt_at = ?"
                                " WHERE id = ?", (status, now + (delay or 0), d.outbox_id))
                if status == "failed":
                    last = f"HTTP {attempt.status_code}" if attempt.status_code else attempt.response[:200]
                    note = (f"disabled at {attempt.attempted_at}: event {d.event.id} still failed after "
                            f"{d.attempts + 1} attempts (last: {last}); PATCH enabled=true to resume")
                    if tx.conn.execute("UPDATE webhook_endpoints SET enabled = 0, note = ?, updated_at = ?"
                                       " WHERE id = ? AND enabled = 1", (note, utcnow(), d.endpoint_id)).rowcount:
                        disabled.append(f"{d.endpoint_id} {note}")
        return disabled

    def sync_channels(self, urls: list[str], events: tuple[str, ...], ids) -> None:
        """Make the notification endpoints (`ids(url)` each) exactly those of .env: added, updated, removed."""
        kinds = json.dumps(_event_types(list(events))) if urls else "[]"
        now = utcnow()
        with self.store.transaction() as tx:
            for url in urls:
                tx.conn.execute("INSERT INTO webhook_endpoints (id, url, events, description, secret, created_at,"
                                " updated_at) VALUES (?, ?, ?, 'from .env (NOTIFY_*)', ?, ?, ?) ON CONFLICT (id)"
                                " DO UPDATE SET events = excluded.events", (ids(url), url, kinds, new_secret(), now, now))
            gone = [row[0] for row in tx.conn.execute("SELECT id FROM webhook_endpoints WHERE substr(id, 1, 3) = 'ch_'")
                    if row[0] not in {ids(url) for url in urls}]
            for endpoint_id in gone:
                tx.conn.execute("DELETE FROM webhook_attempts WHERE endpoint_id = ?", (endpoint_id,))
                tx.conn.execute("DELETE FROM webhook_endpoints WHERE id = ?", (endpoint_id,))

    def counts(self) -> dict:
        """Outbox rows per status (for tests and the reliability report)."""
        with self.store.reader() as conn:
            return dict(conn.execute("SELECT status, COUNT(*) FROM webhook_outbox GROUP BY status").fetchall())
