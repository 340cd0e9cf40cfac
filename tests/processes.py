"""Real processes on 127.0.0.1 for integration tests: free ports, start, wait, kill."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


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

    def kill(self) -> None:
        """kill -9: no clean shutdown, like a crash or a power cut of the process."""
        if self.popen and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def stop(self) -> None:
        if self.popen and self.popen.poll() is None:
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
           if not k.startswith(("MPESA_", "CALLBACK_", "PAYMENT", "GOOGLE_", "GEMINI_", "SIMULATOR_"))}
    env.update({k: str(v) for k, v in overrides.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env
