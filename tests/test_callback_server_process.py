"""The real server process over HTTP: waiters woken by callbacks, and kill -9 loses nothing."""
import json
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests

from harness import ROOT, callback_server
from test_callback_manager import (SAMPLE_CANCELLED, SAMPLE_CANCELLED_ID, SAMPLE_SUCCESS, SAMPLE_SUCCESS_ID,
                                   SAMPLE_SUCCESS_PHONE, callback_body)

TOKEN = "f00dfeedf00dfeedf00dfeedf00dfeed"
API_KEY = "process-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ACCEPTED = {"ResultCode": 0, "ResultDesc": "Accepted"}


@pytest.fixture
def server(tmp_path):
    process = callback_server(tmp_path, api_key=API_KEY, token=TOKEN, path="/hooks/daraja")
    yield process.start()
    process.stop()


def post_callback(server, body: bytes, **kwargs):
    return requests.post(f"{server.url}/hooks/daraja/{TOKEN}", data=body, timeout=5,
                         headers={"Content-Type": "application/json"}, **kwargs)


def api(server, method, path, **kwargs):
    return requests.request(method, server.url + path, headers=AUTH, timeout=20, **kwargs)


def register(server, checkout_id, phone="0712345678", amount=500, description="lunch"):
    return api(server, "POST", "/payment/register", json={
        "checkout_request_id": checkout_id, "phone_number": phone, "amount": amount, "description": description})


def test_startup_line_says_where_callbacks_go_without_the_secrets(server):
    log = server.log()
    assert "Daraja callbacks expected at POST /hooks/daraja/f00d… " in log
    assert "Store: SQLite " in log and "synchronous=FULL" in log
    assert "API key for /payment/* and /events (Authorization: Bearer ...): the CALLBACK_API_KEY environment variable" in log
    assert TOKEN not in log and API_KEY not in log


def test_waiters_are_woken_by_callbacks_over_http(server):
    ids = [f"ws_CO_proc_{n}" for n in range(30)]
    for checkout_id in ids:
        assert register(server, checkout_id).status_code == 201
    answers = {}

    def wait(checkout_id):
        answers[checkout_id] = api(server, "GET", f"/payment/wait/{checkout_id}?timeout=15").json()

    waiters = [threading.Thread(target=wait, args=(checkout_id,)) for checkout_id in ids]
    for waiter in waiters:
        waiter.start()
    time.sleep(0.3)
    started = time.monotonic()
    for n, checkout_id in enumerate(ids):
        code = 0 if n % 2 == 0 else 1032
        assert post_callback(server, callback_body(checkout_request_id=checkout_id, result_code=code)).json() == ACCEPTED
    for waiter in waiters:
        waiter.join(10)
    assert time.monotonic() - started < 5
    assert [answers[c]["status"] for c in ids] == ["success", "failed"] * 15
    assert answers[ids[0]]["message"] == "💰 Payment completed successfully! 500 KSh sent to 0712345678 for lunch"


def test_kill_9_and_restart_lose_nothing(server):
    assert register(server, SAMPLE_SUCCESS_ID, SAMPLE_SUCCESS_PHONE, 1, "test").status_code == 201
    assert register(server, "ws_CO_still_pending").status_code == 201
    assert post_callback(server, SAMPLE_SUCCESS).json() == ACCEPTED
    assert post_callback(server, SAMPLE_CANCELLED).json() == ACCEPTED  # not registered yet: parked
    assert post_callback(server, b"{broken").status_code == 400
    wrong = requests.post(f"{server.url}/hooks/daraja/{'0' * 32}", data=SAMPLE_SUCCESS, timeout=5)
    assert wrong.status_code == 404
    too_big = post_callback(server, (b"x" * 1024 for _ in range(80)))  # chunked, 80 KiB
    assert too_big.status_code == 413

    server.kill()  # kill -9: no clean shutdown
    server.start()

    assert api(server, "GET", f"/payment/status/{SAMPLE_SUCCESS_ID}").json()["status"] == "success"
    assert api(server, "GET", "/payment/status/ws_CO_still_pending").json()["status"] == "pending"
    matched = register(server, SAMPLE_CANCELLED_ID, "0722943992", 1, "test")
    assert matched.status_code == 201 and matched.json()["payment_status"] == "failed"
    assert api(server, "GET", f"/payment/wait/{SAMPLE_CANCELLED_ID}?timeout=5").json()["error_message"] == \
        "Request cancelled by user"
    health = requests.get(f"{server.url}/health", timeout=5).json()
    assert health["payments"] == {"completed": 1, "failed": 1, "pending": 1}
    assert health["callbacks"] == {"applied": 2, "invalid": 1, "rejected": 1}


def test_a_late_callback_after_a_timed_out_wait_settles_the_payment(server):
    register(server, "ws_CO_late")
    assert api(server, "GET", "/payment/wait/ws_CO_late?timeout=0.2").json()["status"] == "timeout"
    assert post_callback(server, callback_body(checkout_request_id="ws_CO_late")).json() == ACCEPTED
    assert api(server, "GET", "/payment/status/ws_CO_late").json()["status"] == "success"


@pytest.mark.parametrize("raw, status", [
    (b"NONSENSE\r\n\r\n", 400),                                                  # not a request line
    (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 400),  # a header line too long
    (b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-Many-%d: " % n + b"a" * 8000 + b"\r\n" for n in range(9))
     + b"\r\n", 413),                                                               # headers over 64 KiB in all
    (b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n", 400),
])
def test_the_http_servers_own_errors_are_json_too(server, raw, status):
    """Answers the HTTP server gives before the app sees the request (docs promise JSON everywhere)."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].split(" ")[1] == str(status), lines[0]
    assert "Content-Type: application/json" in lines
    assert json.loads(body)["status"] == "error" and json.loads(body)["error"]


def test_a_second_server_on_the_same_sqlite_file_is_refused_not_silently_deaf(server, tmp_path):
    """Its waiters would never hear the first one's callbacks: it stops with one clear line instead."""
    second = callback_server(tmp_path, api_key=API_KEY, token=TOKEN)
    done = subprocess.run([sys.executable, *second.args], cwd=ROOT, env=second.env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 3, done.stderr
    assert f"Database error: {tmp_path / 'payments.db'} is already served by another callback server (pid" in done.stderr
    assert requests.get(f"{server.url}/health", timeout=5).json()["status"] == "ok"
    server.kill()  # kill -9 drops the lock with the process
    assert server.start().running
