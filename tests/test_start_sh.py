"""./start.sh says plainly what stops it: a busy port (and who holds it), a process that dies at start."""
import os
import signal
import socket
import subprocess

import pytest
import requests

from harness import ROOT, base_env, free_port, installed

TOKEN = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"


@pytest.fixture(autouse=True)
def requirements_installed():
    if not installed():
        pytest.skip("start.sh would install requirements into .venv first; run ./test.sh")


def run_start_sh(tmp_path, **env) -> tuple[int, str]:
    """start.sh on free ports (or those given), its database in tmp_path; its output once it ends."""
    sim, server = env.pop("sim", free_port()), env.pop("server", free_port())
    env = base_env(MPESA_ENV="simulator", MPESA_BASE_URL=f"http://127.0.0.1:{sim}",
                   CALLBACK_SERVER_URL=f"http://127.0.0.1:{server}",
                   MPESA_CALLBACK_URL=f"http://127.0.0.1:{server}/callback/{TOKEN}", CALLBACK_API_KEY="start-sh-key",
                   PAYMENTS_DB=tmp_path / "payments.db", ADK_PORT=str(env.pop("adk", free_port())), **env)
    process = subprocess.Popen(["bash", "start.sh"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:  # it got further than it should have: stop everything it started
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(10)
    return process.returncode, output


def test_a_busy_port_is_named_with_what_holds_it_before_anything_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = run_start_sh(tmp_path, server=port)
    assert code == 1, output
    assert f"Port {port} (callback server) is already in use by pid {os.getpid()} (" in output
    assert "Starting" not in output and "Ready" not in output


def test_a_process_that_dies_at_start_shows_its_own_error_and_nothing_stays_up(tmp_path):
    (tmp_path / "payments.db").mkdir()  # the callback server cannot use a folder as its database
    sim = free_port()
    code, output = run_start_sh(tmp_path, sim=sim)
    assert code == 1, output
    assert "callback_server stopped while starting." in output
    assert f"Database error: {tmp_path / 'payments.db'}: it is a folder, not a file" in output
    assert "Ready" not in output
    with socket.socket() as probe:  # the simulator it had started was stopped too
        # SO_REUSEADDR: the health check's closed connection may leave the port in TIME_WAIT; a socket
        # still listening on it makes the bind fail all the same.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", sim))


def test_ready_only_when_every_process_answers_as_itself_and_chats_are_kept_in_a_file(tmp_path):
    sessions, adk = tmp_path / "sessions.db", free_port()
    env = base_env(MPESA_ENV="simulator", MPESA_BASE_URL=f"http://127.0.0.1:{free_port()}",
                   CALLBACK_SERVER_URL=f"http://127.0.0.1:{(server := free_port())}",
                   MPESA_CALLBACK_URL=f"http://127.0.0.1:{server}/callback/{TOKEN}", CALLBACK_API_KEY="start-sh-key",
                   PAYMENTS_DB=tmp_path / "payments.db", ADK_PORT=str(adk), SESSIONS_DB=sessions,
                   START_A2A="1", A2A_PORT=str(a2a := free_port()))
    process = subprocess.Popen(["bash", "start.sh"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    try:
        for line in process.stdout:  # a hang guard: communicate's timeout below ends a stuck start
            lines.append(line)
            if line.startswith("Ready.") or "did not come up" in line:
                break
        assert lines[-1].startswith(f"Ready. Chat: http://127.0.0.1:{adk}/dev-ui/?app=mpesa_agent"), "".join(lines)
        dashboard = process.stdout.readline()
        assert dashboard.startswith(f"Dashboard: http://127.0.0.1:{server}/dashboard "), dashboard
        assert "/dashboard/sign-in" in requests.get(f"http://127.0.0.1:{server}/dashboard", timeout=10,
                                                    allow_redirects=False).headers["Location"]
        created = requests.post(f"http://127.0.0.1:{adk}/apps/mpesa_agent/users/u/sessions/s1", json={}, timeout=10)
        assert created.status_code == 200, created.text
        assert sessions.is_file() and b"s1" in sessions.read_bytes()
        card = requests.get(f"http://127.0.0.1:{a2a}/.well-known/agent-card.json", timeout=10).json()
        assert card["name"] == "mpesa_agent"  # START_A2A=1 started the agent over A2A too
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert "Stopped." in output
