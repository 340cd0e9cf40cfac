"""Real processes on 127.0.0.1 for tests, the reliability report and the benchmark: free ports,
start, wait, kill -9."""
from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from mpesa_agent.config import PROJECT_ROOT as ROOT, Settings

HTTP_TIMEOUT = 10.0  # seconds, for the Stack's own requests to the processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """A child process with its output in a log file, stopped (or killed) on demand."""

    def __init__(self, args: list[str], env: dict, ready_url: str, log_path: Path):
        self.args, self.env, self.ready_url, self.log_path = args, env, ready_url, log_path
        self.popen: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> "Process":
        log = open(self.log_path, "ab")
        self.popen = subprocess.Popen([sys.executable, *self.args], cwd=ROOT, env=self.env,
                                      stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.args} exited with {self.popen.returncode}:\n{self.log()}")
            try:
                requests.get(self.ready_url, timeout=1)
                return self
            except requests.RequestException:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.args} not ready after {timeout}s:\n{self.log()}")

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """kill -9: no clean shutdown, like a crash or a power cut of the process."""
        if self.running:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def stop(self) -> None:
        if self.running:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def base_env(**overrides) -> dict:
    """The parent's environment without the developer's payment settings, plus `overrides`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MPESA_", "CALLBACK_", "PAYMENT", "GOOGLE_", "GEMINI_", "SIMULATOR_",
                                "TRUSTED_", "RECONCILE_", "VERIFY_", "WEBHOOK", "BULK_", "DASHBOARD_"))}
    env["MPESA_ENV_FILES"] = ".env"  # never the developer's .env.local
    env.update({k: str(v) for k, v in overrides.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def callback_server(folder: Path, *, api_key: str, token: str, path: str = "/callback",
                    args: tuple[str, ...] = (), **env) -> Process:
    """The callback server alone on a free port, its database and log in `folder`; `.url` is
    where it listens. Not started: call `start()`."""
    port = free_port()
    env = base_env(**{"MPESA_ENV": "simulator", "CALLBACK_API_KEY": api_key,
                      "MPESA_CALLBACK_URL": f"http://127.0.0.1:{port}{path}/{token}",
                      "PAYMENTS_DB": folder / "payments.db", **env})
    process = Process(["callback_server.py", "--port", str(port), *args], env,
                      f"http://127.0.0.1:{port}/health", folder / "server.log")
    process.url = f"http://127.0.0.1:{port}"
    return process


class Stack:
    """The callback server and, unless `simulator=False`, the Daraja simulator as real processes on
    127.0.0.1, sharing one environment; a context manager.

    `server_args` go to callback_server.py (e.g. `("--per-source", "50")`), `db` is its database (default `folder/payments.db`), `wait`
    how long each process may take to get ready; `env` adds or overrides variables
    (`PAYMENT_WAIT_SECONDS="8"`). `settings` is what the agent's tools in this process use to reach them.
    """

    def __init__(self, folder: Path, *, token: str = "0123456789abcdef0123456789abcdef",
                 api_key: str = "stack-test-key", simulator: bool = True, server_args: tuple[str, ...] = (),
                 db: Path | None = None, wait: float = 20.0, **env):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.db, self.api_key, self.wait = folder, db or folder / "payments.db", api_key, wait
        self.sim_port, self.port = free_port(), free_port()
        self.url, self.sim_url = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.sim_port}"
        self.callback_url = f"{self.url}/callback/{token}"
        self.env = base_env(**{
            "MPESA_ENV": "simulator", "MPESA_CONSUMER_KEY": "stack-key", "MPESA_CONSUMER_SECRET": "stack-secret",
            "MPESA_BASE_URL": self.sim_url, "MPESA_CALLBACK_URL": self.callback_url,
            "CALLBACK_SERVER_URL": self.url, "CALLBACK_API_KEY": api_key,
            "PAYMENTS_DB": self.db, "SIMULATOR_CALLBACK_DELAY": "0.2", **env})
        self.settings = Settings.from_env(self.env, load_files=False)
        self.simulator = Process(["-m", "mpesa_agent.simulator", "--port", str(self.sim_port)], self.env,
                                 f"{self.sim_url}/simulator/health", folder / "simulator.log") if simulator else None
        self.server = Process(["callback_server.py", "--port", str(self.port), *server_args], self.env,
                              f"{self.url}/health", folder / "server.log")

    @property
    def server_pid(self) -> int:
        return self.server.popen.pid

    def __enter__(self) -> "Stack":
        try:
            if self.simulator:
                self.simulator.start(self.wait)
            self.server.start(self.wait)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.server.stop()
        if self.simulator:
            self.simulator.stop()

    def restart_server(self, hard: bool = True) -> None:
        """kill -9 (or stop) the callback server, then start it again on the same port and database."""
        self.server.kill() if hard else self.server.stop()
        self.server.start(self.wait)

    def post_callback(self, body: bytes, session=requests) -> requests.Response:
        """POST `body` to the callback URL, as Daraja does."""
        return session.post(self.callback_url, data=body, timeout=HTTP_TIMEOUT,
                            headers={"Content-Type": "application/json"})

    def api(self, method: str, path: str, session=requests, timeout: float = HTTP_TIMEOUT,
            headers: dict | None = None, **kwargs) -> requests.Response:
        """A request to the server's /payment/* API, with the API key."""
        return session.request(method, self.url + path, timeout=timeout,
                               headers={"Authorization": f"Bearer {self.api_key}", **(headers or {})}, **kwargs)

    def waiting(self) -> int:
        """How many long-poll waiters the server holds now."""
        return requests.get(self.url + "/health", timeout=HTTP_TIMEOUT).json()["waiting"]

    def control(self, method: str, path: str, **kwargs) -> dict:
        """A call to the simulator's control API (/simulator/...)."""
        response = requests.request(method, self.sim_url + "/simulator" + path, timeout=HTTP_TIMEOUT, **kwargs)
        response.raise_for_status()
        return response.json()

    def pushes_to(self, msisdn: str) -> list[dict]:
        """The simulator's transactions for one phone: each is one PIN prompt on the customer's phone."""
        return [t for t in self.control("GET", "/transactions")["transactions"] if t["phone_number"] == msisdn]


def installed() -> bool:
    """.venv holds what scripts/venv.sh would install (the same stamp): start.sh would not install first."""
    stamp = ROOT / ".venv" / ".requirements.sha256"
    wanted = hashlib.sha256((ROOT / "requirements.txt").read_bytes() + (ROOT / "pyproject.toml").read_bytes())
    return stamp.is_file() and stamp.read_text().strip() == wanted.hexdigest()
