"""The Batches pages in headless Chromium against real processes: a bulk request made through the
API, sent by the callback server's own bulk sender to the Daraja simulator, answered by its
customers. Skipped with the reason when Chromium or Playwright is missing, except under CI=true."""
import csv
import re
import time
from collections import Counter

import pytest
from playwright.sync_api import expect

from harness import Stack
from tests.test_dashboard_browser import TIMEOUT_MS, act, browser, expect_text, page, signed_in  # noqa: F401

PUSHES_PER_SECOND = 3  # slow enough for a person (and a test) to cancel mid-batch
HELD = "0711000444"  # a simulator rule holds this customer until the test says "act"
CANCELS = "0711000555"  # this one cancels the prompt (1032)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, browser):  # noqa: F811
    with Stack(tmp_path_factory.mktemp("batches"), SIMULATOR_CALLBACK_DELAY="0.1",
               BULK_PUSHES_PER_SECOND=str(PUSHES_PER_SECOND), api_key="batches-browser-test-key") as running:
        running.control("POST", "/rules", json={"phone": HELD, "delay": 3600})
        running.control("POST", "/rules", json={"phone": CANCELS, "result_code": 1032})
        yield running


def start_batch(stack, phones: list[str], description: str, amount: int = 50) -> str:
    items = [{"phone_number": phone, "amount": amount, "reference": f"R{n}"} for n, phone in enumerate(phones, 1)]
    answer = stack.api("POST", "/payment/bulk", json={"description": description, "items": items})
    assert answer.status_code == 201, answer.text
    return answer.json()["batch"]["id"]


def report(stack, batch_id: str) -> dict:
    return stack.api("GET", f"/payment/bulk/{batch_id}?items=true").json()


def wait_for(stack, batch_id: str, done, within: float = 20.0) -> dict:
    """The batch's report once `done(report)`, read through the API (a hang guard, not a timing)."""
    deadline = time.monotonic() + within
    while True:
        found = report(stack, batch_id)
        if done(found):
            return found
        assert time.monotonic() < deadline, f"batch {batch_id} not done after {within} s: {found['summary']}"
        time.sleep(0.05)


def test_a_bulk_request_appears_live_and_its_page_shows_the_outcome_and_the_csv(signed_in, stack, tmp_path):  # noqa: F811
    page = signed_in
    page.click("nav >> text=Batches")
    page.wait_for_selector("#live-status[data-state=live]")
    page.evaluate("window.notReloaded = true")
    batch_id = start_batch(stack, ["0711000333", CANCELS, HELD], "chama december")
    expect_text(page.locator(f"[id='b-{batch_id}']"), "chama december")  # arrived without a reload
    assert page.evaluate("window.notReloaded") is True

    page.click(f"[id='b-{batch_id}'] a")
    page.wait_for_url(f"**/dashboard/batches/{batch_id}")
    page.wait_for_selector("#live-status[data-state=live]")
    summary = page.locator("#batch-summary")
    expect(summary).to_have_text("1 of 3 paid, 1 cancelled, 1 waiting for an answer", timeout=TIMEOUT_MS)
    page.evaluate("window.notReloaded = true")
    held = next(item for item in report(stack, batch_id)["items"] if item["phone_number"] == "254" + HELD[1:])
    act(stack, held["checkout_request_id"])  # the last customer pays: the page follows without a reload
    expect(summary).to_have_text("2 of 3 paid, 1 cancelled", timeout=TIMEOUT_MS)
    expect(page.locator("#batch-live .badge.batch-settled")).to_have_text("settled", timeout=TIMEOUT_MS)
    assert page.evaluate("window.notReloaded") is True
    assert page.locator("#stat-paid").inner_text() == "KES 100"
    assert page.locator("#by-outcome tr[data-outcome=completed] td").nth(1).inner_text() == "2"
    failed = page.locator("#failed tbody tr")
    assert failed.count() == 1 and "Request cancelled by user" in failed.inner_text() and "1032" not in failed.inner_text()
    assert page.locator("#not-paid tbody tr").count() == 1
    assert not page.locator("#cancel-box").is_visible()  # nothing left to send

    with page.expect_download() as download:
        page.click("#download-csv")
    saved = tmp_path / "batch.csv"
    download.value.save_as(saved)
    rows = list(csv.DictReader(saved.open(newline="")))
    assert [(r["phone_number"], r["outcome"], r["reference"]) for r in rows] == [
        ("254711000333", "completed", "R1"), ("254711000555", "failed", "R2"), ("254711000444", "completed", "R3")]
    assert rows[0]["receipt"] and rows[0]["checkout_request_id"]

    page.click(f"#items a[href$='{held['checkout_request_id']}']")  # an item's link: its payment's page
    page.wait_for_url(f"**/dashboard/payments/{held['checkout_request_id']}")
    assert "KES 50 from 0711000444" in page.locator("h1").inner_text()


def test_cancel_stops_the_requests_not_sent_yet(signed_in, stack):  # noqa: F811
    page = signed_in
    phones = [f"07220{n:05d}" for n in range(30)]
    batch_id = start_batch(stack, phones, "cancel me")
    page.goto(f"{stack.url}/dashboard/batches/{batch_id}")
    wait_for(stack, batch_id, lambda r: r["by_outcome"]["queued"]["count"] < 30)  # the sender has started
    page.click("#cancel-box summary")
    expect_text(page.locator("#cancel-box"), "those customers get no prompt")
    page.click("#cancel-batch")
    done = page.locator("#cancel-done")
    expect_text(done, "not sent yet will not be sent")
    cancelled = int(re.search(r"Cancelled: (\d+) request", done.inner_text()).group(1))
    assert 0 < cancelled < 30
    assert not page.locator("#cancel-box").is_visible()
    settled = wait_for(stack, batch_id, lambda r: r["settled"])
    sent = [item["phone_number"] for item in settled["items"] if item["state"] == "sent"]
    assert settled["by_outcome"]["cancelled"]["count"] == cancelled == 30 - len(sent)
    pushed = Counter(t["phone_number"] for t in stack.control("GET", "/transactions")["transactions"]
                     if t["phone_number"].startswith("254722"))
    assert pushed == Counter(sent)  # each sent item pushed once, no cancelled one pushed
    page.reload()
    expect_text(page.locator("#batch-summary"), f"{cancelled} not sent (batch cancelled)")
