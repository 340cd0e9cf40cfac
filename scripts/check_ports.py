"""check_ports.py PORT=NAME ...: exit 1, naming the port and what holds it, if any is taken on 127.0.0.1."""
import os
import socket
import sys


def holder(port: int) -> str:
    """The process listening on `port`, from /proc (Linux), as "pid N (command)"; or "another program"."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
                inodes.add(fields[9])
    for pid in filter(str.isdigit, os.listdir("/proc") if inodes else ()):
        try:
            links = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        except OSError:
            continue
        if any(f"socket:[{inode}]" in links for inode in inodes):
            command = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace").strip()
            return f"pid {pid} ({command[:80]})"
    return "another program"


busy = []
for argument in sys.argv[1:]:
    port, _, name = argument.partition("=")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", int(port)))
        except OSError:
            busy.append(f"Port {port} ({name}) is already in use by {holder(int(port))}.")
for line in busy:
    print(line)
if busy:
    print("Stop that program, or move ours: ADK_PORT=8100 ./start.sh for the chat; CALLBACK_SERVER_URL and "
          "MPESA_CALLBACK_URL (together) for the callback server; MPESA_BASE_URL for the simulator, in .env.local.")
sys.exit(1 if busy else 0)
