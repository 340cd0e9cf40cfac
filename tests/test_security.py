"""Forged callbacks, the API key, secrets in logs and answers, start-up refusals, source allow-lists."""
import asyncio
import base64
import hmac
import http.client
import json
import logging
import os
import secrets
import signal
import sqlite3
import subprocess
import sys

import pytest
import requests
from dotenv import dotenv_values

from callback_server import create_app
from mpesa_agent.server.http import address_in, client_address
from mpesa_agent.config import ConfigError
from mpesa_agent.daraja import DarajaClient
from mpesa_agent.tools import Payments, QuerySchedule, make_tools
from harness import ROOT, Process, Stack, base_env, free_port, installed
from test_callback_manager import callback_body

TOKEN = "0123456789abcdef0123456789abcdef"  # conftest's MPESA_CALLBACK_URL
CALLBACK = f"/callback/{TOKEN}"
AUTH = {"Authorization": "Bearer test-api-key"}


def register(client, checkout_id="ws_CO_1", phone="0712345678", amount=500):
    return client.post("/payment/register", headers=AUTH, json={
        "checkout_request_id": checkout_id, "phone_number": phone, "amount": amount, "description": "lunch"})


def forge(client, path=CALLBACK, **kwargs):
    return client.post(path, data=callback_body(**kwargs), content_type="application/json")


def status(client, checkout_id="ws_CO_1") -> dict:
    return client.get(f"/payment/status/{checkout_id}", headers=AUTH).get_json()


# Forged callbacks ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/callback", "/callback/", "/callback/" + "0" * 32, CALLBACK[:-1],
                                  CALLBACK + "x", CALLBACK.upper(), "/" + TOKEN])
def test_a_callback_without_the_right_token_changes_nothing(app, client, path):
    register(client)
    answer = forge(client, path)
    assert answer.status_code == 404 and answer.get_json()["status"] == "error"
    assert TOKEN not in answer.get_data(as_text=True)
    assert status(client)["payment_status"] == "pending"
    stored = app.extensions["callback_manager"].store.callbacks()
    assert all(cb.outcome == "rejected" for cb in stored)  # kept for review, never applied


def test_right_token_unknown_id_is_parked_and_never_completes_on_its_own(app, client):
    assert forge(client, checkout_request_id="ws_CO_forged").get_json()["ResultCode"] == 0
    [parked] = app.extensions["callback_manager"].store.callbacks()
    assert parked.outcome == "parked"
    assert client.get("/payment/status/ws_CO_forged", headers=AUTH).status_code == 404
    assert app.extensions["callback_manager"].store.counts()["payments"] == {}


@pytest.mark.parametrize("phone, amount, differs", [
    ("0712345678", 5000, "Amount 500 but registered 5000"),
    ("0722000000", 500, "PhoneNumber 254712345678 but registered 254722000000"),
])
def test_a_parked_success_for_a_different_payment_is_unknown_for_review(client, phone, amount, differs):
    forge(client, checkout_request_id="ws_CO_forged")
    answer = register(client, "ws_CO_forged", phone, amount).get_json()
    assert answer["payment_status"] == "unknown"
    body = status(client, "ws_CO_forged")
    assert body["status"] == "unknown" and differs in body["payment"]["review"]


@pytest.mark.parametrize("kwargs, differs", [
    ({"amount": 5}, "Amount 5 but registered 500"),
    ({"amount": 500.5}, "Amount 500.5 but registered 500"),
    ({"amount": None}, "no Amount"),
    ({"phone": 254799999999}, "PhoneNumber 254799999999 but registered 254712345678"),
    ({"phone": "2547****9999"}, "PhoneNumber 2547****9999"),
])
def test_a_success_that_does_not_match_the_registration_is_never_completed(client, caplog, kwargs, differs):
    register(client)
    with caplog.at_level(logging.INFO):
        assert forge(client, **kwargs).get_json()["ResultCode"] == 0
    body = status(client)
    assert body["status"] == "unknown" and body["payment_status"] == "unknown"
    assert differs in body["payment"]["review"]
    assert "needs review" in caplog.text
    assert forge(client).get_json()["ResultCode"] == 0  # even a matching one afterwards
    assert status(client)["status"] == "unknown"


