"""The callback server: receives Daraja's STK callbacks and serves the /payment/* API.

    python callback_server.py [--host 127.0.0.1] [--port 8001] [--db PATH] [--threads 200]

Served by cheroot (chosen by measurement: docs/benchmark.md). Each long-poll waiter
(`GET /payment/wait/...`) holds one thread for up to 300 s, so `--threads` is the number of
concurrent waiters plus a margin for callbacks and status checks. A reconciler thread settles
payments whose callback never came by STK Query (and confirms success callbacks with
VERIFY_SUCCESS_BY_QUERY). See docs/callback_server.md.
"""
from __future__ import annotations

import argparse
import hmac
import io
import ipaddress
import json
import logging
import math
import os
import secrets
import sqlite3
import sys
from decimal import Decimal
from pathlib import Path

from cheroot import server as cheroot_server
from cheroot import wsgi as cheroot_wsgi
from dotenv import dotenv_values
from flask import Flask, current_app, jsonify, request
from werkzeug.datastructures import EnvironHeaders
from werkzeug.exceptions import ClientDisconnected, HTTPException

from mpesa_agent import preflight
from mpesa_agent.payments.callbacks import has_lone_surrogate
from mpesa_agent.server.manager import (AWAITING, CONFIRMED, CONTRADICTED, RECONCILER, CallbackManager,
                                          InvalidRegistration, RegistrationConflict)
from mpesa_agent.config import (MIN_CALLBACK_TOKEN_LENGTH, ConfigError, Settings,
                                callback_url_problems)
from mpesa_agent.daraja import DarajaClient
from mpesa_agent.payments.notifications import notification_for, timeout_notification
from mpesa_agent.server.openapi import openapi_spec
from mpesa_agent.payments.states import COMPLETED, PENDING
from mpesa_agent.server.reconciler import Reconciler
from mpesa_agent.server.store import INVALID, Payment, Store

log = logging.getLogger("callback_server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8001
DEFAULT_THREADS = 200
MAX_BODY_BYTES = 64 * 1024  # a real callback is under 1 KiB
MAX_HEADER_BYTES = 64 * 1024
SOCKET_TIMEOUT = 30  # seconds a connection may sit idle or stall mid-request (not the long-poll itself)
DEFAULT_WAIT_SECONDS = 120
MAX_WAIT_SECONDS = 300
ACCEPTED = {"ResultCode": 0, "ResultDesc": "Accepted"}
REQUIRED_FIELDS = ("checkout_request_id", "phone_number", "amount")
EXIT_CONFIG, EXIT_CALLBACK_URL = 1, 2


def create_app(config: Settings | None = None) -> Flask:
    """The Flask app with its own store and CallbackManager (`app.extensions["callback_manager"]`)."""
    settings = config or Settings.from_env()
    if not settings.callback_api_key:
        raise ConfigError("CALLBACK_API_KEY is empty: /payment/* needs a Bearer key "
                          "(`python callback_server.py` generates one into .env.local)")
    if len(settings.callback_token) < MIN_CALLBACK_TOKEN_LENGTH:
        raise ConfigError("MPESA_CALLBACK_URL must end in a secret token of at least "
                          f"{MIN_CALLBACK_TOKEN_LENGTH} characters, e.g. /callback/" + secrets.token_hex(16))
    prefix = settings.callback_path.rstrip("/").rsplit("/", 1)[0]
    if prefix in ("/payment", "/health") or prefix.startswith("/payment/"):
        raise ConfigError(f"MPESA_CALLBACK_URL's path {prefix}/... collides with the server's own endpoints; "
                          "use e.g. /callback/<token>")
    for name, entries in (("TRUSTED_CALLBACK_IPS", settings.trusted_callback_ips),
                          ("TRUSTED_PROXIES", settings.trusted_proxies)):
        for entry in entries:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ConfigError(f"{name} has {entry!r}, which is not an IP address or CIDR network") from None
    app = Flask(__name__)
    app.url_map.merge_slashes = False  # "//" is a JSON 404, not an HTML redirect
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["MPESA_SETTINGS"] = settings
    app.json.ensure_ascii = False
    app.json.sort_keys = False
    app.extensions["callback_manager"] = CallbackManager(Store(settings.payments_db), settings)

    app.add_url_rule(f"{prefix}/<token>", "callback", receive_callback, methods=["POST"], strict_slashes=False)
    app.add_url_rule("/payment/register", "register", register, methods=["POST"])
    app.add_url_rule("/payment/status/<checkout_request_id>", "status", status, methods=["GET"])
    app.add_url_rule("/payment/wait/<checkout_request_id>", "wait", wait, methods=["GET"])
    app.add_url_rule("/health", "health", health, methods=["GET"])
    app.add_url_rule("/openapi.json", "openapi", lambda: jsonify(openapi_spec(prefix)), methods=["GET"])
    app.before_request(require_api_key)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected_error)
    app.wsgi_app = fast_paths(app, prefix)
    return app


