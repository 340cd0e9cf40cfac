"""The chat in adk web's own page, in headless Chromium, against real processes (adk web, the callback
server and the Daraja simulator): a push above PAYMENT_CONFIRM_ABOVE shows ADK's approve / reject
step with the agent's words; approved, the prompt goes out and the outcome is shown; rejected, nothing
reaches the simulator. Skipped with the reason when Chromium or Playwright is missing, except under
CI=true, where they must run."""
import pytest
from playwright.sync_api import expect

from harness import ROOT, Process, Stack, free_port
from tests.test_dashboard_browser import browser  # noqa: F401  (headless Chromium, skipped or failed with why)

TIMEOUT_MS = 30_000  # the offline model answers at once; the page and the payment's callback take a moment


@pytest.fixture(scope="module")
def chat_url(tmp_path_factory, browser):  # noqa: F811
    folder = tmp_path_factory.mktemp("adk_web")
    # adk web asks about telemetry in a dialog over the page until ~/.adk/config.json holds an answer
    # (start.sh answers with `adk telemetry disable`); this adk web gets a home of its own that has it.
    (folder / ".adk").mkdir()
    (folder / ".adk" / "config.json").write_text('{"telemetry": false}\n')
    with Stack(folder, SIMULATOR_CALLBACK_DELAY="0.2", PAYMENT_CONFIRM_ABOVE="10000") as stack:
        port = free_port()
        adk_web = Process(["-m", "google.adk.cli", "web", "--host", "127.0.0.1", "--port", str(port), "--no-reload",
                           str(ROOT)], {**stack.env, "HOME": str(folder)}, f"http://127.0.0.1:{port}/list-apps",
                          folder / "adk_web.log")
        adk_web.start(timeout=90)
        try:
            yield f"http://127.0.0.1:{port}/dev-ui/?app=mpesa_agent", stack
        finally:
            adk_web.stop()


@pytest.fixture
def page(browser):  # noqa: F811
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    yield context.new_page()
    context.close()


def say(page, url: str, text: str) -> None:
    page.goto(url)
    box = page.locator("textarea").first
    box.fill(text)
    box.press("Enter")


def test_a_large_push_approved_in_the_page_is_sent_and_its_outcome_shown(page, chat_url):
    url, stack = chat_url
    say(page, url, "Send 15000 to 0712345678 for rent")
    expect(page.get_by_text("Send an M-Pesa prompt to 0712345678 for 15,000 KSh for rent?")).to_be_visible()
    assert stack.pushes_to("254712345678") == []  # asked first: nothing sent yet
    page.get_by_text("Confirmed").first.click()
    page.get_by_text("Submit").first.click()
    expect(page.get_by_text("✅ 0712345678 paid 15,000 KSh for rent. Receipt")).to_be_visible()
    assert len(stack.pushes_to("254712345678")) == 1


def test_a_large_push_rejected_in_the_page_reaches_no_phone(page, chat_url):
    url, stack = chat_url
    say(page, url, "tuma 20,000 kwa 0722000333 ya karo")
    expect(page.get_by_text("Send an M-Pesa prompt to 0722000333 for 20,000 KSh")).to_be_visible()
    page.get_by_text("Submit").first.click()  # without ticking "Confirmed": rejected
    expect(page.get_by_text("Not sent: you rejected the request for 20,000 KSh to 0722000333.")).to_be_visible()
    assert stack.pushes_to("254722000333") == []
