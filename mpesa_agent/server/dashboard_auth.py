"""Who may see the dashboard: sign in with CALLBACK_API_KEY, a signed session cookie, a CSRF token
per session, and a limit on wrong keys.

- The cookie is Flask's signed session, HttpOnly, SameSite=Lax, scoped to /dashboard, Secure when
  the request came over https (directly, or through a TRUSTED_PROXIES proxy that says so).
- Its secret is DASHBOARD_SECRET, or else an HMAC of the API key: the same after a restart and in
  every server process. The session also holds a fingerprint of the key it was opened with, so a
  new CALLBACK_API_KEY signs everybody out even when DASHBOARD_SECRET stays.
- Every POST carries the session's CSRF token (a hidden form field), compared in constant time.
- Wrong keys: at most MAX_FAILURES per address in FAILURE_WINDOW seconds, then 429 until the
  oldest one ages out. Counted per process; the key is 32 random bytes when generated, so this is
  against guessing a weak key chosen by hand.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import deque
from datetime import timedelta

from flask import Flask, current_app, request, session
from flask.sessions import SecureCookieSessionInterface

from mpesa_agent.config import Settings
from mpesa_agent.server.http import address_in, client_address

SESSION_HOURS = 12
MAX_FAILURES = 10
FAILURE_WINDOW = 15 * 60.0  # seconds
MAX_TRACKED_ADDRESSES = 10_000
CSRF_FIELD = "csrf_token"


def session_secret(settings: Settings) -> bytes:
    """DASHBOARD_SECRET, or a key derived from CALLBACK_API_KEY (stable across restarts and processes)."""
    if settings.dashboard_secret:
        return settings.dashboard_secret.encode()
    return hmac.new(settings.callback_api_key.encode(), b"mpesa-agent dashboard session v1", hashlib.sha256).digest()


def key_fingerprint(settings: Settings) -> str:
    """Which API key a session was opened with, without holding the key."""
    return hmac.new(session_secret(settings), b"signed in with " + settings.callback_api_key.encode(),
                    hashlib.sha256).hexdigest()[:32]


class DashboardSessions(SecureCookieSessionInterface):
    """Flask's signed cookie, Secure whenever this request came over https."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure or forwarded_https(app.config["MPESA_SETTINGS"])

    def open_session(self, app: Flask, request):
        """Only the dashboard has sessions: Daraja's callbacks and the API skip the cookie's
        signature check (about 2-3% of a callback's CPU)."""
        if not request.path.startswith("/dashboard"):
            return None  # Flask uses a null session: nothing read, nothing written
        return super().open_session(app, request)


def forwarded_https(settings: Settings) -> bool:
    """A trusted proxy says the browser reached it over https."""
    peer = request.environ.get("REMOTE_ADDR") or ""
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return proto == "https" and bool(settings.trusted_proxies) and address_in(peer, settings.trusted_proxies)


def configure(app: Flask, settings: Settings) -> None:
    """The app's session: secret, cookie flags, lifetime."""
    app.secret_key = session_secret(settings)
    app.session_interface = DashboardSessions()
    app.config.update(SESSION_COOKIE_NAME="mpesa_dashboard", SESSION_COOKIE_PATH="/dashboard",
                      SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                      PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS))
    app.extensions["dashboard_throttle"] = Throttle()


def key_matches(given: str, settings: Settings) -> bool:
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogatepass"), settings.callback_api_key.encode())


def signed_in(settings: Settings) -> bool:
    fingerprint = session.get("key")
    return isinstance(fingerprint, str) and hmac.compare_digest(fingerprint, key_fingerprint(settings))


def sign_in(settings: Settings) -> None:
    """A fresh session (nothing from before sign-in survives it), with a new CSRF token."""
    session.clear()
    session.permanent = True
    session["key"] = key_fingerprint(settings)
    session[CSRF_FIELD] = secrets.token_urlsafe(32)


def sign_out() -> None:
    session.clear()


def csrf_token() -> str:
    """This session's token, made on first use (the sign-in form has one too)."""
    token = session.get(CSRF_FIELD)
    if not isinstance(token, str):
        token = session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return token


def csrf_ok() -> bool:
    """The POST carries this session's token."""
    expected, given = session.get(CSRF_FIELD), request.form.get(CSRF_FIELD, "")
    return isinstance(expected, str) and hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())


class Throttle:
    """Wrong keys per address: at most `limit` in `window` seconds."""

    def __init__(self, limit: int = MAX_FAILURES, window: float = FAILURE_WINDOW, clock=time.monotonic):
        self.limit, self.window, self.clock = limit, window, clock
        self.failures: dict[str, deque] = {}

    def wait_seconds(self, address: str) -> float:
        """0 when `address` may try a key now, else how long until it may."""
        recent = self.failures.get(address)
        if recent is None or len(recent) < self.limit:
            return 0.0
        return max(0.0, recent[0] + self.window - self.clock())

    def failed(self, address: str) -> None:
        now = self.clock()
        recent = self.failures.get(address)
        if recent is None:
            if len(self.failures) >= MAX_TRACKED_ADDRESSES:
                self.failures.pop(next(iter(self.failures)))  # the longest-known address: memory stays bounded
            recent = self.failures[address] = deque(maxlen=self.limit)
        while recent and recent[0] + self.window <= now:
            recent.popleft()
        recent.append(now)


def record_failure(address: str) -> None:
    current_app.extensions["dashboard_throttle"].failed(address)


def throttled_for(settings: Settings) -> tuple[str, float]:
    """The caller's address (behind trusted proxies) and how long it must wait before trying a key."""
    address = client_address(settings)
    return address, current_app.extensions["dashboard_throttle"].wait_seconds(address)
