"""The dashboard's Batches pages through Flask's test client, on both stores: the list, a batch's
page (summary, counts and KES by state, who has not paid, who failed and why, every item), its CSV,
cancelling (CSRF, in words) and the stream that tells the pages to refresh. Items are sent and
answered here through the sender's own steps (server/batches.py) and the manager, without Daraja;
the browser tests (test_dashboard_browser.py) do it with the real sender and simulator."""
import csv
import io
import re

import pytest

from tests.test_callback_manager import callback_body
from tests.test_dashboard import KEY, csrf, frames, sign_in

pytestmark = pytest.mark.stores

AUTH = {"Authorization": f"Bearer {KEY}"}
PEOPLE = [("0712000001", 500, "Wanjiku"), ("0712000002", 300, "Otieno"), ("0712000003", 200, "Akinyi"),
          ("0712000004", 100, "")]


@pytest.fixture
def signed_in(client):
    assert sign_in(client).status_code == 302
    return client


def start_batch(client, people=PEOPLE, description="chama", **extra) -> str:
    items = [{"phone_number": phone, "amount": amount, "reference": ref} for phone, amount, ref in people]
    answer = client.post("/payment/bulk", json={"description": description, "items": items, **extra}, headers=AUTH)
    assert answer.status_code == 201, answer.get_data(as_text=True)
    return answer.get_json()["batch"]["id"]


def send_next(app, result_code: int | None = 0) -> str:
    """The sender's steps for the next queued item (claim, register with its checkout id), then the
    customer's answer (a callback with `result_code`, or None: no answer yet); its checkout id."""
    batches, manager = app.extensions["batches"], app.extensions["callback_manager"]
    item = batches.queued(1)[0]
    assert batches.claim(item)
    checkout_id = f"ws_CO_{item.batch_id}_{item.position}"
    manager.register(checkout_id, item.phone_number, item.amount, item.description, None, batch_id=item.batch_id,
                     within=lambda tx, payment: batches.mark_sent(tx, item, checkout_id))
    if result_code is not None:
        manager.ingest(callback_body(checkout_request_id=checkout_id, result_code=result_code, amount=item.amount,
                                     phone=int(item.phone_number)), {"Content-Type": "application/json"},
                       "196.201.212.69")
    return checkout_id


def text(answer) -> str:
    return re.sub(r"\s+", " ", answer.get_data(as_text=True)).strip()


def test_the_batches_pages_need_a_session_and_show_nothing_without_one(app, client):
    batch_id = start_batch(client)
    for path in ("/dashboard/batches", f"/dashboard/batches/{batch_id}", f"/dashboard/batches/{batch_id}.csv",
                 f"/dashboard/batches/{batch_id}?part=live", "/dashboard/batches/stream?timeout=0"):
        answer = client.get(path)
        assert answer.status_code == 302 and answer.headers["Location"].startswith("/dashboard/sign-in")
        assert not any(secret in answer.data for secret in (b"Wanjiku", b"chama", b"712000001"))
    refused = client.post(f"/dashboard/batches/{batch_id}/cancel")
    assert refused.status_code == 302 and app.extensions["batches"].report(batch_id)["status"] == "sending"


def test_the_list_shows_the_newest_batch_first_with_its_numbers(app, signed_in):
    older = start_batch(signed_in, PEOPLE[:2], description="rent")
    newer = start_batch(signed_in, PEOPLE[2:], description="school trip")
    send_next(app, 0)  # rent's first item: paid
    page = text(signed_in.get("/dashboard/batches"))
    assert 'aria-current="page">Batches' in page
    assert page.index(f'id="b-{newer}"') < page.index(f'id="b-{older}"')
    row = re.search(rf'<tr id="b-{older}">(.*?)</tr>', page).group(1)
    assert "rent" in row and "1 of 2 paid, 1 not sent yet" in row
    assert re.search(r'c-asked num">800<', row) and re.search(r'c-paid num">500<', row)
    assert '<progress max="2" value="1"' in row and "1 of 2 answered · 1 not sent yet" in row
    live = text(signed_in.get("/dashboard/batches?part=live"))
    assert live.startswith('<div id="batches-live"') and "<nav" not in live and older in live


