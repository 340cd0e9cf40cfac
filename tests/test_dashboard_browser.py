"""The dashboard in headless Chromium against real processes: the Daraja simulator and the callback
server (harness.Stack), payments made as the agent makes them. One browser for the module; each test
has its own browser context (its own cookies). Skipped with the reason when Chromium or Playwright
is missing, except under CI=true, where they must run."""
import csv
import os
import sqlite3
from datetime import datetime, timezone

import pytest
import requests
from playwright.sync_api import expect, sync_playwright

from harness import Stack
from harness import browser as chromium
from mpesa_agent.payments.periods import period, stamp

CI = os.environ.get("CI", "").lower() == "true"
WAITING_PHONE = "0711000111"  # a simulator rule holds its customer until the test says "act"
OTHER_PHONE = "0722000222"
TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def browser():
    reason = chromium.missing()
    if reason:
        if CI:
            pytest.fail(f"the browser tests must run under CI=true: {reason}")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        launched = chromium.launch(playwright)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, browser):
    with Stack(tmp_path_factory.mktemp("dashboard"), SIMULATOR_CALLBACK_DELAY="0.1",
               api_key="dashboard-browser-test-key") as running:
        running.control("POST", "/rules", json={"phone": WAITING_PHONE, "delay": 3600})
        yield running


