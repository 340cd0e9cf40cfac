"""Checks the settings before start.sh launches anything; prints what is wrong and how to fix it.

`python -m mpesa_agent.preflight` exits 0 and prints `KEY=value` lines for start.sh, or exits 1.
"""
from __future__ import annotations

import sys

from dotenv import dotenv_values

from .config import ConfigError, Settings, callback_url_problems


def problems(settings: Settings) -> list[str]:
    """Everything that must stop a start: the callback URL's rules, and for real Daraja the
    credentials and a callback token of your own (not the example committed in `.env`)."""
    found = callback_url_problems(settings)
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
    port = settings.callback_server_url.rsplit(":", 1)[-1].split("/")[0]
    print(f"MPESA_ENV={settings.mpesa_env}")
    print(f"DARAJA_URL={settings.base_url}")
    print(f"CALLBACK_PORT={port if port.isdigit() else 8001}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
