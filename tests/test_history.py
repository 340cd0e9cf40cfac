"""Payment history and analytics (server/history.py) on a real SQLite file, and over HTTP from a real
callback server process with payments made through the real simulator."""
import asyncio
import csv
import io
import threading
from datetime import datetime, timedelta, timezone

import pytest
import requests

from harness import Stack
from mpesa_agent.payments.periods import EAT, period
from mpesa_agent.server import history as h
from mpesa_agent.server.manager import CallbackManager
from mpesa_agent.server.store import Store, open_store
from mpesa_agent.tools import Payments, make_tools
from test_callback_manager import callback_body

TOKEN = "7a1c0ffee7a1c0ffee7a1c0ffee7a1c0"


pytestmark = pytest.mark.stores  # each store-level test on SQLite and on PostgreSQL (tests/conftest.py)


@pytest.fixture
def store(db_target):
    store = open_store(db_target)
    yield store
    store.close()


def put(store, checkout_id, created_at, *, status="pending", phone="254712345678", amount=100, description="",
        receipt=None, reason=None, result_code=None, settled_after=None, settled_by="callback"):
    """A payment row as the store keeps it, at a chosen time (registration always writes "now")."""
    created = created_at if isinstance(created_at, str) else created_at.astimezone(timezone.utc).isoformat(
        timespec="milliseconds")
    settled = None
    if settled_after is not None:
        settled = (datetime.fromisoformat(created) + timedelta(seconds=settled_after)).isoformat(timespec="milliseconds")
    with store.transaction() as tx:
        tx.conn.execute(
            "INSERT INTO payments (checkout_request_id, phone_number, amount, description, status, receipt, reason,"
            " result_code, created_at, updated_at, settled_at, settled_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (checkout_id, phone, amount, description, status, receipt, reason, result_code, created, created, settled,
             settled_by if settled else None))


def ids(payments):
    return [p.checkout_request_id for p in payments]


