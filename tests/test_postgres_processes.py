"""Several callback server processes over one PostgreSQL database (issue 10, items 3 and 4):
real processes on 127.0.0.1, real HTTP, a real PostgreSQL (tests/conftest.py's postgres_url)."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest
import requests

from harness import ROOT, Stack, base_env, callback_server, free_port, pgserver
from mpesa_agent.server.store import open_store
from tests.test_callback_manager import make_stk_callback

TOKEN, KEY = "cd" * 16, "pg-proc-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def register(url: str, checkout_id: str, amount: int = 500) -> None:
    requests.post(f"{url}/payment/register", headers=AUTH, timeout=10, json={
        "checkout_request_id": checkout_id, "phone_number": "0712345678", "amount": amount,
        "description": "lunch"}).raise_for_status()


def post_callback(url: str, checkout_id: str, receipt: str, amount: int = 500) -> requests.Response:
    body = make_stk_callback(checkout_request_id=checkout_id, amount=amount, receipt=receipt)
    return requests.post(f"{url}/callback/{TOKEN}", data=json.dumps(body), timeout=10,
                         headers={"Content-Type": "application/json"})


@pytest.fixture
def two_servers(tmp_path, postgres_url):
    """Servers A and B, separate processes on separate ports, over one PostgreSQL schema."""
    servers = []
    try:
        for name in ("a", "b"):
            folder = tmp_path / name
            folder.mkdir()
            server = callback_server(folder, api_key=KEY, token=TOKEN, PAYMENTS_DB=postgres_url)
            servers.append(server.start())
        yield servers
    finally:
        for server in servers:
            server.stop()


def test_a_waiter_and_a_stream_on_one_process_are_woken_by_a_callback_the_other_received(two_servers):
    a, b = two_servers
    results = {}
    waits = []
    for n in range(5):
        checkout_id = f"ws_CO_pg_{n}"
        register(a.url, checkout_id)
        thread = threading.Thread(target=lambda c=checkout_id: results.update({c: requests.get(
            f"{a.url}/payment/wait/{c}?timeout=20", headers=AUTH, timeout=30).json()}))
        thread.start()
        waits.append(thread)
    stream = requests.get(f"{a.url}/events/stream?after=0&timeout=20", headers=AUTH, stream=True, timeout=30)
    time.sleep(0.5)  # the waiters are held on A
    for n in range(5):
        assert post_callback(b.url, f"ws_CO_pg_{n}", receipt=f"PGRECEIPT{n}").status_code == 200
    for thread in waits:
        thread.join(15)  # a hang guard: LISTEN/NOTIFY wakes them long before their 20 s
    assert {c: r["payment"]["status"] for c, r in results.items()} == {
        f"ws_CO_pg_{n}": "completed" for n in range(5)}, results
    seen = []
    for line in stream.iter_lines(decode_unicode=True):
        if line.startswith("data:"):
            event = json.loads(line[5:])
            if event["type"] == "payment.completed":
                seen.append(event["checkout_request_id"])
            if len(seen) == 5:
                break
    stream.close()
    assert sorted(seen) == [f"ws_CO_pg_{n}" for n in range(5)]
    # both processes read one database: the same payment from either
    status_a = requests.get(f"{a.url}/payment/status/ws_CO_pg_0", headers=AUTH, timeout=10).json()
    status_b = requests.get(f"{b.url}/payment/status/ws_CO_pg_0", headers=AUTH, timeout=10).json()
    assert status_a == status_b


def test_a_waiter_is_woken_by_a_callback_stored_while_its_process_was_not_listening(two_servers, postgres_url):
    a, b = two_servers
    register(a.url, "ws_CO_gap_1")
    answer = {}

    def wait():
        started = time.monotonic()
        answer.update(requests.get(f"{a.url}/payment/wait/ws_CO_gap_1?timeout=60", headers=AUTH, timeout=70).json(),
                      seconds=time.monotonic() - started)
    waiter = threading.Thread(target=wait)
    waiter.start()
    until_waiting(a.url, 1)
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # A's LISTEN connection drops (a network blip)
        [[dropped]] = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                   " WHERE application_name = %s", (f"mpesa listen {a.popen.pid}",)).fetchall()
    assert dropped == 1
    assert post_callback(b.url, "ws_CO_gap_1", receipt="PGGAPRCPT1").status_code == 200  # while A is not listening
    waiter.join(30)  # a hang guard: A catches up when it listens again, about a second later
    assert answer["payment"]["status"] == "completed" and answer["seconds"] < 30, answer  # woken, not timed out


def test_a_write_whose_connection_drops_raises_and_is_never_taken_for_committed(postgres_url):
    # psycopg ends a transaction block on a broken connection without COMMIT and without an error;
    # the callback route swallows its apply's failure (kept for reapply), so the block ended "cleanly"
    # and the callback was answered 200 without being stored (found by reliability's restart row).
    store = open_store(postgres_url, listen=False)
    try:
        with pytest.raises(psycopg.OperationalError, match="not committed"):
            with store.transaction() as tx:
                tx.insert_callback(b'{"Body": {}}', {}, "127.0.0.1")
                [[pid]] = tx.conn.execute("SELECT pg_backend_pid()").fetchall()
                with psycopg.connect(postgres_url, autocommit=True) as other:
                    other.execute("SELECT pg_terminate_backend(%s)", (pid,))
                with pytest.raises(psycopg.OperationalError):
                    tx.conn.execute("SELECT 1")  # the failure, swallowed inside the block as ingest does
        assert store.callbacks() == [] and store.write_failure is not None
    finally:
        store.close()


def test_while_postgresql_is_down_callbacks_get_503_never_200_and_are_taken_once_it_is_back(tmp_path):
    reason = pgserver.missing()
    if reason:
        pytest.skip(reason)
    with pgserver.PrivatePostgres() as pg:
        server = callback_server(tmp_path, api_key=KEY, token=TOKEN, PAYMENTS_DB=pg.url).start()
        try:
            register(server.url, "ws_CO_down_1")
            pg.stop("immediate")
            refused = post_callback(server.url, "ws_CO_down_1", receipt="PGDOWNRCT1")
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
            assert "database is unavailable" in refused.json()["error"]
            assert requests.get(f"{server.url}/health", timeout=10).status_code == 503
            pg.start()
            answers = []  # the first requests after the restart may meet pooled connections that died with it
            for _ in range(20):
                answers.append(post_callback(server.url, "ws_CO_down_1", receipt="PGDOWNRCT1").status_code)
                if answers[-1] == 200:
                    break
                time.sleep(0.2)
            assert answers[-1] == 200 and set(answers) <= {200, 503}, answers
            status = requests.get(f"{server.url}/payment/status/ws_CO_down_1", headers=AUTH, timeout=10).json()
            assert status["payment"]["status"] == "completed" and status["payment"]["receipt"] == "PGDOWNRCT1"
        finally:
            server.stop()


def until_waiting(url: str, count: int) -> None:
    deadline = time.monotonic() + 10
    while requests.get(f"{url}/health", timeout=10).json()["waiting"] < count:
        assert time.monotonic() < deadline, "the waiter never got held"
        time.sleep(0.02)


def test_one_receipt_completes_one_payment_across_processes(two_servers):
    """Two processes racing to complete two payments with one receipt: exactly one is completed."""
    a, b = two_servers
    register(a.url, "ws_CO_race_1")
    register(a.url, "ws_CO_race_2")
    answers = []
    threads = [threading.Thread(target=lambda url=url, c=c: answers.append(post_callback(url, c, "SAMERCPT1")))
               for url, c in ((a.url, "ws_CO_race_1"), (b.url, "ws_CO_race_2"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert [r.status_code for r in answers] == [200, 200]  # both stored and acknowledged
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # a callback that lost the race may be applied by the reconciler's pass
        states = sorted(requests.get(f"{a.url}/payment/status/{c}", headers=AUTH, timeout=10).json()["payment"]["status"]
                        for c in ("ws_CO_race_1", "ws_CO_race_2"))
        if states == ["completed", "unknown"]:
            break
        time.sleep(0.2)
    assert states == ["completed", "unknown"]


def test_the_reconciler_runs_on_one_process_and_another_takes_over_when_it_dies(tmp_path, postgres_url):
    with Stack(tmp_path / "a", token=TOKEN, api_key=KEY, PAYMENTS_DB=postgres_url, RECONCILE_AFTER_SECONDS="1",
               SIMULATOR_CALLBACK_DELAY="0.1") as stack:
        b_folder = tmp_path / "b"
        b_folder.mkdir()
        b = callback_server(b_folder, api_key=KEY, token=TOKEN, PAYMENTS_DB=postgres_url,
                            MPESA_BASE_URL=stack.sim_url, MPESA_CONSUMER_KEY="stack-key",
                            MPESA_CONSUMER_SECRET="stack-secret", RECONCILE_AFTER_SECONDS="1").start()
        try:
            time.sleep(1.5)  # both have tried to become the reconciler
            runs = [name for name, log in (("a", stack.server.log()), ("b", b.log())) if "runs the reconciler" in log]
            assert len(runs) == 1, runs
            leader, other = (stack.server, b) if runs == ["a"] else (b, stack.server)
            leader.kill()  # kill -9: its session ends, and its lock with it
            deadline = time.monotonic() + 15
            while "runs the reconciler" not in other.log() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert "runs the reconciler" in other.log()
        finally:
            b.stop()


def test_workers_share_one_port_and_a_dead_worker_is_replaced(tmp_path, postgres_url):
    port = free_port()
    env = base_env(MPESA_ENV="simulator", CALLBACK_API_KEY=KEY, PAYMENTS_DB=postgres_url,
                   MPESA_CALLBACK_URL=f"http://127.0.0.1:{port}/callback/{TOKEN}")
    with open(tmp_path / "workers.log", "wb") as log:
        parent = subprocess.Popen([sys.executable, "callback_server.py", "--port", str(port), "--workers", "2"],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        pids = set()
        while len(pids) < 2 and time.monotonic() < deadline:
            pids = set(re.findall(r"worker pid (\d+)", (tmp_path / "workers.log").read_text()))
            time.sleep(0.2)
        assert len(pids) == 2, (tmp_path / "workers.log").read_text()
        for n in range(20):
            register(url, f"ws_CO_w_{n}")
            assert post_callback(url, f"ws_CO_w_{n}", receipt=f"WRKRCPT{n:02d}").status_code == 200
        assert requests.get(f"{url}/health", timeout=10).json()["payments"] == {"completed": 20}
        os.kill(int(sorted(pids)[0]), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while len(set(re.findall(r"worker pid (\d+)", (tmp_path / "workers.log").read_text()))) < 3:
            assert time.monotonic() < deadline, (tmp_path / "workers.log").read_text()
            time.sleep(0.2)
        for _ in range(10):  # whichever worker answers, it answers
            assert requests.get(f"{url}/health", timeout=10).status_code == 200
    finally:
        parent.terminate()
        assert parent.wait(20) == 0, (tmp_path / "workers.log").read_text()
    assert "Traceback" not in (tmp_path / "workers.log").read_text()


def test_workers_over_sqlite_are_refused_with_one_line(tmp_path):
    env = base_env(MPESA_ENV="simulator", CALLBACK_API_KEY=KEY, PAYMENTS_DB=tmp_path / "p.db",
                   MPESA_CALLBACK_URL=f"http://127.0.0.1:8001/callback/{TOKEN}")
    done = subprocess.run([sys.executable, "callback_server.py", "--workers", "2"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "several processes need PAYMENTS_DB=postgresql://" in done.stderr and "Traceback" not in done.stderr


def test_an_unreachable_postgresql_is_one_clear_line_and_exit_3(tmp_path):
    port = free_port()  # nothing listens there
    env = base_env(MPESA_ENV="simulator", CALLBACK_API_KEY=KEY,
                   PAYMENTS_DB=f"postgresql://mpesa:s3cret@127.0.0.1:{port}/payments",
                   MPESA_CALLBACK_URL=f"http://127.0.0.1:8001/callback/{TOKEN}")
    done = subprocess.run([sys.executable, "callback_server.py", "--port", str(free_port())], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    line = [l for l in done.stderr.splitlines() if l.startswith("Database error")]
    assert line and "PostgreSQL says" in line[0] and "s3cret" not in done.stderr and "Traceback" not in done.stderr