def fast_paths(app: Flask, prefix: str):
    """Daraja's callback and /payment/register, answered without Flask's request machinery.

    They are the hot paths (docs/benchmark.md): here each costs an environ lookup, one read of
    the body, the same handler code and a JSON answer (prebuilt for the callback's ACK). Only the
    plain case is taken: POST to exactly `{prefix}/<token>` (token compared in constant time) or
    `/payment/register` with a valid Bearer key, a Content-Length within MAX_BODY_BYTES and, for
    callbacks, an allowed source. Anything else (wrong token or key, trailing slash, too large,
    chunked, refused source, other routes) goes to the Flask app, which answers it as before.
    The rules are the same: the raw callback is committed by `ingest` before the 200, an invalid
    body is a JSON 400, an unexpected error a logged JSON 500 (the rule in the log, no token).
    """
    flask_app = app.wsgi_app
    settings: Settings = app.config["MPESA_SETTINGS"]
    route, rule = prefix + "/", f"{prefix}/<token>"
    token, api_key = settings.callback_token.encode(), settings.callback_api_key.encode()
    ack = app.json.response(ACCEPTED)
    ack_body = ack.get_data()
    ack_headers = [("Content-Type", ack.content_type), ("Content-Length", str(len(ack_body)))]

    def answer(environ, start_response, body: dict, code: int):
        response = app.json.response(body)
        response.status_code = code
        return response(environ, start_response)

    def read_body(environ, length: str) -> bytes | None:
        body = environ["wsgi.input"].read(int(length))
        return body if len(body) == int(length) else None  # None: the client went away mid-body

    def authorized(environ) -> bool:
        scheme, _, key = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        return scheme.lower() == "bearer" and bool(key.strip()) and hmac.compare_digest(
            key.strip().encode("utf-8", "surrogatepass"), api_key)

    def wsgi_app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        length = environ.get("CONTENT_LENGTH", "")
        if (environ.get("REQUEST_METHOD") != "POST" or not length.isdigit() or int(length) > MAX_BODY_BYTES
                or environ.get("wsgi.input_terminated")):
            return flask_app(environ, start_response)
        if path == "/payment/register" and authorized(environ):
            manager, where = app.extensions["callback_manager"], "/payment/register"
            body = read_body(environ, length)
            if body is None:
                return answer(environ, start_response, error_body(ClientDisconnected.description), 400)
            try:
                return answer(environ, start_response, *registration_answer(body, manager))
            except Exception as exc:
                return unexpected(environ, start_response, where, exc)
        if not path.startswith(route) or not hmac.compare_digest(
                path[len(route):].encode("utf-8", "surrogatepass"), token):
            return flask_app(environ, start_response)
        source = environ_client_address(environ, settings)
        if settings.trusted_callback_ips and not address_in(source, settings.trusted_callback_ips):
            return flask_app(environ, start_response)  # recorded as rejected and answered 403 there
        body = read_body(environ, length)
        if body is None:  # nothing is stored, as with werkzeug
            return answer(environ, start_response, error_body(ClientDisconnected.description), 400)
        try:
            reply, code = callback_answer(app.extensions["callback_manager"], body, dict(EnvironHeaders(environ)),
                                          source)
        except Exception as exc:
            return unexpected(environ, start_response, rule, exc)
        if code != 200:
            return answer(environ, start_response, reply, code)
        start_response("200 OK", ack_headers)
        return [ack_body]

    def unexpected(environ, start_response, where: str, exc: Exception):
        log.exception("unexpected error in POST %s", where)
        return answer(environ, start_response, error_body(
            f"internal error ({type(exc).__name__}); see the callback server's log"), 500)

    return wsgi_app


def _settings() -> Settings:
    return current_app.config["MPESA_SETTINGS"]


def _manager() -> CallbackManager:
    return current_app.extensions["callback_manager"]


def error(status_code: int, message: str, **extra):
    return jsonify(error_body(message, **extra)), status_code


def error_body(message: str, **extra) -> dict:
    return {"status": "error", "error": message, **extra}


