"""The served process under hostile and crowded clients: held connections cost no thread, slow
clients are cut off, one address cannot take every connection, and Daraja's callbacks still land."""
import json
import socket
import time

import pytest
import requests

from harness import callback_server
from tests.test_callback_manager import callback_body

TOKEN = "5e7a11c0de5e7a11c0de5e7a11c0de5e"
API_KEY = "serving-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def open_socket(url: str, timeout: float = 30) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def answer(sock: socket.socket) -> tuple[int, dict]:
    """Read one whole HTTP answer whose body is JSON: (status, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before an answer: {data[:200]!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ")[1]), json.loads(body)


def register(server, checkout_id: str) -> None:
    response = requests.post(f"{server.url}/payment/register", headers=AUTH, timeout=10, json={
        "checkout_request_id": checkout_id, "phone_number": "0712345678", "amount": 500})
    assert response.status_code == 201, response.text


def test_slow_clients_and_held_waits_take_nothing_from_callbacks(tmp_path):
    """300 slowloris connections and 300 held long-polls at once: a callback is still stored and
    acknowledged, /health answers, and every held waiter gets its own outcome."""
    server = callback_server(tmp_path, api_key=API_KEY, token=TOKEN).start()
    held = []
    try:
        for n in range(300):
            register(server, f"ws_CO_held_{n}")
        slow = [open_socket(server.url) for _ in range(300)]
        for sock in slow:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and then nothing
        for n in range(300):
            sock = open_socket(server.url)
            sock.sendall(f"GET /payment/wait/ws_CO_held_{n}?timeout=120 HTTP/1.1\r\nHost: x\r\n"
                         f"Authorization: Bearer {API_KEY}\r\n\r\n".encode())
            held.append(sock)
        deadline = time.monotonic() + 30
        while requests.get(f"{server.url}/health", timeout=10).json()["waiting"] < 300:
            assert time.monotonic() < deadline, "the waits were not all held"
            time.sleep(0.1)
        register(server, "ws_CO_daraja")
        acked = requests.post(f"{server.url}/callback/{TOKEN}", data=callback_body(checkout_request_id="ws_CO_daraja"),
                              headers={"Content-Type": "application/json"}, timeout=10)
        assert acked.json() == {"ResultCode": 0, "ResultDesc": "Accepted"}
        health = requests.get(f"{server.url}/health", timeout=10).json()
        assert health["payments"] == {"pending": 300, "completed": 1} and health["waiting"] == 300
        for n in range(300):
            requests.post(f"{server.url}/callback/{TOKEN}", timeout=10, headers={"Content-Type": "application/json"},
                          data=callback_body(checkout_request_id=f"ws_CO_held_{n}", result_code=(0, 1032)[n % 2]))
        outcomes = [answer(sock) for sock in held]
        assert [status for status, _ in outcomes] == [200] * 300
        assert [body["checkout_request_id"] for _, body in outcomes] == [f"ws_CO_held_{n}" for n in range(300)]
        assert [body["status"] for _, body in outcomes] == [("success", "failed")[n % 2] for n in range(300)]
        for sock in slow + held:
            sock.close()
    finally:
        server.stop()


def test_a_client_that_trickles_its_headers_is_cut_off_with_a_json_408(tmp_path):
    server = callback_server(tmp_path, api_key=API_KEY, token=TOKEN, args=("--header-timeout", "1")).start()
    try:
        sock = open_socket(server.url)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        for _ in range(3):  # one header byte every half second: each read is quick, the whole head is not
            time.sleep(0.5)
            try:
                sock.sendall(b"X")
            except OSError:
                break
        status, body = answer(sock)
        assert status == 408 and body["status"] == "error" and "did not arrive in time" in body["error"]
        assert time.monotonic() - started < 10
        idle = open_socket(server.url)
        assert idle.recv(100) == b""  # an idle connection that never sends a request is closed after the deadline
    finally:
        server.stop()


def non_loopback_address() -> str | None:
    """This machine's address on a real interface (the source of a connection that is not loopback)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.254", 9))  # no packet is sent: this only picks the outgoing interface
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address


