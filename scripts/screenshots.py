"""Screenshots of the dashboard for docs/screenshots/, from real data: the simulator and the callback
server as real processes (harness.Stack), payments pushed and answered as customers would, and
Debian's Chromium at desktop (1280 px) and phone (390 px) width.

    .venv/bin/python -m scripts.screenshots [--out docs/screenshots]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from harness import ROOT, Stack
from harness import browser as chromium

SIZES = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
# (phone, KES, what for, how the customer answers: a Daraja result code, or None to leave it waiting)
PAYMENTS = [
    ("0712345678", 500, "lunch", 0),
    ("0722000111", 1500, "stock", 0),
    ("0733000222", 1000, "fare", 0),
    ("0757889900", 250, "airtime", 1032),
    ("0792000333", 430, "sukari", 0),
    ("0713222111", 2000, "rent", 1),
    ("0701234567", 80, "mandazi", 0),
    ("0745111222", 350, "Wanjiku's debt", 2001),
    ("0768000999", 1200, "school shoes", None),
]
# Two bulk requests: (description, [(phone, KES, reference, the customer's answer as above)])
BATCHES = [
    ("School trip deposit", [("0711200001", 1000, "Grade 6 Amani", 0), ("0711200002", 1000, "Grade 6 Baraka", 0),
                             ("0711200003", 1000, "Grade 6 Chebet", 0)]),
    ("Chama December", [("0722300001", 500, "Wanjiru", 0), ("0722300002", 500, "Achieng", 0),
                        ("0722300003", 500, "Kamau", 1032), ("0722300004", 500, "Mutua", 0),
                        ("0722300005", 500, "Njeri", 1037), ("0722300006", 500, "Omondi", 0),
                        ("0722300007", 500, "Wafula", None), ("0722300008", 500, "Chepkoech", 0)]),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args(argv)
    reason = chromium.missing()
    if reason:
        print(f"Cannot take screenshots: {reason}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder, \
            Stack(Path(folder), SIMULATOR_CALLBACK_DELAY="0.1", BULK_PUSHES_PER_SECOND="20") as stack, \
            sync_playwright() as playwright:
        stack.control("POST", "/rules", json={"scope": "all", "delay": 3600})  # each customer answers when told
        browser = chromium.launch(playwright)
        feed = browser.new_page(viewport=SIZES["desktop"])
        chromium.sign_in(feed, stack.url, stack.api_key)
        feed.wait_for_selector("#live-status[data-state=live]")
        print("Sending bulk requests through the callback server...", flush=True)
        batch_ids = [bulk_request(stack, description, items) for description, items in BATCHES]
        print("Making payments through the simulator...", flush=True)
        paid = None
        for phone, amount, purpose, answer in PAYMENTS:
            checkout_id = chromium.push(stack, phone, amount, purpose)
            expect(feed.locator(f"[id='p-{checkout_id}']")).to_be_visible()
            if answer is not None:
                stack.control("POST", f"/transactions/{checkout_id}/act", json={"result_code": answer})
                expect(feed.locator(f"[id='p-{checkout_id}'] .badge")).not_to_have_text("waiting")
                paid = paid or checkout_id
        cookies = feed.context.cookies()
        pages = {"feed": "/dashboard", "payment": f"/dashboard/payments/{paid}",
                 "analytics": "/dashboard/analytics?period=today", "batches": "/dashboard/batches",
                 "batch": f"/dashboard/batches/{batch_ids[-1]}"}
        for size, viewport in SIZES.items():
            context = browser.new_context(viewport=viewport)
            context.add_cookies(cookies)
            for name, path in pages.items():
                if name == "feed" and size == "desktop":
                    page = feed  # the one that saw the payments arrive: its announcements are showing
                    page.mouse.move(0, 0)
                else:
                    page = context.new_page()
                    page.goto(stack.url + path)
                    if name in ("feed", "batches", "batch"):
                        page.wait_for_selector("#live-status[data-state=live]")
                target = args.out / f"{name}-{size}.png"
                page.screenshot(path=target, full_page=True, animations="disabled")
                print(f"  {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}")
            context.close()
        browser.close()
    return 0


def bulk_request(stack: Stack, description: str, items: list[tuple]) -> str:
    """A bulk request through the API; once the server's sender has pushed every item, each
    customer answers as `items` says. The batch's id."""
    answer = stack.api("POST", "/payment/bulk", json={"description": description, "items": [
        {"phone_number": phone, "amount": amount, "reference": reference} for phone, amount, reference, _ in items]})
    answer.raise_for_status()
    batch_id = answer.json()["batch"]["id"]
    deadline = time.monotonic() + 30
    while (found := stack.api("GET", f"/payment/bulk/{batch_id}?items=true").json())["status"] == "sending":
        if time.monotonic() > deadline:
            raise SystemExit(f"the bulk request was not sent within 30 s: {found['summary']}")
        time.sleep(0.1)
    for item, (*_, result_code) in zip(found["items"], items):
        if result_code is not None:
            stack.control("POST", f"/transactions/{item['checkout_request_id']}/act", json={"result_code": result_code})
    return batch_id


if __name__ == "__main__":
    sys.exit(main())
