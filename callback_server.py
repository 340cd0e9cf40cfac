"""The callback server: receives Daraja's STK callbacks and serves the /payment/* API and the event log.

    python callback_server.py [--host 127.0.0.1] [--port 8001] [--db PATH] [--connections 16000]

The code lives in mpesa_agent/server/ (app.py builds the Flask app, serve.py runs it).
"""
import sys

if __name__ == "__main__":
    # First of all: held connections are greenlets, so the standard library must cooperate with them.
    from gevent import monkey

    monkey.patch_all()

from mpesa_agent.server.app import create_app  # noqa: E402
from mpesa_agent.server.serve import main  # noqa: E402

__all__ = ["create_app", "main"]

if __name__ == "__main__":
    sys.exit(main())
