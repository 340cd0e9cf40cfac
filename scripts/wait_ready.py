"""wait_ready.py URL SECONDS [PID]: wait until URL answers HTTP (any status), or fail."""
import os
import sys
import time
import urllib.error
import urllib.request

url, seconds = sys.argv[1], float(sys.argv[2])
pid = int(sys.argv[3]) if len(sys.argv) > 3 else None
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        urllib.request.urlopen(url, timeout=2)
        sys.exit(0)
    except urllib.error.HTTPError:
        sys.exit(0)  # it answered
    except OSError:
        pass
    if pid is not None:
        try:
            os.kill(pid, 0)
        except OSError:
            sys.exit(1)  # the process died
    time.sleep(0.2)
sys.exit(1)
