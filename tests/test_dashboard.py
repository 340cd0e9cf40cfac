"""The dashboard through Flask's test client: who may see it (sign-in, cookie, CSRF, wrong keys),
the live stream's frames, a payment's page, exports and the SVG charts. The browser tests are in
test_dashboard_browser.py."""
import json
import re
import tomllib
from fnmatch import fnmatch

import pytest

from callback_server import create_app
from harness import ROOT
from mpesa_agent.server import dashboard_auth
from mpesa_agent.server.charts import nice_ceiling, stacked_bars
from mpesa_agent.server.dashboard import safe_next
from tests.test_callback_manager import callback_body

pytestmark = pytest.mark.stores  # the pages read through the store interface: run on SQLite and PostgreSQL

TOKEN = "0123456789abcdef0123456789abcdef"  # conftest's MPESA_CALLBACK_URL
KEY = "test-api-key"
PAGES = ("/dashboard", "/dashboard/history", "/dashboard/history.csv", "/dashboard/history.json",
         "/dashboard/analytics", "/dashboard/payments/ws_CO_1", "/dashboard/stream?timeout=0")


def csrf(client, path="/dashboard/sign-in") -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).get_data(as_text=True)).group(1)


def sign_in(client, key=KEY, **extra):
    return client.post("/dashboard/sign-in", data={"csrf_token": csrf(client), "api_key": key, **extra})


def pay(app, checkout_id="ws_CO_1", result_code=0, description="lunch", headers=None):
    manager = app.extensions["callback_manager"]
    manager.register(checkout_id, "0712345678", 500, description, None)
    manager.ingest(callback_body(checkout_request_id=checkout_id, result_code=result_code),
                   {"Content-Type": "application/json", **(headers or {})}, "196.201.212.69")


@pytest.fixture
def signed_in(client):
    assert sign_in(client).status_code == 302
    return client


@pytest.mark.parametrize("path", PAGES)
def test_every_page_redirects_to_sign_in_and_shows_no_payment_without_a_session(app, client, path):
    pay(app)
    answer = client.get(path)
    assert answer.status_code == 302
    assert answer.headers["Location"].startswith("/dashboard/sign-in?next=")
    assert b"lunch" not in answer.data and b"254712345678" not in answer.data


def test_the_right_key_gives_an_httponly_samesite_cookie_for_the_dashboard_only(client):
    answer = sign_in(client, next="/dashboard/analytics")
    assert answer.status_code == 302 and answer.headers["Location"] == "/dashboard/analytics"
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/dashboard" in cookie
    assert "Secure" not in cookie  # plain http on 127.0.0.1: a Secure cookie would never come back
    assert client.get("/dashboard/history").status_code == 200


def test_the_cookie_is_secure_over_https_and_behind_a_trusted_proxy_that_says_https(settings):
    direct = create_app(settings).test_client()
    assert "Secure" in sign_in_over(direct, base_url="https://shop.example")
    proxied = create_app(settings.replace(trusted_proxies=("127.0.0.1",))).test_client()
    assert "Secure" in sign_in_over(proxied, headers={"X-Forwarded-Proto": "https"})
    untrusted = create_app(settings).test_client()
    assert "Secure" not in sign_in_over(untrusted, headers={"X-Forwarded-Proto": "https"})


def sign_in_over(client, **request) -> str:
    page = client.get("/dashboard/sign-in", **request).get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    return client.post("/dashboard/sign-in", data={"csrf_token": token, "api_key": KEY}, **request).headers["Set-Cookie"]


def test_a_wrong_key_is_refused_with_where_to_find_the_right_one(client):
    answer = sign_in(client, key="guess")
    assert answer.status_code == 401 and "CALLBACK_API_KEY" in answer.get_data(as_text=True)
    assert client.get("/dashboard").status_code == 302


def test_too_many_wrong_keys_from_one_address_are_refused_even_with_the_right_key(app, client):
    for _ in range(dashboard_auth.MAX_FAILURES):
        assert sign_in(client, key="guess").status_code == 401
    answer = sign_in(client)
    assert answer.status_code == 429 and "Too many wrong keys" in answer.get_data(as_text=True)
    other = app.test_client()  # another address is not held up
    other.environ_base["REMOTE_ADDR"] = "192.0.2.7"
    assert sign_in(other).status_code == 302