def test_a_batch_page_shows_counts_kes_who_has_not_paid_and_who_failed_in_words(app, signed_in):
    batch_id = start_batch(signed_in)
    paid = send_next(app, 0)
    send_next(app, 1032)
    waiting = send_next(app, None)
    page = text(signed_in.get(f"/dashboard/batches/{batch_id}"))
    assert '<p class="say" id="batch-summary">1 of 4 paid, 1 cancelled, 1 waiting for an answer, 1 not sent yet</p>' in page
    assert 'id="stat-asked">KES 1,100<' in page and 'id="stat-paid">KES 500<' in page
    by_state = dict(re.findall(r'<tr data-outcome="(\w+)"><td>[^<]+</td><td class="num">(\d+)</td>', page))
    assert by_state == {"completed": "1", "failed": "1", "pending": "1", "queued": "1"}
    assert re.search(r'data-outcome="completed"><td>paid</td><td class="num">1</td><td class="num">500</td>', page)
    not_paid = re.search(r'<table class="items" id="not-paid">(.*?)</table>', page).group(1)
    assert "0712000001" not in not_paid and all(p in not_paid for p in ("0712000002", "0712000003", "0712000004"))
    failed = re.search(r'<table class="items" id="failed">(.*?)</table>', page).group(1)
    assert "0712000002" in failed and "Request cancelled by user" in failed and "1032" not in failed
    items = re.search(r'<table class="items" id="items">(.*?)</table>', page).group(1)
    assert f'href="/dashboard/payments/{paid}"' in items and f'href="/dashboard/payments/{waiting}"' in items
    assert "Receipt " in items and "waiting for the customer to answer the prompt" in items and "not sent yet" in items
    assert 'href="/dashboard/batches/' + batch_id + '.csv"' in page
    payment = signed_in.get(f"/dashboard/payments/{paid}").get_data(as_text=True)  # the item's link: its payment
    assert f'id="batch-link" href="/dashboard/batches/{batch_id}"' in payment  # and back
    assert signed_in.get("/dashboard/batches/bat_nope").status_code == 404


def test_the_csv_download_is_the_apis_csv(app, signed_in):
    batch_id = start_batch(signed_in)
    send_next(app, 0)
    mine = signed_in.get(f"/dashboard/batches/{batch_id}.csv")
    assert mine.headers["Content-Disposition"] == f'attachment; filename="{batch_id}.csv"'
    assert mine.get_data() == signed_in.get(f"/payment/bulk/{batch_id}.csv", headers=AUTH).get_data()
    rows = list(csv.DictReader(io.StringIO(mine.get_data(as_text=True))))
    assert [(r["phone_number"], r["amount"], r["outcome"]) for r in rows] == [
        ("254712000001", "500", "completed"), ("254712000002", "300", "queued"), ("254712000003", "200", "queued"),
        ("254712000004", "100", "queued")]


def test_cancel_asks_in_words_needs_the_csrf_token_and_stops_the_unsent_items(app, signed_in):
    batch_id = start_batch(signed_in)
    send_next(app, None)
    page = text(signed_in.get(f"/dashboard/batches/{batch_id}"))
    box = re.search(r'<details class="card confirm" id="cancel-box">(.*?)</details>', page).group(1)
    assert 'id="cancel-count">3<' in box and "those customers get no prompt" in box
    assert "Requests already sent are not affected" in box
    forged = signed_in.post(f"/dashboard/batches/{batch_id}/cancel", data={"csrf_token": "forged"})
    assert forged.status_code == 400 and app.extensions["batches"].report(batch_id)["status"] == "sending"
    token = csrf(signed_in, f"/dashboard/batches/{batch_id}")
    answer = signed_in.post(f"/dashboard/batches/{batch_id}/cancel", data={"csrf_token": token})
    assert answer.status_code == 302 and answer.headers["Location"] == f"/dashboard/batches/{batch_id}?cancelled=3"
    report = app.extensions["batches"].report(batch_id)
    assert report["status"] == "cancelled" and report["by_outcome"]["cancelled"]["count"] == 3
    assert app.extensions["batches"].queued() == []
    after = text(signed_in.get(answer.headers["Location"]))
    assert "Cancelled: 3 requests not sent yet will not be sent." in after
    assert 'id="cancel-box" hidden' in after and "3 not sent (batch cancelled)" in after
    again = signed_in.post(f"/dashboard/batches/{batch_id}/cancel", data={"csrf_token": token})
    assert again.headers["Location"].endswith("cancelled=0")
    assert "Nothing was left to cancel" in text(signed_in.get(again.headers["Location"]))
    assert signed_in.post("/dashboard/batches/bat_nope/cancel", data={"csrf_token": token}).status_code == 404


def test_the_stream_names_the_batch_of_each_batch_and_batch_payment_event(app, signed_in):
    batch_id = start_batch(signed_in, PEOPLE[:1])
    app.extensions["callback_manager"].register("ws_CO_alone", "0799000000", 10, "not in a batch", None)
    send_next(app, 0)
    sent = frames(signed_in.get("/dashboard/batches/stream?timeout=0").get_data(as_text=True))
    assert [data["type"] for _, data in sent] == ["batch.started", "payment.registered", "batch.finished",
                                                  "payment.completed"]
    assert {data["batch_id"] for _, data in sent} == {batch_id}
    page = signed_in.get(f"/dashboard/batches/{batch_id}").get_data(as_text=True)
    assert f'data-batch="{batch_id}"' in page and 'src="/dashboard/static/batches.js"' in page
    assert all(signed_in.get(f"/dashboard/static/{name}").status_code == 200 for name in ("batches.js", "stream.js"))
    live = text(signed_in.get(f"/dashboard/batches/{batch_id}?part=live"))
    assert live.startswith('<div id="batch-live" data-unsent="0">') and "1 of 1 paid" in live
