"""wait_ready.py NAME URL SECONDS PID: wait until URL answers as NAME itself (not just anything
that speaks HTTP on that port); exit 1 if the process dies or time runs out, saying which."""
import json
import os
import sys
import time
import urllib.error
import urllib.request


def is_itself(name: str, body: bytes) -> bool:
    """The answer is this program's own: the callback server's /health, the simulator's, adk web's app list."""
    try:
        data = json.loads(body)
    except ValueError:
        return False
    if name == "adk_web":
        return isinstance(data, list) and "mpesa_agent" in data
    if name == "simulator":
        return isinstance(data, dict) and data.get("status") == "ok" and "shortcodes" in data
    if name == "a2a":
        return isinstance(data, dict) and data.get("name") == "mpesa_agent"
    if name == "callback_server":
        return isinstance(data, dict) and data.get("status") in ("ok", "degraded") and "db" in data
    return True


name, url, seconds, pid = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
deadline = time.monotonic() + seconds
answered = None
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            body = response.read()
        if is_itself(name, body):
            sys.exit(0)
        answered = "answered, but not as " + name
    except urllib.error.HTTPError as exc:
        if name == "callback_server" and exc.code == 503 and is_itself(name, exc.read()):
            sys.exit(0)  # up, with its database refusing writes: it says so itself
        answered = f"answered HTTP {exc.code}, not as {name}"
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        print(f"{name} stopped while starting.")
        sys.exit(1)
    time.sleep(0.2)
print(f"{name} was not ready after {seconds:.0f} s: {url} " + (f"{answered} (another program on that port?)"
                                                            if answered else "did not answer"))
sys.exit(1)