def test_the_throttle_forgets_failures_after_its_window():
    now = [0.0]
    throttle = dashboard_auth.Throttle(limit=2, window=60, clock=lambda: now[0])
    throttle.failed("a")
    throttle.failed("a")
    assert throttle.wait_seconds("a") == 60 and throttle.wait_seconds("b") == 0
    now[0] = 30
    assert throttle.wait_seconds("a") == 30
    now[0] = 60
    assert throttle.wait_seconds("a") == 0


def test_posts_without_the_sessions_csrf_token_are_refused(app, signed_in):
    assert app.test_client().post("/dashboard/sign-in", data={"api_key": KEY}).status_code == 400  # login CSRF too
    answer = signed_in.post("/dashboard/sign-out", data={"csrf_token": "forged"})
    assert answer.status_code == 400 and "Form expired" in answer.get_data(as_text=True)
    assert signed_in.get("/dashboard").status_code == 200  # still signed in
    assert signed_in.post("/dashboard/sign-out", data={"csrf_token": csrf(signed_in, "/dashboard")}).status_code == 302
    assert signed_in.get("/dashboard").status_code == 302


def test_the_session_survives_a_restart_and_a_new_api_key_ends_it(settings):
    first = create_app(settings).test_client()
    sign_in(first)
    cookie = first.get_cookie("mpesa_dashboard", path="/dashboard").value
    again = create_app(settings).test_client()  # a restart, or a second process: the same derived secret
    again.set_cookie("mpesa_dashboard", cookie, path="/dashboard")
    assert again.get("/dashboard").status_code == 200
    for changed in (settings.replace(callback_api_key="a-new-key"),
                    settings.replace(callback_api_key="a-new-key", dashboard_secret="kept-secret")):
        later = create_app(changed).test_client()
        later.set_cookie("mpesa_dashboard", cookie, path="/dashboard")
        assert later.get("/dashboard").status_code == 302


def test_dashboard_secret_keeps_sessions_apart_from_the_key(settings):
    with_secret = settings.replace(dashboard_secret="s" * 40)
    assert dashboard_auth.session_secret(with_secret) == b"s" * 40
    assert dashboard_auth.session_secret(settings) != settings.callback_api_key.encode()
    assert dashboard_auth.session_secret(settings) == dashboard_auth.session_secret(settings.replace())


@pytest.mark.parametrize("target", ["https://evil.example/dashboard", "//evil.example/dashboard", "/\\evil.example",
                                    "/payment/status/x", "", None])
def test_after_signing_in_it_goes_only_to_a_dashboard_page(app, target):
    with app.test_request_context():
        assert safe_next(target) == "/dashboard"


def test_pages_forbid_other_scripts_framing_and_caching(signed_in):
    answer = signed_in.get("/dashboard")
    assert "script-src 'self'" in answer.headers["Content-Security-Policy"]
    assert answer.headers["X-Frame-Options"] == "DENY" and answer.headers["Cache-Control"] == "no-store"
    assert b"<script src=\"/dashboard/static/live.js\">" in answer.data and b"http" not in answer.data.split(b"<body>")[0]


def test_the_assets_ship_in_the_package_and_need_no_session(client):
    for name, kind in (("dashboard.css", "text/css"), ("live.js", "javascript"), ("favicon.svg", "image/svg")):
        answer = client.get(f"/dashboard/static/{name}")
        assert answer.status_code == 200 and kind in answer.mimetype


def frames(text: str) -> list[tuple[int, dict]]:
    return [(int(m.group(1)), json.loads(m.group(2))) for m in re.finditer(r"id: (\d+)\ndata: (.*)\n\n", text)]


def test_the_stream_sends_each_change_as_a_row_and_settled_ones_with_the_reason_in_words(app, signed_in):
    pay(app, "ws_CO_1", 0)
    pay(app, "ws_CO_2", 1032, description="soda")
    sent = frames(signed_in.get("/dashboard/stream?timeout=0").get_data(as_text=True))
    said = [data["say"] for _, data in sent if data["say"]]
    assert said[0].startswith("M-Pesa payment received: KES 500 from 0712345678 for lunch. Receipt NLJ7RT61SV")
    assert said[1] == "M-Pesa payment not completed: KES 500 from 0712345678 for soda: Request cancelled by user."
    last = [data for _, data in sent if data["checkout_request_id"] == "ws_CO_2"][-1]
    assert last["status"] == "failed" and 'id="p-ws_CO_2"' in last["row"] and "not paid" in last["row"]
    resumed = frames(signed_in.get("/dashboard/stream?timeout=0", headers={"Last-Event-ID": str(sent[1][0])})
                     .get_data(as_text=True))
    assert [n for n, _ in resumed] == [n for n, _ in sent[2:]]  # a reconnect resumes after the last one seen