# The API key -------------------------------------------------------------------------------

@pytest.mark.parametrize("method, path", [("post", "/payment/register"), ("get", "/payment/status/ws_CO_1"),
                                          ("get", "/payment/wait/ws_CO_1?timeout=0"), ("get", "/payment")])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "bearer "},
                                     {"Authorization": "Basic " + base64.b64encode(b"x:test-api-key").decode()},
                                     {"Authorization": "Bearer test-api-key-and-more"},
                                     {"X-Api-Key": "test-api-key"}])
def test_payment_api_without_the_right_key_is_401(client, method, path, headers):
    answer = getattr(client, method)(path, headers=headers, json={})
    assert answer.status_code == 401 and answer.headers["WWW-Authenticate"] == "Bearer"
    assert "test-api-key" not in answer.get_data(as_text=True)


def test_keys_and_tokens_are_compared_with_hmac_compare_digest(client, monkeypatch):
    seen = []
    real = hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert client.get("/payment/status/ws_CO_1", headers={"Authorization": "Bearer guess"}).status_code == 401
    assert (b"guess", b"test-api-key") in seen
    assert forge(client, "/callback/" + "f" * 32).status_code == 404
    assert (b"f" * 32, TOKEN.encode()) in seen


# Secrets never in logs or answers: real processes through every path -----------------------

@pytest.fixture
def secret_stack(tmp_path):
    """Simulator + callback server with fresh, unique secrets; yields (settings, secrets, processes)."""
    values = {
        "consumer_key": "ck" + secrets.token_hex(12), "consumer_secret": "cs" + secrets.token_hex(12),
        "passkey": secrets.token_hex(32), "callback_token": secrets.token_hex(16),
        "api_key": secrets.token_urlsafe(24),
    }
    with Stack(tmp_path, token=values["callback_token"], api_key=values["api_key"],
               MPESA_CONSUMER_KEY=values["consumer_key"], MPESA_CONSUMER_SECRET=values["consumer_secret"],
               MPESA_SHORTCODE="600100", MPESA_PASSKEY=values["passkey"], SIMULATOR_CALLBACK_DELAY="0.1",
               PAYMENT_WAIT_SECONDS="8", RECONCILE_AFTER_SECONDS="1") as stack:
        yield stack.settings, values, (stack.simulator, stack.server)


