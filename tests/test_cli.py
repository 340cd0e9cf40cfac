"""The `mpesa` CLI as a user runs it: real processes (simulator, callback server, a receiver), the
CLI as a subprocess, its output read as text or JSON."""
import csv
import io
import json
import subprocess
import sys

import pytest

from harness import ROOT, Stack
from harness.webhooks import Receiver

SECRET = "whsec_" + "c2VjcmV0LWZvci10aGUtY2xpLXRlc3Qtc2lnbmF0dXJlcw=="
HANG_GUARD = 60.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("cli"), WEBHOOKS_ALLOW_PRIVATE_URLS="true") as stack:
        yield stack


def mpesa(stack, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mpesa_agent.cli", *args], cwd=ROOT, env={**stack.env, **(env or {})},
                          capture_output=True, text=True, timeout=HANG_GUARD)


def test_listen_forwards_a_triggered_payment_signed_end_to_end(stack):
    with Receiver() as receiver:
        receiver.secret = SECRET
        listen = subprocess.Popen([sys.executable, "-m", "mpesa_agent.cli", "listen", "--forward-to", receiver.url,
                                   "--secret", SECRET, "--events", "payment.completed,payment.failed"],
                                  cwd=ROOT, env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert listen.stderr.readline().startswith("Ready! Listening for payment.completed, payment.failed")
            triggered = mpesa(stack, "--json", "trigger", "payment.completed")
            assert triggered.returncode == 0, triggered.stderr
            checkout_id = json.loads(triggered.stdout)["checkout_request_id"]
            assert receiver.wait_for(lambda got: len(got) >= 1, HANG_GUARD)
            [delivery] = receiver.received
            assert delivery.verified and delivery.status == 200
            assert delivery.message["type"] == "payment.completed"
            assert delivery.message["data"]["checkout_request_id"] == checkout_id
            line = listen.stdout.readline()
            assert "payment.completed" in line and checkout_id in line and f"[200] POST {receiver.url}" in line
        finally:
            listen.kill()
            listen.wait()


@pytest.mark.parametrize("reason, description", [("1032", "cancelled"), ("2001", "")])
def test_trigger_failed_ends_the_payment_that_way(stack, reason, description):
    result = mpesa(stack, "--json", "trigger", "payment.failed", "--reason", reason)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["payment_status"] == "failed" and answer["payment"]["result_code"] == reason
    assert description in answer["error_message"].lower()


def test_payments_events_and_webhooks_commands(stack):
    mpesa(stack, "trigger", "payment.completed")
    listed = json.loads(mpesa(stack, "--json", "payments", "list", "--status", "completed").stdout)["payments"]
    assert listed and all(p["status"] == "completed" for p in listed)
    shown = json.loads(mpesa(stack, "--json", "payments", "show", listed[0]["checkout_request_id"]).stdout)
    assert shown["payment_status"] == "completed" and shown["events"][0]["type"] == "payment.registered"
    exported = list(csv.DictReader(io.StringIO(mpesa(stack, "payments", "export", "--status", "completed").stdout)))
    assert [row["checkout_request_id"] for row in exported] == [p["checkout_request_id"] for p in listed]
    assert exported[0]["receipt"] == listed[0]["receipt"] and "created_at" in exported[0]
    page = json.loads(mpesa(stack, "--json", "events", "list", "--type", "payment.completed").stdout)
    assert page["events"] and {e["type"] for e in page["events"]} == {"payment.completed"}

    added = json.loads(mpesa(stack, "--json", "webhooks", "add", "http://127.0.0.1:9/hooks", "--events",
                             "payment.failed").stdout)
    assert added["secret"].startswith("whsec_") and added["events"] == ["payment.failed"]
    table = mpesa(stack, "webhooks", "list").stdout  # not a terminal: plain text, no box, no colour
    assert added["id"] in table and "payment.failed" in table and "\x1b[" not in table and "━" not in table
    replayed = json.loads(mpesa(stack, "--json", "webhooks", "replay", added["id"], "--event-id", "1").stdout)
    assert replayed == {"endpoint_id": added["id"], "queued": 1}
    assert "give --event-id or --since" in mpesa(stack, "webhooks", "replay", added["id"]).stderr


def test_an_unreachable_server_or_a_wrong_key_is_one_clear_line(stack):
    down = mpesa(stack, "events", "list", env={"CALLBACK_SERVER_URL": "http://127.0.0.1:9"})
    wrong = mpesa(stack, "--api-key", "not-the-key", "payments", "list")
    assert (down.returncode, wrong.returncode) == (1, 1)
    assert down.stderr == "mpesa: cannot reach the callback server at http://127.0.0.1:9 (is it running? " \
                          "python callback_server.py)\n"
    assert wrong.stderr.startswith("mpesa: the callback server at http") and "refused the API key" in wrong.stderr
    assert wrong.stderr.count("\n") == 1 and not down.stdout and not wrong.stdout


def test_retry_sends_a_linked_push_once_confirmed_and_refuses_a_paid_one(stack):
    failed = json.loads(mpesa(stack, "--json", "trigger", "payment.failed", "--reason", "1037").stdout)
    unasked = mpesa(stack, "retry", failed["checkout_request_id"])  # no terminal and no --yes: nothing sent
    assert unasked.returncode == 1 and "Add --yes to confirm" in unasked.stderr
    retried = mpesa(stack, "--json", "retry", failed["checkout_request_id"], "--yes", "--wait", "20")
    assert retried.returncode == 0, retried.stderr
    answer = json.loads(retried.stdout)
    assert (answer["retry_of"], answer["attempt"], answer["payment_status"]) == (failed["checkout_request_id"], 2, "failed")
    assert len(stack.pushes_to("254700001037")) == 2

    paid = json.loads(mpesa(stack, "--json", "trigger", "payment.completed").stdout)
    refused = mpesa(stack, "retry", paid["checkout_request_id"], "--yes")
    assert refused.returncode == 1 and "HTTP 409" in refused.stderr and "charge the customer twice" in refused.stderr


def test_bulk_send_checks_the_csv_first_asks_then_shows_progress_until_every_item_settles(stack, tmp_path):
    sheet = tmp_path / "chama.csv"
    sheet.write_text("phone,amount,reference\n0711 000 301,100,Wanjiku\n0700001032,100,Otieno\n0711000302,abc,Akinyi\n")
    refused = mpesa(stack, "bulk", "send", str(sheet), "--yes")
    assert refused.returncode == 1 and "line 4:" in refused.stderr and "nothing was sent" in refused.stderr
    unasked = mpesa(stack, "bulk", "send", str(sheet), "--skip-invalid")  # no terminal and no --yes
    assert unasked.returncode == 1 and "Send M-Pesa prompts to 2 phones for 200 KSh in all" in unasked.stderr
    assert stack.pushes_to("254711000301") == []

    cancelling_before = len(stack.pushes_to("254700001032"))  # the simulator's 1032 number: other tests use it too
    sent = mpesa(stack, "--json", "bulk", "send", str(sheet), "--skip-invalid", "--yes", "--description", "chama",
                 "--watch", "60")
    assert sent.returncode == 0, sent.stderr
    batch = json.loads(sent.stdout)
    assert batch["settled"] and batch["summary"] == "1 of 2 paid, 1 cancelled"
    progress = sent.stderr.splitlines()
    assert progress[0] == f"Batch {batch['id']}: 2 prompts queued, 200 KSh in all."
    assert progress[-1] == "2/2 sent; 1 of 2 paid, 1 cancelled; 100 of 200 KSh paid"
    assert len(stack.pushes_to("254711000301")) == 1
    assert len(stack.pushes_to("254700001032")) == cancelling_before + 1

    exported = list(csv.DictReader(io.StringIO(mpesa(stack, "bulk", "export", batch["id"]).stdout)))
    assert [(row["phone_number"], row["outcome"]) for row in exported] == [
        ("254711000301", "completed"), ("254700001032", "failed")]
    status = mpesa(stack, "bulk", "status", batch["id"])
    assert status.returncode == 0 and "Request cancelled by user" in status.stdout
    missing = mpesa(stack, "bulk", "status", "b_nosuch")
    assert missing.returncode == 1 and "HTTP 404" in missing.stderr