def test_one_address_cannot_hold_every_connection(tmp_path):
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no network interface but loopback (loopback is exempt from the cap)")
    server = callback_server(tmp_path, api_key=API_KEY, token=TOKEN, args=("--host", "0.0.0.0", "--per-source", "5"))
    port = server.url.rsplit(":", 1)[1]
    server.start()
    server.url = f"http://{address}:{port}"  # connections from there are not loopback
    try:
        mine = [open_socket(server.url) for _ in range(5)]
        for sock in mine:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer(sock)[0] == 200  # kept alive: still open
        sixth = open_socket(server.url)
        status, body = answer(sixth)
        assert status == 429 and "too many open connections" in body["error"]
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200  # others still served
        mine.pop().close()
        time.sleep(0.2)
        again = open_socket(server.url)
        again.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer(again)[0] == 200
        for sock in mine + [again, sixth]:
            sock.close()
    finally:
        server.stop()


def request_line(path: str, close: bool = False) -> bytes:
    extra = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n{extra}\r\n".encode()


def health(server) -> dict:
    return requests.get(f"{server.url}/health", timeout=10).json()


def until(condition, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the parked-wait tests (each uses its own payment)."""
    process = callback_server(tmp_path_factory.mktemp("parking"), api_key=API_KEY, token=TOKEN).start()
    yield process
    process.stop()


def test_a_parked_wait_is_answered_by_its_callback_and_its_connection_serves_on(server):
    register(server, "ws_CO_park_1")
    sock = open_socket(server.url)
    sock.sendall(request_line("/payment/wait/ws_CO_park_1?timeout=60"))
    until(lambda: health(server)["waiting"] == 1)
    sent = requests.post(f"{server.url}/callback/{TOKEN}", data=callback_body(
        checkout_request_id="ws_CO_park_1"), timeout=10)
    assert sent.status_code == 200
    status, body = answer(sock)
    assert status == 200 and body["payment_status"] == "completed" and body["payment"]["receipt"]
    sock.sendall(request_line("/payment/status/ws_CO_park_1"))  # the same connection, kept alive
    status, body = answer(sock)
    assert status == 200 and body["payment_status"] == "completed"
    sock.sendall(request_line("/payment/wait/ws_CO_park_1?timeout=60"))  # settled: answered at once
    assert answer(sock)[1]["payment_status"] == "completed"
    assert health(server)["waiting"] == 0
    sock.close()


def test_a_parked_wait_times_out_with_the_pending_answer_and_an_unknown_id_with_a_404(server):
    register(server, "ws_CO_park_2")
    sock = open_socket(server.url)
    started = time.monotonic()
    sock.sendall(request_line("/payment/wait/ws_CO_park_2?timeout=0.5"))
    status, body = answer(sock)
    assert status == 200 and body["status"] == "timeout" and body["payment_status"] == "pending"
    assert time.monotonic() - started >= 0.45  # answered at its timeout, not at once
    sock.sendall(request_line("/payment/wait/ws_CO_never_registered?timeout=0.3", close=True))
    status, body = answer(sock)
    assert status == 404 and "no payment registered" in body["error"]
    assert sock.recv(100) == b""  # Connection: close was honoured after the parked answer
    sock.close()
    assert health(server)["waiting"] == 0  # nothing left subscribed


def test_a_parked_wait_whose_client_left_is_dropped_without_harm(server):
    register(server, "ws_CO_park_3")
    socks = [open_socket(server.url) for _ in range(20)]
    for sock in socks:
        sock.sendall(request_line("/payment/wait/ws_CO_park_3?timeout=60"))
    until(lambda: health(server)["waiting"] == 20)
    for sock in socks[:10]:
        sock.close()  # gone before the answer
    assert requests.post(f"{server.url}/callback/{TOKEN}", data=callback_body(
        checkout_request_id="ws_CO_park_3"), timeout=10).status_code == 200
    for sock in socks[10:]:
        assert answer(sock)[1]["payment_status"] == "completed"
        sock.close()
    until(lambda: health(server)["waiting"] == 0)
    assert health(server)["status"] == "ok"