def test_no_secret_appears_in_any_log_or_answer(secret_stack, caplog, monkeypatch):
    settings, values, (simulator, server) = secret_stack
    tokens: list[str] = []
    fetch = DarajaClient._fetch_token

    def remember(client):
        tokens.append(fetch(client))
        return tokens[-1]

    monkeypatch.setattr(DarajaClient, "_fetch_token", remember)
    answers: list[object] = []
    send_tool = status_tool = None  # the tools of the Payments configured last

    def send(phone, amount=100, context="test", configured=None, **kwargs):
        nonlocal send_tool, status_tool
        if configured is not None:
            send_tool, status_tool = make_tools(Payments(configured, schedule=QuerySchedule(first=0.2, every=0.2)))
        answers.append(asyncio.run(send_tool(phone, amount, context, **kwargs)))
        return answers[-1]

    def http(method, url, **kwargs):
        response = requests.request(method, url, timeout=15, **kwargs)
        answers.append(response.text)
        return response

    key_auth = {"Authorization": f"Bearer {values['api_key']}"}
    # urllib3's DEBUG lines show the URLs *this test* posts forged callbacks to; only Daraja (here
    # the simulator, whose log is checked) ever calls the callback URL in real use.
    caplog.set_level(logging.INFO, logger="urllib3")
    with caplog.at_level(logging.DEBUG):
        # success, failure, and a lost callback settled by the server's reconciler (STK Query)
        assert send("0712345678", configured=settings)["status"] == "success"
        assert send("0700001032")["status"] == "failed"
        http("POST", settings.base_url + "/simulator/rules",
             json={"phone": "0722000222", "delay": 0, "lose_callback": True})
        assert send("0722000222")["status"] == "success"
        # an expired token: refreshed once, in the client and (later) in the server
        http("POST", settings.base_url + "/simulator/expire-tokens")
        assert send("0733000111")["status"] == "success"
        answers.append(asyncio.run(status_tool(answers[0]["checkout_request_id"])))
        # bad input
        assert send("0201234567")["status"] == "error"
        assert send("0712345678", "12.50")["status"] == "error"
        answers.append(asyncio.run(status_tool("not an id!")))
        http("POST", settings.callback_server_url + "/payment/register", headers=key_auth, data=b"{broken")
        http("POST", settings.callback_server_url + "/payment/register", headers=key_auth,
             json={"checkout_request_id": "ws_CO_x", "phone_number": "12", "amount": -1})
        http("POST", settings.callback_url, data=b"not json", headers={"Content-Type": "application/json"})
        http("GET", settings.callback_server_url + "/payment/wait/ws_CO_x?timeout=abc", headers=key_auth)
        # auth failures: API key, callback token, Daraja credentials, passkey
        http("GET", settings.callback_server_url + "/payment/status/ws_CO_x",
             headers={"Authorization": "Bearer " + values["api_key"][:-1]})
        http("POST", settings.callback_url[:-1] + "0", data=callback_body())
        send("0744000444", configured=settings.replace(callback_api_key="wrong-key"))
        for wrong in (settings.replace(consumer_secret="cs-wrong"), settings.replace(passkey="0" * 64)):
            result = send("0755000555", configured=wrong)
            assert result["status"] == "error" and "credentials" in result["message"]
        with pytest.raises(Exception) as raised:
            DarajaClient.from_settings(settings.replace(consumer_secret="cs-wrong")).stk_query("ws_CO_x")
        answers.append(str(raised.value))
    server.stop()  # flush and close its log
    simulator.stop()

    timestamps_password_prefix = base64.b64encode(f"600100{values['passkey']}"[:69].encode()).decode()
    basic = base64.b64encode(f"{values['consumer_key']}:{values['consumer_secret']}".encode()).decode()
    forbidden = {**values, "basic": basic, "password": timestamps_password_prefix,
                 **{f"token{n}": token for n, token in enumerate(tokens)}}
    assert len(tokens) >= 2, "the expired token was refreshed"
    db = sqlite3.connect(settings.payments_db)
    stored = "\n".join(repr(row) for table in ("payments", "callbacks")
                       for row in db.execute(f"SELECT * FROM {table}"))  # noqa: S608 (fixed names)
    db.close()
    texts = {"test log": caplog.text, "simulator log": simulator.log(), "server log": server.log(),
             "answers": json.dumps(answers, default=str, ensure_ascii=False), "database": stored}
    assert "reconcile " in texts["server log"] and "daraja stk_query" in texts["server log"]
    assert "wrong API key" in texts["answers"] and "refused our credentials" in texts["answers"]
    assert "Wrong credentials" in texts["simulator log"] + texts["answers"]
    for where, text in texts.items():
        for name, secret in forbidden.items():
            assert secret not in text, f"{name} appears in the {where}"


# Start-up refusals -------------------------------------------------------------------------

COMMITTED_TOKEN = (dotenv_values(ROOT / ".env").get("MPESA_CALLBACK_URL") or "").rsplit("/", 1)[-1]
GOOD_TOKEN = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"