def receive_callback(token: str):
    """Daraja's POST: commit the raw body, then apply it; 200 only after the commit."""
    body = request.get_data(cache=False)  # 413 above MAX_CONTENT_LENGTH
    headers = dict(request.headers)
    source = client_address(_settings())
    manager = _manager()
    if not hmac.compare_digest(token.encode(), _settings().callback_token.encode()):
        manager.record_rejected(body, headers, source, "wrong token in the callback URL")
        return not_found()
    if _settings().trusted_callback_ips and not address_in(source, _settings().trusted_callback_ips):
        manager.record_rejected(body, headers, source, f"source {source} is not in TRUSTED_CALLBACK_IPS")
        return jsonify({"ResultCode": 1, "ResultDesc": "Rejected: source address not allowed"}), 403
    answer, code = callback_answer(manager, body, headers, source)
    return jsonify(answer), code


def callback_answer(manager: CallbackManager, body: bytes, headers: dict, source: str) -> tuple[dict, int]:
    """Store and apply a callback whose token and source passed; Daraja's answer to it."""
    result = manager.ingest(body, headers, source)
    if result.outcome == INVALID:
        return {"ResultCode": 1, "ResultDesc": f"Rejected: {result.note}"}, 400
    return ACCEPTED, 200


def client_address(settings: Settings) -> str:
    """The peer address, or the X-Forwarded-For hop just before our trusted proxies."""
    return environ_client_address(request.environ, settings)


def environ_client_address(environ: dict, settings: Settings) -> str:
    peer = environ.get("REMOTE_ADDR") or ""
    if not settings.trusted_proxies or not address_in(peer, settings.trusted_proxies):
        return peer
    hops = [hop.strip() for hop in environ.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
    for hop in reversed(hops):
        if not address_in(hop, settings.trusted_proxies):
            return hop
    return peer


def address_in(address: str, allowed: tuple[str, ...]) -> bool:
    """`address` is one of `allowed` (addresses or CIDR networks)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for entry in allowed:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def require_api_key():
    """`/payment/*` needs `Authorization: Bearer <CALLBACK_API_KEY>`, checked in constant time."""
    if not (request.path == "/payment" or request.path.startswith("/payment/")):
        return None
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        problem = "missing API key: send Authorization: Bearer <CALLBACK_API_KEY>"
    elif not hmac.compare_digest(key.strip().encode(), _settings().callback_api_key.encode()):
        problem = "wrong API key (compare CALLBACK_API_KEY in .env.local with the server's)"
    else:
        return None
    response, code = error(401, problem)
    response.headers["WWW-Authenticate"] = "Bearer"
    return response, code


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def json_object(raw: bytes) -> tuple[dict | None, str | None]:
    """The request body as a JSON object (floats as exact Decimal), or why it is not one."""
    if not raw.strip():
        return None, "the body is empty; send a JSON object"
    try:
        data = json.loads(raw.decode("utf-8-sig"), parse_float=Decimal, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return None, f"the body is not valid JSON ({exc})"
    if b"\\u" in raw and has_lone_surrogate(data):  # valid UTF-8 holds no surrogate: only an escape can
        return None, "the body is not valid JSON text (a lone \\ud800-\\udfff escape)"
    if not isinstance(data, dict):
        return None, f"the body must be a JSON object, not {type(data).__name__}"
    return data, None


def register():
    body, code = registration_answer(request.get_data(cache=True), _manager())
    return jsonify(body), code


def registration_answer(raw: bytes, manager: CallbackManager) -> tuple[dict, int]:
    """POST /payment/register's JSON answer and status code, for the Flask view and the fast path."""
    data, problem = json_object(raw)
    if problem:
        return error_body(problem), 400
    missing = [name for name in REQUIRED_FIELDS if data.get(name) in (None, "")]
    if missing:
        return error_body(f"missing field{'s' if len(missing) > 1 else ''}: {', '.join(missing)}",
                          fields={name: "required" for name in missing}), 400
    try:
        payment, created = manager.register(
            data["checkout_request_id"], data["phone_number"], data["amount"],
            data.get("description"), data.get("merchant_request_id"))
    except InvalidRegistration as exc:
        return error_body(str(exc), fields=exc.problems), 400
    except RegistrationConflict as exc:
        return error_body(str(exc), fields=exc.fields), 409
    body = {"status": "registered", "created": created, "checkout_request_id": payment.checkout_request_id,
            "payment_status": payment.status, "payment": payment.to_dict()}
    return body, 201 if created else 200


def status(checkout_request_id: str):
    payment = _manager().status(checkout_request_id)
    if payment is None:
        return unknown_payment(checkout_request_id)
    return jsonify({**notification(payment), "payment": payment.to_dict()})


def notification(payment: Payment, timed_out: bool = False) -> dict:
    """The seed's notification, plus how the outcome was learnt when it was not a plain callback."""
    body = timeout_notification(payment.checkout_request_id) if timed_out else notification_for(payment)
    queries = f"{payment.query_attempts} STK Quer{'y' if payment.query_attempts == 1 else 'ies'}"
    note = None
    if payment.verification == AWAITING and payment.status == PENDING:
        note = "A success callback arrived; confirming it with M-Pesa (STK Query) before reporting it"
    elif payment.verification == CONFIRMED:
        note = "Success callback confirmed by STK Query"
    elif payment.verification == CONTRADICTED:
        note = "A success callback was contradicted and is kept for review; it was not counted as paid"
    elif payment.settled_by == "query":
        note = f"Settled by STK Query: no callback arrived ({queries})"
    elif payment.settled_by == RECONCILER:
        note = f"No final answer from M-Pesa after {queries}; kept for review"
    if payment.status == COMPLETED and (payment.verification == CONFIRMED or payment.settled_by == "query"):
        body["payment_details"] = {**body["payment_details"], "VerifiedBy": "STK Query"}
    if note:
        body["note"] = note
    return body


def wait(checkout_request_id: str):
    """Long-poll: answers the moment the payment leaves `pending`, else at the timeout."""
    timeout, problem = wait_timeout(request.args.get("timeout"))
    if problem:
        return error(400, problem)
    payment = _manager().wait(checkout_request_id, timeout)
    if payment is None:
        return unknown_payment(checkout_request_id)
    body = notification(payment, timed_out=payment.status == PENDING)
    return jsonify({**body, "payment": payment.to_dict()})


def wait_timeout(raw: str | None) -> tuple[float, str | None]:
    """`?timeout=N` seconds: default 120, clamped to [0, 300]; not a number is an error."""
    if raw is None:
        return DEFAULT_WAIT_SECONDS, None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds):
        return 0, f"timeout must be a number of seconds (0-{MAX_WAIT_SECONDS}), got {raw[:20]!r}"
    return min(max(seconds, 0.0), MAX_WAIT_SECONDS), None


