"""`create_app(settings)`: the callback server's Flask app, one Blueprint per concern (Daraja's
callbacks, the `/payment/*` API, bulk requests, the event log, webhooks, the dashboard), one Bearer check and JSON
errors everywhere (the dashboard's HTML pages have their own sign-in: server/dashboard_auth.py)."""
from __future__ import annotations

import ipaddress
import logging
import secrets

from flask import Flask, current_app, request
from werkzeug.exceptions import HTTPException

from mpesa_agent.config import MIN_CALLBACK_TOKEN_LENGTH, ConfigError, Settings
from mpesa_agent.server import api, bulk, callbacks, dashboard, dashboard_auth, events, webhooks
from mpesa_agent.server.batches import Batches
from mpesa_agent.server.channels import channel_id, channel_urls
from mpesa_agent.server.http import MAX_BODY_BYTES, error, not_found, require_api_key, unavailable
from mpesa_agent.server.manager import CallbackManager
from mpesa_agent.server.outbox import Outbox
from mpesa_agent.server.retries import Retries
from mpesa_agent.server.store import DATABASE_ERRORS, INTEGRITY_ERRORS, open_store

log = logging.getLogger("callback_server")


def create_app(config: Settings | None = None) -> Flask:
    """The Flask app with its own store and CallbackManager (`app.extensions["callback_manager"]`)."""
    settings = config or Settings.from_env()
    prefix = callback_prefix(settings)
    app = Flask(__name__, static_folder=None)  # the dashboard's assets are served under /dashboard/static
    app.url_map.merge_slashes = False  # "//" is a JSON 404, not an HTML redirect
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES, MPESA_SETTINGS=settings, CALLBACK_PREFIX=prefix)
    app.json.ensure_ascii = False
    app.json.sort_keys = False
    store = open_store(settings.payments_db)
    app.extensions["callback_manager"] = CallbackManager(store, settings)
    app.extensions["event_tail"] = events.EventTail(store)  # what every event stream reads
    app.extensions["webhooks"] = Outbox(store, settings.webhooks_allow_private_urls)
    app.extensions["batches"] = Batches(store)  # sent by serve.py's BulkSender (app.extensions["bulk_sender"])
    app.extensions["retries"] = Retries(app.extensions["callback_manager"], settings)
    try:
        app.extensions["webhooks"].sync_channels(channel_urls(settings), settings.notify_events, channel_id)
    except ValueError as exc:
        raise ConfigError(f"NOTIFY_EVENTS {exc}") from None
    app.register_blueprint(callbacks.blueprint, url_prefix=prefix)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(bulk.blueprint)
    app.register_blueprint(events.blueprint)
    app.register_blueprint(webhooks.blueprint)
    app.register_blueprint(dashboard.blueprint)
    dashboard_auth.configure(app, settings)
    app.before_request(require_api_key)
    app.register_error_handler(HTTPException, http_error)
    for database_error in DATABASE_ERRORS:
        app.register_error_handler(database_error, database_unavailable)
    app.register_error_handler(Exception, unexpected_error)
    return app


def callback_prefix(settings: Settings) -> str:
    """The path before the token in MPESA_CALLBACK_URL, after checking the settings the app needs."""
    if not settings.callback_api_key:
        raise ConfigError("CALLBACK_API_KEY is empty: /payment/* needs a Bearer key "
                          "(`python callback_server.py` generates one into .env.local)")
    if len(settings.callback_token) < MIN_CALLBACK_TOKEN_LENGTH:
        raise ConfigError("MPESA_CALLBACK_URL must end in a secret token of at least "
                          f"{MIN_CALLBACK_TOKEN_LENGTH} characters, e.g. /callback/" + secrets.token_hex(16))
    prefix = settings.callback_path.rstrip("/").rsplit("/", 1)[0]
    if prefix in ("/payment", "/payments", "/health", "/events", "/webhooks", "/dashboard") or prefix.startswith(
            ("/payment/", "/events/", "/webhooks/", "/dashboard/")):
        raise ConfigError(f"MPESA_CALLBACK_URL's path {prefix}/... collides with the server's own endpoints; "
                          "use e.g. /callback/<token>")
    for name, entries in (("TRUSTED_CALLBACK_IPS", settings.trusted_callback_ips),
                          ("TRUSTED_PROXIES", settings.trusted_proxies)):
        for entry in entries:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ConfigError(f"{name} has {entry!r}, which is not an IP address or CIDR network") from None
    return prefix


def http_error(exc: HTTPException):
    if exc.code == 404:
        return not_found()
    if exc.code == 405:
        allowed = ", ".join(m for m in exc.valid_methods or () if m not in ("HEAD", "OPTIONS"))
        response, code = error(405, f"{request.method} is not allowed here; use {allowed}")
        response.headers["Allow"] = ", ".join(exc.valid_methods or ())
        return response, code
    if exc.code == 413:
        return error(413, f"the body is too large: at most {request.max_content_length or MAX_BODY_BYTES} bytes")
    return error(exc.code or 500, exc.description or exc.name)


def database_unavailable(exc: Exception):
    """The database cannot be reached or refused (PostgreSQL restarting, a full disk): 503, so that a
    client sends again; a callback answered this was not stored, and is never answered 200. A
    broken constraint is no outage: a bug, a 500."""
    if isinstance(exc, INTEGRITY_ERRORS):
        return unexpected_error(exc)
    rule = request.url_rule.rule if request.url_rule else "?"
    log.error("database unavailable in %s %s: %s", request.method, rule, str(exc).strip().splitlines()[0][:200])
    return unavailable(current_app.extensions["callback_manager"].store.described)


def unexpected_error(exc: Exception):
    rule = request.url_rule.rule if request.url_rule else "?"  # the rule, not the path: no token in logs
    log.exception("unexpected error in %s %s", request.method, rule)
    return error(500, f"internal error ({type(exc).__name__}); see the callback server's log")