def test_keyset_pages_through_everything_exactly_once_while_payments_are_inserted(store):
    base = datetime(2026, 11, 20, 9, tzinfo=timezone.utc)
    for n in range(120):  # many share a time: the checkout id breaks the tie
        put(store, f"ws_CO_{n:04d}", base + timedelta(seconds=n // 7))
    manager = CallbackManager(store)
    seen, cursor, inserted = [], None, 0
    while True:
        page, cursor = h.history(store, limit=9, cursor=cursor)
        seen += page
        manager.register(f"ws_CO_new_{inserted:03d}", "0712345678", 10, "during")  # newer than every page;
        # two may share a millisecond, and then the checkout id orders them: the padding keeps it the insert order
        inserted += 1
        if cursor is None:
            break
    assert sorted(ids(seen)) == [f"ws_CO_{n:04d}" for n in range(120)]
    assert len(set(ids(seen))) == len(seen)
    keys = [(p.created_at, p.checkout_request_id) for p in seen]
    assert keys == sorted(keys, reverse=True)
    newest, _ = h.history(store, limit=inserted)
    assert ids(newest) == [f"ws_CO_new_{n:03d}" for n in reversed(range(inserted))]


def test_filters_narrow_the_list(store):
    day = datetime(2026, 11, 29, 12, tzinfo=EAT)
    put(store, "ws_CO_a", day, status="completed", amount=500, description="Lunch at Mama Oliech", receipt="UKA1")
    put(store, "ws_CO_b", day + timedelta(minutes=1), status="failed", amount=50, phone="254722000111",
        description="50% deposit")
    put(store, "ws_CO_c", day + timedelta(minutes=2), amount=2000, description="rent")
    put(store, "ws_CO_d", day - timedelta(days=1), status="unknown", amount=700, description="stock")
    put(store, "ws_CO_e", datetime(2026, 11, 28, 23, 30, tzinfo=EAT), status="completed", amount=5)

    def found(**filters):
        return ids(h.history(store, **filters)[0])

    assert found() == ["ws_CO_c", "ws_CO_b", "ws_CO_a", "ws_CO_e", "ws_CO_d"]
    assert found(phone="+254 722 000 111") == found(phone="0722000111") == found(phone="722000111") == ["ws_CO_b"]
    assert found(status="completed") == ["ws_CO_a", "ws_CO_e"]
    assert found(status="unpaid") == ["ws_CO_c", "ws_CO_b", "ws_CO_d"]
    assert found(status="failed,unknown") == ["ws_CO_b", "ws_CO_d"]
    assert found(min_amount=50, max_amount=700) == ["ws_CO_b", "ws_CO_a", "ws_CO_d"]
    assert found(since="2026-11-29") == ["ws_CO_c", "ws_CO_b", "ws_CO_a"]  # a Kenyan day: 23:30 EAT on the 28th is out
    assert found(until="2026-11-28") == ["ws_CO_e", "ws_CO_d"]  # a date alone includes that whole day
    assert found(since="2026-11-29T09:01:00Z", until="2026-11-29T12:02+03:00") == ["ws_CO_b"]
    assert found(receipt="uka1") == ["ws_CO_a"]
    assert found(q="mama OLIECH") == ["ws_CO_a"]
    assert found(q="50%") == ["ws_CO_b"]  # % and _ are text, not wildcards
    assert found(q="_") == []


@pytest.mark.parametrize("args, parameter", [
    ({"status": "paid"}, "status"), ({"phone": "0201234567"}, "phone"), ({"phone": "+255713222111"}, "phone"),
    ({"min_amount": "0"}, "min_amount"), ({"max_amount": "1.5"}, "max_amount"),
    ({"min_amount": "500", "max_amount": "100"}, "max_amount"), ({"since": "yesterday"}, "since"),
    ({"until": "2026-02-30"}, "until"), ({"receipt": "UK-1"}, "receipt"), ({"q": "x" * 101}, "q"),
    ({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"), ({"cursor": "not-a-cursor"}, "cursor"),
])
def test_a_wrong_parameter_is_named(store, args, parameter):
    with pytest.raises(h.BadParameter) as raised:
        h.history(store, **h.parse_filters(args))
    assert raised.value.name == parameter and str(raised.value).startswith(parameter + " ")


def test_analytics_counts_sums_rates_reasons_percentiles_and_kenyan_buckets(store):
    morning = datetime(2026, 11, 2, 8, tzinfo=EAT)
    for n, after in enumerate((1, 2, 3, 4, 10)):
        put(store, f"ws_CO_ok{n}", morning + timedelta(minutes=n), status="completed", amount=100 * (n + 1),
            receipt=f"UKOK{n}", settled_after=after)
    put(store, "ws_CO_c1", morning, status="failed", amount=70, reason="Request cancelled by user", result_code="1032",
        settled_after=20)
    put(store, "ws_CO_c2", morning, status="failed", amount=30, reason="Request cancelled by user", result_code="1031",
        settled_after=30)
    put(store, "ws_CO_pin", morning, status="failed", amount=5, reason="Wrong M-Pesa PIN entered", result_code="2001",
        settled_after=40)
    put(store, "ws_CO_q", morning, status="failed", amount=5, reason="Wrong M-Pesa PIN entered", result_code="2001",
        settled_after=500, settled_by="query")  # an STK Query answer is not a callback: not in the percentiles
    put(store, "ws_CO_wait", datetime(2026, 11, 2, 23, 30, tzinfo=timezone.utc), amount=9)  # 02:30 on the 3rd in Kenya
    put(store, "ws_CO_out", datetime(2026, 11, 4, 10, tzinfo=EAT), status="completed", amount=10_000)

    figures = h.analytics(store, since="2026-11-01", until="2026-11-03")

    assert figures["since"] == "2026-10-31T21:00:00.000+00:00" and figures["until"] == "2026-11-03T21:00:00.000+00:00"
    assert figures["count"] == 10 and figures["amount"] == 1500 + 70 + 30 + 5 + 5 + 9
    assert figures["by_status"] == {"pending": {"count": 1, "amount": 9}, "completed": {"count": 5, "amount": 1500},
                                    "failed": {"count": 4, "amount": 110}, "unknown": {"count": 0, "amount": 0}}
    assert figures["completion_rate"] == round(5 / 9, 4)
    assert figures["failure_reasons"] == [
        {"reason": "Request cancelled by user", "result_codes": ["1031", "1032"], "count": 2, "amount": 100},
        {"reason": "Wrong M-Pesa PIN entered", "result_codes": ["2001"], "count": 2, "amount": 10}]
    assert figures["time_to_callback"] == {"count": 8, "p50": 4.0, "p90": 40.0, "sampled": False}  # nearest rank
    assert [day["date"] for day in figures["by_day"]] == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert [(d["count"], d["completed_amount"], d["pending"]) for d in figures["by_day"]] == [
        (0, 0, 0), (9, 1500, 0), (1, 0, 1)]
    assert len(figures["by_hour"]) == 24
    assert {b["hour"]: b["count"] for b in figures["by_hour"] if b["count"]} == {8: 9, 2: 1}
    assert h.analytics(store, since="2026-11-05", until="2026-11-05")["completion_rate"] is None


def test_analytics_refuses_a_backwards_or_too_long_period(store):
    for since, until, parameter in (("2026-11-05", "2026-11-01", "until"), ("2020-01-01", "2026-01-01", "since"),
                                    ("soon", None, "since")):
        with pytest.raises(h.BadParameter) as raised:
            h.analytics(store, since=since, until=until)
        assert raised.value.name == parameter


def test_named_periods_are_kenyan_days_weeks_and_months():
    late = datetime(2026, 11, 29, 22, 30, tzinfo=timezone.utc)  # already Monday the 30th in Nairobi
    assert period("today", late) == (datetime(2026, 11, 30, tzinfo=EAT), datetime(2026, 12, 1, tzinfo=EAT))
    assert period("this_week", late)[0] == datetime(2026, 11, 30, tzinfo=EAT)
    assert period("last_month", late) == (datetime(2026, 10, 1, tzinfo=EAT), datetime(2026, 11, 1, tzinfo=EAT))
    assert period("this_month", datetime(2026, 12, 15, tzinfo=EAT))[1] == datetime(2027, 1, 1, tzinfo=EAT)


def test_a_payments_raw_callbacks_never_show_the_callback_token(settings):
    store = open_store(settings.payments_db)
    try:
        manager = CallbackManager(store, settings)
        manager.register("ws_CO_1", "0712345678", 500, "lunch")
        token = settings.callback_token
        manager.ingest(callback_body(), {"Content-Type": "application/json", "Authorization": "Bearer abc",
                                         "X-Original-URL": f"/callback/{token}?x=1"}, "196.201.212.69")
        [shown] = h.payment_callbacks(store, "ws_CO_1", token)
    finally:
        store.close()
    assert token not in repr(shown) and "abc" not in repr(shown)
    assert shown["headers"]["X-Original-URL"] == "/callback/<redacted>?x=1"
    assert shown["outcome"] == "applied" and '"CheckoutRequestID": "ws_CO_1"' in shown["body"]


def test_the_csv_has_every_field_and_no_spreadsheet_formulas(store):
    put(store, "ws_CO_x", datetime(2026, 11, 29, tzinfo=EAT), description="=HYPERLINK(\"http://evil\")")
    lines = list(csv.reader(io.StringIO("".join(h.csv_rows(h.every_payment(store))))))
    assert lines[0][:3] == ["checkout_request_id", "merchant_request_id", "phone_number"]
    assert lines[1][0] == "ws_CO_x" and lines[1][4] == "'=HYPERLINK(\"http://evil\")"


def plan(store, **filters) -> str:
    where, args = h._where(**h._checked(**filters))
    sql = (f"EXPLAIN QUERY PLAN SELECT * FROM payments{h._clause(where)}"
           " ORDER BY created_at DESC, checkout_request_id DESC LIMIT 51")
    with store.reader() as conn:
        return " | ".join(row[3] for row in conn.execute(sql, args))


@pytest.mark.parametrize("filters, index", [
    ({}, "payments_by_created"), ({"status": "failed"}, "payments_by_status_created"),
    ({"phone": "0712345678"}, "payments_by_phone"), ({"since": "2026-11-01"}, "payments_by_created"),
])
@pytest.mark.sqlite_only  # SQLite's EXPLAIN QUERY PLAN
def test_a_history_page_reads_an_index_in_order_without_sorting(store, filters, index):
    found = plan(store, **filters)
    assert index in found and "TEMP B-TREE" not in found, found


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("history"), token=TOKEN, api_key="history-key", PAYMENT_WAIT_SECONDS="8",
               SIMULATOR_CALLBACK_DELAY="0.05") as stack:
        yield stack


def test_history_csv_and_analytics_over_http_from_payments_through_the_simulator(stack):
    send, _ = make_tools(Payments(stack.settings))
    outcomes = {phone: asyncio.run(send(phone, amount, "history test"))
                for phone, amount in (("0700000000", 120), ("0700001032", 30), ("0700000001", 45))}
    assert [r["payment_status"] for r in outcomes.values()] == ["completed", "failed", "failed"]

    page = stack.api("GET", "/payment/history", params={"phone": "+254 700 000 000"}).json()
    assert [p["checkout_request_id"] for p in page["payments"]] == [outcomes["0700000000"]["checkout_request_id"]]
    assert page["next_cursor"] is None and page["payments"][0]["receipt"]

    first = stack.api("GET", "/payment/history", params={"limit": 2}).json()
    rest = stack.api("GET", "/payment/history", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [p["amount"] for p in first["payments"] + rest["payments"]] == [45, 30, 120]

    exported = stack.api("GET", "/payment/history.csv", params={"status": "failed"})
    assert exported.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert sorted(row["reason"] for row in rows) == ["Insufficient M-Pesa balance", "Request cancelled by user"]

    figures = stack.api("GET", "/payment/analytics", params={"since": datetime.now(EAT).date().isoformat()}).json()
    assert figures["by_status"]["completed"] == {"count": 1, "amount": 120}
    assert figures["completion_rate"] == round(1 / 3, 4)
    assert {r["reason"] for r in figures["failure_reasons"]} == {"Insufficient M-Pesa balance",
                                                               "Request cancelled by user"}
    assert figures["time_to_callback"]["count"] == 3 and 0 <= figures["time_to_callback"]["p50"] < 8

    wrong = stack.api("GET", "/payment/history", params={"phone": "12345"})
    assert wrong.status_code == 400 and wrong.json()["parameter"] == "phone"
    assert requests.get(stack.url + "/payment/analytics", timeout=5).status_code == 401


def test_a_large_export_streams_every_row(stack):
    rows = 2500  # more than one export page (1000)
    store = Store(stack.db)  # a second writer on the server's file, as a bulk import would be
    try:
        put_many = [(f"ws_CO_bulk{n:05d}", datetime(2026, 1, 1, tzinfo=EAT) + timedelta(seconds=n))
                    for n in range(rows)]
        with store.transaction() as tx:
            tx.conn.executemany(
                "INSERT INTO payments (checkout_request_id, phone_number, amount, description, status, created_at,"
                " updated_at) VALUES (?, '254711000000', 1, 'bulk', 'pending', ?, ?)",
                [(cid, at.astimezone(timezone.utc).isoformat(timespec="milliseconds"),
                  at.astimezone(timezone.utc).isoformat(timespec="milliseconds")) for cid, at in put_many])
    finally:
        store.close()
    exported = stack.api("GET", "/payment/history.csv", params={"phone": "0711000000"}, stream=True)
    lines = sum(1 for _ in exported.iter_lines())
    assert lines == rows + 1
