"""A PostgreSQL server of one test's own: `initdb` in a temporary folder, started on a free port of
127.0.0.1, so that a test may crash and restart it (`restart()`: an immediate stop, as a power cut
or an OOM kill leaves it, then crash recovery) without touching the machine's shared server.

Needs the PostgreSQL server binaries (Debian's postgresql package: /usr/lib/postgresql/N/bin). As
root, they run as the `postgres` user (initdb refuses root). `missing()` says why it cannot run."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness import free_port


def bindir() -> Path | None:
    """The newest installed server binaries (initdb and pg_ctl side by side)."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]),
                            reverse=True):
        if os.access(f"{candidate}/initdb", os.X_OK) and os.access(f"{candidate}/pg_ctl", os.X_OK):
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl", path=str(Path(found).parent)) else None


def missing() -> str | None:
    """Why a private PostgreSQL cannot run here, or None when it can."""
    if bindir() is None:
        return "the PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no postgres user to run initdb as"
    return None


class PrivatePostgres:
    """`with PrivatePostgres() as pg:` a running server at `pg.url`; `pg.restart()` crashes and restarts it."""

    def __init__(self):
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="mpesa-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "postgres.log"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as = []
        if os.geteuid() == 0:  # initdb and the server refuse to run as root
            user = pwd.getpwnam("postgres")
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def __enter__(self) -> "PrivatePostgres":
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """`immediate` is a crash: no checkpoint, clients cut off; the next start recovers from the WAL."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def restart(self) -> None:
        """Crash the server (an immediate stop) and start it again on the same port and data."""
        self.stop("immediate")
        self.start()

    def _run(self, program: str, *args: str, check: bool = True) -> None:
        done = subprocess.run([*self._as, str(bindir() / program), *args], capture_output=True, text=True,
                              timeout=120, cwd=self.folder)
        if check and done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
