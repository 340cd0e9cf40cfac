"""HTTP client of the callback server's /payment/* API (register, status, wait, history, analytics), used by
the agent's tools."""
from __future__ import annotations

import logging
import time

import requests

from mpesa_agent.config import Settings

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 10.0
# Back-off between registration attempts when the callback server cannot be reached.
REGISTER_BACKOFF = (0.2, 0.5, 1.0, 2.0)
RETRY_PUSH_SECONDS = 35.0  # the server's own STK Push to Daraja (its read timeout is 30 s)


class TrackingUnavailable(Exception):
    """The callback server could not be reached (or answered 5xx): fall back to STK Query."""


class TrackingRejected(Exception):
    """The callback server refused the request (4xx); `.status_code` and `.body` say why."""

    def __init__(self, status_code: int, body: dict):
        self.status_code = status_code
        self.body = body
        super().__init__(body.get("error") or body.get("message") or f"HTTP {status_code}")


class TrackingClient:
    """Registers payments, reads their status and long-polls for their outcome."""

    def __init__(self, base_url: str, api_key: str, session: requests.Session | None = None,
                 register_backoff: tuple[float, ...] = REGISTER_BACKOFF):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.session = session or requests.Session()
        self.register_backoff = register_backoff

    @classmethod
    def from_settings(cls, settings: Settings) -> "TrackingClient":
        return cls(settings.callback_server_url, settings.callback_api_key)

    def register(self, checkout_request_id: str, phone_number: str, amount: int, description: str,
                 merchant_request_id: str | None = None) -> dict:
        """Register a payment, retrying with back-off while the server is unreachable."""
        payload = {"checkout_request_id": checkout_request_id, "phone_number": phone_number,
                   "amount": amount, "description": description}
        if merchant_request_id:
            payload["merchant_request_id"] = merchant_request_id
        for attempt, pause in enumerate(self.register_backoff, start=1):
            try:
                return self._call("POST", "/payment/register", json=payload)
            except TrackingUnavailable as exc:
                log.warning("register %s: attempt %d failed (%s); retrying in %.1fs",
                            checkout_request_id, attempt, exc, pause)
                time.sleep(pause)
        return self._call("POST", "/payment/register", json=payload)

    def status(self, checkout_request_id: str) -> dict:
        return self._call("GET", f"/payment/status/{checkout_request_id}")

    def retry(self, checkout_request_id: str, confirm_repeat: bool = False) -> dict:
        """POST /payment/{id}/retry: a new push for a failed payment (the server applies the rules);
        a refusal is TrackingRejected. Never repeated here: the server makes the same retry idempotent."""
        return self._call("POST", f"/payment/{checkout_request_id}/retry", json={"confirm_repeat": confirm_repeat},
                          read_timeout=READ_TIMEOUT + RETRY_PUSH_SECONDS, explained_5xx=True)

    def wait(self, checkout_request_id: str, timeout: float) -> dict:
        """Long-poll until the payment settles or `timeout` seconds pass."""
        return self._call("GET", f"/payment/wait/{checkout_request_id}",
                          params={"timeout": int(max(0, timeout))}, read_timeout=timeout + READ_TIMEOUT)

    def history(self, **filters) -> dict:
        """A page of stored payments, newest first: `{"payments": [...], "next_cursor": ...}`."""
        return self._call("GET", "/payment/history", params={k: v for k, v in filters.items() if v not in (None, "")})

    def analytics(self, since: str, until: str) -> dict:
        """Counts, KES totals, completion rate and failure reasons for payments created in [since, until)."""
        return self._call("GET", "/payment/analytics", params={"since": since, "until": until})

    def bulk_create(self, rows_csv: str, description: str = "") -> dict:
        """Start a bulk request from `phone,amount[,reference]` lines (never retried: a second call is a second batch)."""
        return self._call("POST", "/payment/bulk", data=rows_csv.encode(), params={"description": description},
                          content_type="text/csv")

    def bulk_report(self, batch_id: str) -> dict:
        return self._call("GET", f"/payment/bulk/{batch_id}")

    def _call(self, method: str, path: str, read_timeout: float = READ_TIMEOUT, content_type: str | None = None,
              explained_5xx: bool = False, **kwargs) -> dict:
        """The JSON answer; 4xx is TrackingRejected, 5xx TrackingUnavailable unless `explained_5xx` and the
        server said why in JSON (the retry route's 502: M-Pesa refused, or its answer was lost)."""
        headers = {"Authorization": f"Bearer {self.api_key}"}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            response = self.session.request(
                method, self.base_url + path, timeout=(CONNECT_TIMEOUT, read_timeout), headers=headers, **kwargs)
        except requests.RequestException as exc:
            raise TrackingUnavailable(f"callback server unreachable at {self.base_url}: {type(exc).__name__}") from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 500 and explained_5xx and isinstance(body, dict) and body.get("error"):
            raise TrackingRejected(response.status_code, body)
        if response.status_code >= 500 or not isinstance(body, dict):
            raise TrackingUnavailable(f"callback server answered HTTP {response.status_code}")
        if response.status_code >= 400:
            raise TrackingRejected(response.status_code, body)
        return body
