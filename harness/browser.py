"""Headless Chromium for the dashboard's browser tests and screenshots: Debian's `chromium` driven by
Playwright for Python (Playwright's own browser download cannot work offline), and payments made
the way the agent makes them: a push to the simulator, then a registration with the callback server."""
from __future__ import annotations

import os
import shutil

from mpesa_agent.daraja import DarajaClient
from mpesa_agent.tracking import TrackingClient

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
INSTALL_HINT = "install it with: apt-get update && apt-get install -y chromium (./test.sh does it when run as root)"


def chromium_path() -> str | None:
    """Debian's Chromium (or CHROMIUM_PATH), if it is installed."""
    for candidate in (os.environ.get("CHROMIUM_PATH"), *CHROMIUM_PATHS, shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (it is in requirements.txt: run ./test.sh)"
    if chromium_path() is None:
        return f"Chromium is not installed ({INSTALL_HINT})"
    return None


def launch(playwright):
    """A headless Chromium from the system package."""
    return playwright.chromium.launch(executable_path=chromium_path(), args=["--disable-dev-shm-usage"])


def sign_in(page, base_url: str, api_key: str) -> None:
    page.goto(f"{base_url}/dashboard")
    page.fill("#api_key", api_key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}/dashboard", timeout=10_000)


def push(stack, phone: str, amount: int, description: str) -> str:
    """An STK Push to the simulator, registered with the callback server, as the agent's tool does;
    returns the checkout request id."""
    ack = DarajaClient.from_settings(stack.settings).stk_push(phone, amount, "Shop", description,
                                                              stack.settings.callback_url)
    TrackingClient.from_settings(stack.settings).register(ack.checkout_request_id, phone, amount, description,
                                                          ack.merchant_request_id)
    return ack.checkout_request_id