@pytest.mark.parametrize("env, url, message", [
    ("production", f"http://pay.example.com/callback/{GOOD_TOKEN}", "must use https in production"),
    ("production", f"https://Pay.Example.com/callback/{GOOD_TOKEN}", "host must be lowercase"),
    ("sandbox", f"https://pay.example.com/mpesa/callback/{GOOD_TOKEN}", "words Safaricom blocks: mpesa"),
    ("production", f"https://pay.example.com/hooks/query/{GOOD_TOKEN}", "words Safaricom blocks: query"),
    ("sandbox", "https://pay.example.com/callback/short", "secret token of at least 24 characters"),
    ("production", f"https://pay.example.com/callback/{COMMITTED_TOKEN}", "committed example token"),
    ("sandbox", f"http://127.0.0.1:8001/callback/{GOOD_TOKEN}", "publicly reachable"),
    ("production", "", "committed example token"),  # empty is unset: .env's simulator URL
])
def test_the_server_refuses_to_start_with_a_bad_callback_url(tmp_path, env, url, message):
    assert COMMITTED_TOKEN and len(COMMITTED_TOKEN) >= 24
    environment = base_env(MPESA_ENV=env, MPESA_CALLBACK_URL=url, MPESA_CONSUMER_KEY="real-looking-key",
                           MPESA_CONSUMER_SECRET="real-looking-secret", CALLBACK_API_KEY="startup-key",
                           PAYMENTS_DB=tmp_path / "p.db")
    done = subprocess.run([sys.executable, "callback_server.py", "--port", str(free_port())], cwd=ROOT,
                          env=environment, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Configuration error: MPESA_CALLBACK_URL" in done.stderr and message in done.stderr
    assert f"Refusing to start with MPESA_ENV={env}" in done.stderr
    assert GOOD_TOKEN not in done.stderr + done.stdout  # problems name the rule, never the token
    assert not (tmp_path / "p.db").exists(), "nothing was started"


def test_the_server_starts_in_production_with_a_good_callback_url(tmp_path):
    port = free_port()
    env = base_env(MPESA_ENV="production", MPESA_CALLBACK_URL=f"https://pay.example.com/callback/{GOOD_TOKEN}",
                   MPESA_CONSUMER_KEY="real-looking-key", MPESA_CONSUMER_SECRET="real-looking-secret",
                   CALLBACK_API_KEY="startup-key", PAYMENTS_DB=tmp_path / "p.db", MPESA_ALLOW_LIVE_MONEY="true")
    server = Process(["callback_server.py", "--port", str(port)], env, f"http://127.0.0.1:{port}/health",
                     tmp_path / "server.log").start()
    server.stop()
    assert "Reconciler: pending payments settled by STK Query 300 s after registration" in server.log()
    assert server.log().startswith("Mode: production: LIVE MONEY (MPESA_ALLOW_LIVE_MONEY=true)")


def test_production_without_the_live_money_switch_does_not_start(tmp_path):
    env = base_env(MPESA_ENV="production", MPESA_CALLBACK_URL=f"https://pay.example.com/callback/{GOOD_TOKEN}",
                   MPESA_CONSUMER_KEY="real-looking-key", MPESA_CONSUMER_SECRET="real-looking-secret",
                   CALLBACK_API_KEY="startup-key", PAYMENTS_DB=tmp_path / "p.db")
    done = subprocess.run([sys.executable, "callback_server.py", "--port", str(free_port())], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "MPESA_ALLOW_LIVE_MONEY=true" in done.stderr


def test_start_sh_refuses_a_bad_callback_url_before_starting_anything(tmp_path):
    if not installed():
        pytest.skip("start.sh would install requirements into .venv first; run ./test.sh")
    env = base_env(MPESA_ENV="production", MPESA_CALLBACK_URL=f"http://pay.example.com/callback/{GOOD_TOKEN}",
                   MPESA_CONSUMER_KEY="real-looking-key", MPESA_CONSUMER_SECRET="real-looking-secret",
                   ADK_PORT=str(free_port()))
    process = subprocess.Popen(["bash", "start.sh"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:  # it got past the check: stop everything it started
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(10)
    assert process.returncode == 1, output
    assert "Configuration error: MPESA_CALLBACK_URL must use https in production" in output
    assert "Starting" not in output


def test_create_app_refuses_allow_list_entries_that_are_not_addresses(settings):
    with pytest.raises(ConfigError, match="TRUSTED_CALLBACK_IPS has '196.201.212.x'"):
        create_app(settings.replace(trusted_callback_ips=("196.201.212.x",)))
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES has 'ngrok'"):
        create_app(settings.replace(trusted_proxies=("ngrok",)))


# Source allow-list and X-Forwarded-For -----------------------------------------------------

@pytest.mark.parametrize("peer, forwarded, proxies, expected", [
    ("196.201.212.69", None, (), "196.201.212.69"),
    ("6.6.6.6", "196.201.212.69", (), "6.6.6.6"),  # no trusted proxy: the header is ignored
    ("6.6.6.6", "196.201.212.69", ("127.0.0.1",), "6.6.6.6"),  # the peer is not a trusted proxy
    ("127.0.0.1", "196.201.212.69", ("127.0.0.1",), "196.201.212.69"),
    ("127.0.0.1", "196.201.212.69, 6.6.6.6", ("127.0.0.1",), "6.6.6.6"),  # a forged left part
    ("127.0.0.1", "6.6.6.6, 196.201.212.69", ("127.0.0.1",), "196.201.212.69"),
    ("10.0.0.2", "196.201.212.69, 10.0.0.7", ("127.0.0.1", "10.0.0.0/8"), "196.201.212.69"),  # proxy chain
    ("127.0.0.1", "", ("127.0.0.1",), "127.0.0.1"),
    ("127.0.0.1", "127.0.0.1", ("127.0.0.1",), "127.0.0.1"),
    ("127.0.0.1", "unknown", ("127.0.0.1",), "unknown"),  # garbage is never an allowed address
    ("::1", "2001:db8::5", ("::1",), "2001:db8::5"),
])
def test_the_client_address_believes_only_trusted_proxies(app, settings, peer, forwarded, proxies, expected):
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    with app.test_request_context("/", headers=headers, environ_base={"REMOTE_ADDR": peer}):
        assert client_address(settings.replace(trusted_proxies=proxies)) == expected


@pytest.mark.parametrize("address, allowed, expected", [
    ("196.201.212.69", ("196.201.212.69",), True), ("196.201.212.70", ("196.201.212.69",), False),
    ("196.201.212.138", ("196.201.212.0/24",), True), ("196.201.213.1", ("196.201.212.0/24",), False),
    ("unknown", ("0.0.0.0/0",), False), ("", ("0.0.0.0/0",), False), ("1.2.3.4:80", ("1.2.3.4",), False),
    ("::ffff:196.201.212.69", ("196.201.212.69",), False), ("2001:db8::1", ("2001:db8::/32",), True),
])
def test_address_in(address, allowed, expected):
    assert address_in(address, allowed) is expected


def test_allow_list_is_off_by_default(client, settings):
    assert settings.trusted_callback_ips == () and settings.trusted_proxies == ()
    register(client)
    answer = client.post(CALLBACK, data=callback_body(), content_type="application/json",
                         environ_base={"REMOTE_ADDR": "6.6.6.6"}, headers={"X-Forwarded-For": "1.2.3.4"})
    assert answer.status_code == 200 and status(client)["status"] == "success"


def test_real_server_joins_repeated_forwarded_headers_and_takes_the_rightmost(tmp_path):
    """A client's own X-Forwarded-For plus the proxy's: the server joins them; the proxy's hop wins."""
    port = free_port()
    env = base_env(MPESA_ENV="simulator", CALLBACK_API_KEY="xff-key",
                   MPESA_CALLBACK_URL=f"http://127.0.0.1:{port}/callback/{TOKEN}",
                   TRUSTED_CALLBACK_IPS="196.201.212.0/24", TRUSTED_PROXIES="127.0.0.1")
    server = Process(["callback_server.py", "--port", str(port), "--db", str(tmp_path / "p.db")], env,
                     f"http://127.0.0.1:{port}/health", tmp_path / "server.log").start()
    try:
        def post(*forwarded):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.putrequest("POST", CALLBACK)
            body = callback_body(checkout_request_id="ws_CO_xff")
            for hop in forwarded:
                conn.putheader("X-Forwarded-For", hop)
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            status_code = conn.getresponse().status
            conn.close()
            return status_code

        assert post("196.201.212.69", "6.6.6.6") == 403  # forged first header, the proxy's second
        assert post("6.6.6.6", "196.201.212.69") == 200
        assert post("196.201.212.69") == 200
        assert post() == 403  # the peer itself (127.0.0.1) is not Safaricom
        db = sqlite3.connect(tmp_path / "p.db")
        rows = db.execute("SELECT source_addr, outcome FROM callbacks ORDER BY id").fetchall()
        db.close()
        assert rows == [("6.6.6.6", "rejected"), ("196.201.212.69", "parked"), ("196.201.212.69", "parked"),
                        ("127.0.0.1", "rejected")]
    finally:
        server.stop()