def test_a_payments_page_shows_its_timeline_and_callbacks_but_never_the_callback_token(app, signed_in):
    pay(app, headers={"X-Original-URL": f"/callback/{TOKEN}", "Authorization": "Bearer x"})
    page = signed_in.get("/dashboard/payments/ws_CO_1").get_data(as_text=True)
    assert "Registered: the prompt went to the phone" in page and "Paid" in page and "NLJ7RT61SV" in page
    assert "X-Original-URL: /callback/&lt;redacted&gt;" in page
    assert TOKEN not in page and "Bearer x" not in page
    assert signed_in.get("/dashboard/payments/ws_CO_nope").status_code == 404


def test_a_conflicting_callback_is_listed_as_a_conflict(app, signed_in):
    pay(app, "ws_CO_1", 0)
    app.extensions["callback_manager"].ingest(callback_body(checkout_request_id="ws_CO_1", result_code=1032),
                                              {"Content-Type": "application/json"}, "196.201.212.69")
    page = signed_in.get("/dashboard/payments/ws_CO_1").get_data(as_text=True)
    assert "contradicts the payment's state and was not applied: ResultCode 1032 says failed" in page


def test_history_filters_and_exports_the_same_rows(app, signed_in):
    pay(app, "ws_CO_1", 0, description="lunch")
    pay(app, "ws_CO_2", 1032, description="soda")
    page = signed_in.get("/dashboard/history?status=failed").get_data(as_text=True)
    assert "ws_CO_2" in page and "ws_CO_1" not in page
    assert 'href="/dashboard/history.csv?status=failed"' in page
    exported = signed_in.get("/dashboard/history.csv?status=failed")
    assert "attachment" in exported.headers["Content-Disposition"]
    assert [line.split(",")[0] for line in exported.get_data(as_text=True).splitlines()] == ["checkout_request_id", "ws_CO_2"]
    both = json.loads(signed_in.get("/dashboard/history.json?q=LUN").get_data(as_text=True))
    assert [p["checkout_request_id"] for p in both["payments"]] == ["ws_CO_1"]
    wrong = signed_in.get("/dashboard/history?min_amount=lots")
    assert wrong.status_code == 400 and "min_amount" in wrong.get_data(as_text=True)


def test_history_pages_older_by_cursor(app, signed_in):
    for n in range(3):
        app.extensions["callback_manager"].register(f"ws_CO_{n}", "0712345678", 10 + n, "x", None)
    first = signed_in.get("/dashboard/history?limit=2").get_data(as_text=True)
    assert "ws_CO_2" in first and "ws_CO_1" in first and "ws_CO_0" not in first
    older = re.search(r'id="older" href="([^"]+)"', first).group(1).replace("&amp;", "&")
    assert "limit=2" in older
    second = signed_in.get(older).get_data(as_text=True)
    assert "ws_CO_0" in second and "ws_CO_2" not in second and 'id="older"' not in second


def test_analytics_shows_the_period_and_refuses_a_wrong_one(app, signed_in):
    pay(app, "ws_CO_1", 0)
    pay(app, "ws_CO_2", 1032)
    page = signed_in.get("/dashboard/analytics?period=today").get_data(as_text=True)
    assert 'id="stat-rate">50.0%' in page and "Request cancelled by user" in page and "<svg" in page
    assert signed_in.get("/dashboard/analytics?period=someday").status_code == 400
    assert signed_in.get("/dashboard/analytics?since=2026-11-30&until=2026-11-01").status_code == 400


def test_charts_scale_to_a_round_top_and_escape_labels():
    assert [nice_ceiling(v) for v in (0, 1, 3, 7, 10, 11, 480)] == [1, 1, 5, 10, 10, 20, 500]
    svg = str(stacked_bars([{"day": "<b>", "completed": 3, "failed": 1}, {"day": "x", "completed": 0}], "day",
                           (("completed", "paid"), ("failed", "not paid")), "Payments"))
    assert svg.count("<rect") == 2 and "&lt;b&gt;: 3 paid" in svg and "<b>" not in svg


def test_every_template_and_asset_is_package_data():
    package = ROOT / "mpesa_agent" / "server"
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["mpesa_agent.server"]
    files = [path.relative_to(package).as_posix() for folder in ("templates", "static")
             for path in (package / folder).rglob("*") if path.is_file()]
    assert len(files) >= 10
    assert [name for name in files if not any(fnmatch(name, pattern) for pattern in globs)] == []
