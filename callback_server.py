"""The callback server: receives Daraja's STK callbacks and serves the /payment/* API and the event log.

    python callback_server.py [--host 127.0.0.1] [--port 8001] [--db PATH] [--threads 200]

The code lives in mpesa_agent/server/ (app.py builds the Flask app, serve.py runs it).
"""
import sys

from mpesa_agent.server.app import create_app
from mpesa_agent.server.serve import main

__all__ = ["create_app", "main"]

if __name__ == "__main__":
    sys.exit(main())
