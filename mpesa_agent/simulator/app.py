"""The simulator's Flask app: Daraja's paths and JSON, the messaging stand-ins (messaging.py), plus
the /simulator control API."""
from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
import time
from dataclasses import replace

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from mpesa_agent.config import ConfigError, Settings

from . import messaging
from .checks import Rejected, bad_payload, check_push, check_query, envelope, nairobi_now
from .state import Options, Simulator, error_answer

log = logging.getLogger("mpesa_agent.simulator")
THREADS = 32


def create_app(settings: Settings | None = None, **overrides) -> Flask:
    """A fresh simulator; `overrides` replace fields of `Options` (callback_delay, seed, ...)."""
    options = replace(Options.from_settings(settings or Settings.from_env()), **overrides)
    sim = Simulator(options)
    app = Flask(__name__)
    app.json.sort_keys = False  # keep Daraja's field order
    app.extensions["simulator"] = sim
    app.extensions["messages"] = messaging.Inbox()
    app.register_blueprint(messaging.blueprint)

    @app.before_request
    def start_clock():
        g.started, g.note = time.perf_counter(), ""
        if request.path.startswith("/simulator/") and not _loopback(request.remote_addr):
            return jsonify(error="the control API answers 127.0.0.1 only"), 403

    @app.after_request
    def log_request(response: Response) -> Response:
        ms = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
        note = g.get("note")
        log.info("%s %s -> %s in %.0f ms%s", request.method, request.path, response.status_code, ms,
                 f" | {note}" if note else "")
        return response

    @app.errorhandler(Rejected)
    def rejected(exc: Rejected):
        g.note = f"{exc.error_code} {exc.error_message}" + (f" ({exc.reason})" if exc.reason else "")
        return jsonify(envelope(exc.error_code, exc.error_message)), exc.http_status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if request.path.startswith("/simulator/"):
            return jsonify(error=exc.description), exc.code
        if exc.code == 404:
            return jsonify(envelope("404.003.01", "Resource not found")), 404
        if exc.code == 405:
            return jsonify(envelope("405.001", f"{request.method} Method Not Allowed")), 405
        return jsonify(envelope(str(exc.code), exc.name)), exc.code

    @app.get("/oauth/v1/generate")
    def generate_token():
        if request.args.get("grant_type") != "client_credentials":
            raise Rejected(400, "400.008.02", "Invalid grant type passed", "grant_type must be client_credentials")
        auth = request.authorization
        if auth is None or auth.type != "basic" or not sim.check_client(auth.username or "", auth.password or ""):
            raise Rejected(400, "400.008.01", "Invalid Authentication passed",
                           "Basic auth with the configured consumer key and secret expected")
        token = sim.issue_token()
        g.note = "token issued (the previous one is now invalid)"
        return {"access_token": token, "expires_in": str(options.token_ttl)}

    @app.post("/mpesa/stkpush/v1/processrequest")
    def stk_push():
        _require_token(sim)
        req = check_push(_json_body(), options.passkeys, nairobi_now(), options.timestamp_tolerance)
        tx, plan = sim.push(req)
        g.note = f"{req.phone} KES {req.amount}"
        if tx:
            g.note += f" {tx.checkout_request_id} -> ResultCode {plan.result_code} after {plan.delay:g} s"
            if plan.callback_before_ack:
                sim.act_before_ack(tx)
                g.note += " (callback sent before this ack)"
        if plan.ack_delay:
            time.sleep(plan.ack_delay)
            g.note += f" (ack held {plan.ack_delay:g} s)"
        if plan.push_error:
            g.note += f" | push_error rule, {'processed' if tx else 'not processed'}"
            return _answer(*error_answer(plan.push_error))
        return {"MerchantRequestID": tx.merchant_request_id, "CheckoutRequestID": tx.checkout_request_id,
                "ResponseCode": "0", "ResponseDescription": "Success. Request accepted for processing",
                "CustomerMessage": "Success. Request accepted for processing"}

    @app.post("/mpesa/stkpushquery/v1/query")
    def stk_query():
        _require_token(sim)
        shortcode, checkout_request_id = check_query(_json_body(), options.passkeys, nairobi_now(),
                                                     options.timestamp_tolerance)
        status, body = sim.query(shortcode, checkout_request_id)
        if isinstance(body, dict):
            g.note = f"{checkout_request_id} {body.get('ResultCode') or body.get('errorCode')} {body.get('ResultDesc') or body.get('errorMessage', '')}"
        return _answer(status, body)

    @app.get("/simulator/health")
    def health():
        return {"status": "ok", "shortcodes": sorted(options.passkeys), "callback_delay": options.callback_delay}

    @app.post("/simulator/rules")
    def add_rule():
        try:
            rule = sim.add_rule(request.get_json(silent=True))
        except ValueError as exc:
            g.note = str(exc)
            return jsonify(error=str(exc)), 400
        g.note = f"rule {rule.id}: {rule.to_json()}"
        return jsonify(rule.to_json()), 201

    @app.get("/simulator/rules")
    def list_rules():
        return {"rules": sim.rules()}

    @app.delete("/simulator/rules")
    def clear_rules():
        sim.clear_rules()
        return {"rules": []}

    @app.post("/simulator/reset")
    def reset():
        sim.reset()
        app.extensions["messages"].messages.clear()
        return {"status": "reset"}

    @app.post("/simulator/expire-tokens")
    def expire_tokens():
        sim.expire_tokens()
        return {"status": "tokens expired"}

    @app.get("/simulator/transactions")
    def list_transactions():
        return {"transactions": sim.transactions()}

    @app.get("/simulator/transactions/<checkout_request_id>")
    def show_transaction(checkout_request_id: str):
        tx = sim.transaction(checkout_request_id)
        if tx is None:
            return jsonify(error=f"no transaction {checkout_request_id}"), 404
        return tx

    @app.post("/simulator/transactions/<checkout_request_id>/act")
    def act(checkout_request_id: str):
        body = request.get_json(silent=True) or {}
        if not isinstance(body, dict) or set(body) - {"result_code", "result_desc"}:
            return jsonify(error="send {} or {\"result_code\": ..., \"result_desc\": ...}"), 400
        try:
            sim.act(checkout_request_id, body.get("result_code"), body.get("result_desc"))
        except KeyError:
            return jsonify(error=f"no transaction {checkout_request_id}"), 404
        except ValueError as exc:
            return jsonify(error=str(exc)), 409 if "already final" in str(exc) else 400
        g.note = f"{checkout_request_id} acted"
        return sim.transaction(checkout_request_id)

    return app