def unknown_payment(checkout_request_id: str):
    return error(404, f"no payment registered with checkout_request_id {checkout_request_id[:100]!r}",
                 checkout_request_id=checkout_request_id[:100])


def health():
    settings, manager = _settings(), _manager()
    try:
        counts = manager.store.counts()
    except sqlite3.Error as exc:
        log.error("health: database %s not usable: %s", settings.payments_db, exc)
        return error(503, f"database not usable: {exc}", db=str(settings.payments_db))
    return jsonify({"status": "ok", "db": str(settings.payments_db), **counts, "waiting": manager.waiting()})


def not_found():
    return error(404, "not found; the endpoints are listed in docs/callback_server.md")


def http_error(exc: HTTPException):
    if exc.code == 404:
        return not_found()
    if exc.code == 405:
        response, code = error(405, f"{request.method} is not allowed here; use "
                                    f"{', '.join(m for m in exc.valid_methods or () if m not in ('HEAD', 'OPTIONS'))}")
        response.headers["Allow"] = ", ".join(exc.valid_methods or ())
        return response, code
    if exc.code == 413:
        return error(413, f"the body is too large: at most {MAX_BODY_BYTES} bytes")
    return error(exc.code or 500, exc.description or exc.name)


def unexpected_error(exc: Exception):
    rule = request.url_rule.rule if request.url_rule else "?"  # the rule, not the path: no token in logs
    log.exception("unexpected error in %s %s", request.method, rule)
    return error(500, f"internal error ({type(exc).__name__}); see the callback server's log")


def ensure_api_key(settings: Settings) -> tuple[Settings, str]:
    """Return settings with an API key and where it came from; generate one into .env.local."""
    local = settings.root / ".env.local"
    if settings.callback_api_key:
        if os.environ.get("CALLBACK_API_KEY", "").strip() == settings.callback_api_key:
            return settings, "the CALLBACK_API_KEY environment variable"
        for path in (local, settings.root / ".env"):
            if path.is_file() and (dotenv_values(path).get("CALLBACK_API_KEY") or "").strip() == settings.callback_api_key:
                return settings, f"CALLBACK_API_KEY in {path}"
        return settings, "CALLBACK_API_KEY from the settings given to the server"
    key = secrets.token_urlsafe(32)
    existing = local.read_text() if local.is_file() else ""
    separator = "\n" if existing and not existing.endswith("\n") else ""
    with open(local, "a") as handle:
        handle.write(f"{separator}# Bearer key for the callback server's /payment/* API "
                     f"(generated by callback_server.py on first start)\nCALLBACK_API_KEY={key}\n")
    if not existing:
        os.chmod(local, 0o600)
    return settings.replace(callback_api_key=key), f"generated on first start and saved to {local}"


