"""Checks the settings before start.sh launches anything; prints what is wrong and how to fix it.

`python -m mpesa_agent.preflight` exits 0 and prints `KEY=value` lines for start.sh, or exits 1.
"""
from __future__ import annotations

import shlex
import sys
from urllib.parse import urlsplit

from dotenv import dotenv_values

from mpesa_agent.config import ConfigError, Settings, callback_url_problems


def problems(settings: Settings) -> list[str]:
    """Everything that must stop a start: the callback URL's rules, and for real Daraja the
    credentials and a callback token of your own (not the example committed in `.env`)."""
    found = callback_url_problems(settings)
    if settings.mpesa_env == "simulator" and settings.callback_url:
        # Locally, the simulator posts to MPESA_CALLBACK_URL: it must be the server we start.
        callback_port = urlsplit(settings.callback_url).port or 80
        server_port = urlsplit(settings.callback_server_url).port or 80
        if callback_port != server_port:
            found.append(f"MPESA_CALLBACK_URL (port {callback_port}) and CALLBACK_SERVER_URL (port {server_port}) "
                         "must name the same callback server")
    if settings.mpesa_env == "production" and not settings.allow_live_money:
        found.append("MPESA_ENV=production moves real money: set MPESA_ALLOW_LIVE_MONEY=true in .env.local to "
                     "allow it (or use MPESA_ENV=sandbox to test)")
    if settings.mpesa_env != "simulator":
        if not settings.consumer_key or not settings.consumer_secret or settings.consumer_key.startswith("simulator-"):
            found.append("MPESA_CONSUMER_KEY and MPESA_CONSUMER_SECRET must be your Daraja app's, in .env.local")
        env_file = settings.root / ".env"
        committed = (dotenv_values(env_file).get("MPESA_CALLBACK_URL") or "") if env_file.is_file() else ""
        if committed and settings.callback_token == committed.strip().rstrip("/").rsplit("/", 1)[-1]:
            found.append("MPESA_CALLBACK_URL still has the committed example token; put your own in .env.local")
    return found


def main() -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return 1
    found = problems(settings)
    for problem in found:
        print(f"Configuration error: {problem}", file=sys.stderr)
    if found:
        return 1
    values = {"MPESA_ENV": settings.mpesa_env, "DARAJA_URL": settings.base_url,
              "SIM_PORT": urlsplit(settings.base_url).port or 8002,
              "CALLBACK_PORT": urlsplit(settings.callback_server_url).port or 8001}
    for name, value in values.items():
        print(f"{name}={shlex.quote(str(value))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