def _require_token(sim: Simulator) -> None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Rejected(404, "404.001.03", "Invalid Access Token", "no Bearer token")
    if not sim.token_valid(token.strip()):
        raise Rejected(404, "404.001.03", "Invalid Access Token", "unknown, replaced or expired token")


def _json_body() -> object:
    if not request.is_json:
        raise bad_payload("Content-Type is not application/json")
    body = request.get_json(silent=True)
    if body is None:
        raise bad_payload("the body is not valid JSON")
    return body


def _answer(status: int, body: dict | str):
    if isinstance(body, str):
        return Response(body, status=status, mimetype="text/html")
    return jsonify(body), status


def _loopback(address: str | None) -> bool:
    try:
        return ipaddress.ip_address(address or "").is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> None:
    """Serve the simulator with waitress: `python -m mpesa_agent.simulator [--port 8002]`."""
    from waitress import create_server

    parser = argparse.ArgumentParser(prog="python -m mpesa_agent.simulator",
                                     description="Offline Daraja (M-Pesa Express) simulator; see docs/simulator.md.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--callback-delay", type=float,
                        help="seconds before an ordinary number's callback (default SIMULATOR_CALLBACK_DELAY, 2)")
    parser.add_argument("--seed", type=int, help="seed the random choices (still-processing forms, Amount form)")
    parser.add_argument("--lock-subscribers", action="store_true",
                        help="refuse a push to a number whose previous push is still waiting, like Daraja")
    parser.add_argument("--any-timestamp", action="store_true",
                        help="accept any well-formed Timestamp, not only one within an hour of Nairobi time")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("waitress").setLevel(logging.WARNING)
    overrides = {"seed": args.seed, "lock_subscribers": args.lock_subscribers}
    if args.any_timestamp:
        overrides["timestamp_tolerance"] = None
    if args.callback_delay is not None:
        overrides["callback_delay"] = args.callback_delay
    try:
        app = create_app(None, **overrides)
    except ConfigError as exc:
        sys.exit(f"simulator: {exc}")
    options = app.extensions["simulator"].options
    server = create_server(app, host=args.host, port=args.port, threads=THREADS)
    log.info("Daraja simulator on http://%s:%s (shortcodes %s, callback delay %g s, control API /simulator/)",
             args.host, server.effective_port, ", ".join(sorted(options.passkeys)), options.callback_delay)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