@pytest.fixture
def page(browser, stack):
    context = browser.new_context(accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    yield context.new_page()
    context.close()


@pytest.fixture
def signed_in(page, stack):
    chromium.sign_in(page, stack.url, stack.api_key)
    return page


def act(stack, checkout_id: str, result_code: int = 0) -> None:
    """The customer answers the prompt now (the simulator then sends the callback)."""
    stack.control("POST", f"/transactions/{checkout_id}/act", json={"result_code": result_code})


def row(page, checkout_id: str):
    return page.locator(f"[id='p-{checkout_id}']")


def test_without_signing_in_every_page_redirects_to_the_sign_in_page_and_shows_no_payment(page, stack):
    checkout_id = chromium.push(stack, OTHER_PHONE, 40, "secret stuff")
    for path in ("/dashboard", "/dashboard/history", f"/dashboard/payments/{checkout_id}", "/dashboard/analytics"):
        page.goto(stack.url + path)
        assert page.url.startswith(f"{stack.url}/dashboard/sign-in?next=")
        shown = page.content().replace(checkout_id, "", 1 if checkout_id in path else 0)  # the "next" it asked for
        assert checkout_id not in shown and "secret stuff" not in shown and "0722" not in shown
    for path in ("/dashboard/history.csv", "/dashboard/history.json", "/dashboard/stream?timeout=0"):
        answer = requests.get(stack.url + path, allow_redirects=False, timeout=10)
        assert answer.status_code == 302 and "/dashboard/sign-in" in answer.headers["Location"]
        assert checkout_id not in answer.text


def test_a_wrong_key_is_refused_and_the_right_one_signs_in_to_the_page_asked_for(page, stack):
    page.goto(f"{stack.url}/dashboard/history")
    page.fill("#api_key", "not-the-key")
    page.click("button[type=submit]")
    assert "That is not the API key" in page.locator("[role=alert]").inner_text()
    page.fill("#api_key", stack.api_key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{stack.url}/dashboard/history")
    cookie = next(c for c in page.context.cookies() if c["name"] == "mpesa_dashboard")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/dashboard"


def test_a_payment_appears_live_and_turns_completed_without_a_reload(signed_in, stack):
    page = signed_in
    page.wait_for_selector("#live-status[data-state=live]")
    page.evaluate("window.notReloaded = true")
    checkout_id = chromium.push(stack, WAITING_PHONE, 75, "live lunch")
    expect_badge(page, checkout_id, "waiting")
    act(stack, checkout_id)
    expect_badge(page, checkout_id, "paid")
    assert "Receipt" in row(page, checkout_id).inner_text()
    expect_text(page.locator("#announcements li").first, "M-Pesa payment received: KES 75 from 0711000111 for live lunch. Receipt")
    failed = chromium.push(stack, WAITING_PHONE, 30, "cancelled one")
    expect_badge(page, failed, "waiting")
    act(stack, failed, 1032)
    expect_badge(page, failed, "not paid")
    expect_text(page.locator("#announcements li").first, "Request cancelled by user")
    assert "1032" not in page.locator("#announcements").inner_text()
    assert page.evaluate("window.notReloaded") is True


def test_a_filter_narrows_the_list_and_the_csv_download_holds_the_row(signed_in, stack, tmp_path):
    page = signed_in
    mine = chromium.push(stack, "0733000333", 120, "filter me")
    other = chromium.push(stack, OTHER_PHONE, 60, "not me")
    page.goto(f"{stack.url}/dashboard/history")
    expect_text(page.locator("#history-rows"), other)
    page.fill("#phone", "0733 000 333")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**phone=*")
    rows = page.locator("#history-rows tr")
    assert rows.count() == 1 and mine in rows.first.inner_text()
    with page.expect_download() as download:
        page.click("#download-csv")
    saved = tmp_path / "export.csv"
    download.value.save_as(saved)
    exported = list(csv.DictReader(saved.open(newline="")))
    assert [r["checkout_request_id"] for r in exported] == [mine]
    assert exported[0]["phone_number"] == "254733000333" and exported[0]["amount"] == "120"


def test_the_analytics_page_agrees_with_the_database(signed_in, stack):
    page = signed_in
    done = chromium.push(stack, WAITING_PHONE, 210, "analytics")
    act(stack, done)
    wait_for_status(stack, done, "completed")
    page.goto(f"{stack.url}/dashboard/analytics?period=last_7_days")
    start, end = (stamp(moment) for moment in period("last_7_days", datetime.now(timezone.utc)))
    with sqlite3.connect(stack.db) as db:
        found = dict(((status, (count, amount)) for status, count, amount in db.execute(
            "SELECT status, COUNT(*), SUM(amount) FROM payments WHERE created_at >= ? AND created_at < ?"
            " GROUP BY status", (start, end))))
    assert page.locator("#stat-count").inner_text() == f"{sum(c for c, _ in found.values()):,}"
    for status in ("pending", "completed", "failed", "unknown"):
        count, amount = found.get(status, (0, 0))
        cells = page.locator(f"#by-status tr[data-status={status}] td")
        assert cells.nth(1).inner_text() == f"{count:,}" and cells.nth(2).inner_text() == f"{amount or 0:,}"
    completed, failed = found.get("completed", (0, 0))[0], found.get("failed", (0, 0))[0]
    assert page.locator("#stat-rate").inner_text() == f"{100 * completed / (completed + failed):.1f}%"
    assert page.locator("svg.chart rect.bar-completed").count() >= 1


def test_a_failed_payment_is_retried_from_its_page_and_the_attempts_link_each_other(signed_in, stack):
    page = signed_in
    phone = "0744000444"
    stack.control("POST", "/rules", json={"phone": phone, "result_code": 1032})
    first = chromium.push(stack, phone, 90, "retry me")
    wait_for_status(stack, first, "failed")
    page.goto(f"{stack.url}/dashboard/payments/{first}")
    page.click("#retry-box summary")
    expect_text(page.locator("#retry-box"), "A new M-Pesa prompt for KES 90 will reach 0744000444's phone now")
    page.click("#retry-payment")
    expect_text(page.locator("#retry-problem"), "less than 2 minutes ago")  # the repeat rule: asked again
    assert len(stack.pushes_to("254744000444")) == 1
    page.click("#retry-payment")  # "Yes, send a second prompt now"
    expect_text(page.locator("#retry-done"), "A new prompt went to 0744000444 for KES 90: this is attempt 2")
    retried = page.url.split("/payments/")[1].split("?")[0]
    assert retried != first and [t["checkout_request_id"] for t in stack.pushes_to("254744000444")][-1] == retried
    attempts = page.locator("#attempts li")
    assert attempts.count() == 2 and "this payment" in attempts.nth(1).inner_text()
    attempts.nth(0).locator("a").click()  # back to the first attempt, which links to the new one
    page.wait_for_url(f"**/dashboard/payments/{first}")
    assert page.locator(f"#attempts a[href$='{retried}']").count() == 1
    assert page.locator("#retry-box").count() == 0  # retried once: no second button


def test_sign_out_ends_the_session(signed_in, stack):
    page = signed_in
    page.click(".sign-out button")
    page.wait_for_url("**/dashboard/sign-in?bye=1")
    assert "You are signed out" in page.content()
    page.goto(f"{stack.url}/dashboard/history")
    assert page.url.startswith(f"{stack.url}/dashboard/sign-in")


def test_a_form_without_the_sessions_csrf_token_is_refused(signed_in, stack):
    page = signed_in
    page.evaluate("document.querySelector('.sign-out input[name=csrf_token]').value = 'forged'")
    page.click(".sign-out button")
    assert page.locator("h1").inner_text() == "Form expired"
    page.goto(f"{stack.url}/dashboard/history")
    assert page.url == f"{stack.url}/dashboard/history"  # still signed in: nothing was changed
    cookie = next(c for c in page.context.cookies() if c["name"] == "mpesa_dashboard")
    forged = requests.post(f"{stack.url}/dashboard/sign-out", cookies={"mpesa_dashboard": cookie["value"]},
                           allow_redirects=False, timeout=10)  # another site's form: no token at all
    assert forged.status_code == 400


def expect_text(locator, text: str) -> None:
    expect(locator).to_contain_text(text, timeout=TIMEOUT_MS)


def expect_badge(page, checkout_id: str, words: str) -> None:
    expect(row(page, checkout_id).locator(".badge")).to_have_text(words, timeout=TIMEOUT_MS)


def wait_for_status(stack, checkout_id: str, status: str) -> None:
    answer = stack.api("GET", f"/payment/wait/{checkout_id}", params={"timeout": 10}).json()
    assert answer["payment_status"] == status, answer