def masked_callback_url(settings: Settings) -> str:
    token = settings.callback_token
    return settings.callback_url.replace(token, token[:4] + "…") if token else settings.callback_url


def startup_problems(settings: Settings) -> list[str]:
    """What must stop a sandbox or production server: the same checks as start.sh's preflight."""
    if settings.mpesa_env == "simulator":
        return []
    return preflight.problems(settings)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="M-Pesa callback server (Daraja callbacks + /payment/* API)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--db", help="SQLite file of payments (default PAYMENTS_DB, data/payments.db)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help=f"worker threads = concurrent long-poll waiters + margin (default {DEFAULT_THREADS})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    """Run the server with cheroot (`settings` for tests; normally read from the environment)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings or Settings.from_env()
        if args.db:
            settings = settings.replace(payments_db=Path(args.db).resolve())
        problems = startup_problems(settings)
        if problems:
            for problem in problems:
                print(f"Configuration error: {problem}", file=sys.stderr)
            print(f"Refusing to start with MPESA_ENV={settings.mpesa_env}: fix .env.local "
                  "(see docs/callback_server.md, \"Setting up the callback URL\").", file=sys.stderr)
            return EXIT_CALLBACK_URL
        settings, key_source = ensure_api_key(settings)
        app = create_app(settings)
    except ConfigError as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    for problem in callback_url_problems(settings):
        log.warning("MPESA_CALLBACK_URL: %s", problem)
    manager = app.extensions["callback_manager"]
    counts = manager.store.counts()
    print(f"Daraja callbacks expected at POST {settings.callback_path.rsplit('/', 1)[0]}/"
          f"{settings.callback_token[:4]}… (MPESA_CALLBACK_URL {masked_callback_url(settings)}, token masked)\n"
          f"Store: SQLite {settings.payments_db} (WAL, synchronous=FULL): "
          f"{sum(counts['payments'].values())} payments, {sum(counts['callbacks'].values())} raw callbacks\n"
          f"API key for /payment/* (Authorization: Bearer ...): {key_source}\n"
          f"Reconciler: pending payments settled by STK Query {settings.reconcile_after} s after registration; "
          f"success callbacks confirmed by STK Query: {'on' if settings.verify_success_by_query else 'off'}\n"
          f"Callback server on http://{args.host}:{args.port} (cheroot, {args.threads} threads)", flush=True)
    server = wsgi_server(app, args.host, args.port, args.threads)
    reconciler = Reconciler(manager, DarajaClient.from_settings(settings), settings).start()
    try:
        server.start()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        reconciler.stop()
    return 0


def wsgi_server(app: Flask, host: str, port: int, threads: int) -> cheroot_wsgi.Server:
    """cheroot: a fixed pool of `threads` workers; idle keep-alive connections wait in epoll, not in a thread."""
    # Repeated X-Forwarded-For lines are joined (as the RFC allows), not last-one-wins, so
    # client_address() sees every hop and believes only those TRUSTED_PROXIES added.
    if b"X-Forwarded-For" not in cheroot_server.comma_separated_headers:
        cheroot_server.comma_separated_headers.append(b"X-Forwarded-For")
    server = cheroot_wsgi.Server((host, port), buffered_chunked_bodies(app), numthreads=threads, max=threads,
                                 request_queue_size=1024, timeout=SOCKET_TIMEOUT, server_name="callback-server")
    server.max_request_header_size = MAX_HEADER_BYTES
    return server


def buffered_chunked_bodies(app: Flask):
    """Give the app a chunked body with a Content-Length (as waitress did), so that one over
    MAX_BODY_BYTES is a 413 instead of being cut short silently by werkzeug's stream limit."""
    def middleware(environ, start_response):
        if environ.get("wsgi.input_terminated") and not environ.get("CONTENT_LENGTH"):
            try:
                body = environ["wsgi.input"].read(MAX_BODY_BYTES + 1)
            except (ValueError, OSError) as exc:  # a malformed chunk: nothing reaches the app or the store
                start_response("400 Bad Request", [("Content-Type", "application/json"), ("Connection", "close")])
                return [json.dumps({"status": "error", "error": f"bad chunked body: {str(exc)[:80]}"}).encode()]
            environ.update({"wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body))})
            del environ["wsgi.input_terminated"], environ["HTTP_TRANSFER_ENCODING"]  # werkzeug ignores the length otherwise
        return app(environ, start_response)
    return middleware


if __name__ == "__main__":
    sys.exit(main())
