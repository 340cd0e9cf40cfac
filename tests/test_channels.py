"""Email, SMS and WhatsApp notifications through the webhook outbox, with real processes: a real
local SMTP server (aiosmtpd) and the simulator's Africa's Talking and WhatsApp Cloud API stand-ins."""
import email
import email.policy
import threading
import time

import pytest
import requests
from aiosmtpd.controller import Controller

from harness import Stack, free_port
from mpesa_agent.payments.messages import render
from test_callback_manager import callback_body

HANG_GUARD = 60.0
PAYMENT = {"checkout_request_id": "ws_CO_1", "phone_number": "254712345678", "amount": 500, "description": "lunch",
           "status": "completed", "receipt": "UKYPST28TK", "result_desc": None, "reason": None}


class Mailbox:
    """aiosmtpd handler: keeps each message it accepts."""

    def __init__(self):
        self.messages, self.changed = [], threading.Condition()

    async def handle_DATA(self, server, session, envelope):
        with self.changed:
            self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
            self.changed.notify_all()
        return "250 Message accepted for delivery"


@pytest.fixture
def mailbox():
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield box, controller.port
    controller.stop()


def messages_at(stack, count: int) -> list[dict]:
    """What the simulator's stand-ins received, once there are `count` (a hang guard, not a sleep)."""
    deadline = time.monotonic() + HANG_GUARD
    while True:
        found = stack.control("GET", "/messages")["messages"]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_a_completed_payment_reaches_email_sms_and_whatsapp_with_the_right_text_and_number(tmp_path, mailbox):
    box, smtp_port = mailbox
    stack = Stack(tmp_path, NOTIFY_EMAIL_TO="shop@example.com", SMTP_HOST="127.0.0.1", SMTP_PORT=smtp_port,
                  SMTP_STARTTLS="false", SMTP_FROM="mpesa@example.com", NOTIFY_SMS_TO="0711000111,customer",
                  AFRICASTALKING_API_KEY="at-test-key", NOTIFY_WHATSAPP_TO="0722000222", WHATSAPP_TOKEN="wa-token",
                  WHATSAPP_PHONE_NUMBER_ID="1234567890")
    stack.env.update(AFRICASTALKING_BASE_URL=stack.sim_url, WHATSAPP_BASE_URL=f"{stack.sim_url}/v20.0")
    with stack:
        endpoints = stack.api("GET", "/webhooks").json()["webhooks"]
        assert sorted(e["url"] for e in endpoints) == ["mailto:shop@example.com", "sms:0711000111", "sms:customer",
                                                       "whatsapp:0722000222"]
        assert stack.api("POST", "/payment/register", json={"checkout_request_id": "ws_CO_notify", "amount": 500,
                                                             "phone_number": "0712345678", "description": "lunch"}).ok
        assert stack.post_callback(callback_body(checkout_request_id="ws_CO_notify")).json()["ResultCode"] == 0
        receipt = stack.api("GET", "/payment/status/ws_CO_notify").json()["payment"]["receipt"]
        merchant = f"M-Pesa payment received: KES 500 from 0712345678 for lunch. Receipt {receipt}."

        with box.changed:
            assert box.changed.wait_for(lambda: box.messages, HANG_GUARD)
        [mail] = box.messages
        assert (mail["To"], mail["From"], mail["Subject"]) == ("shop@example.com", "mpesa@example.com",
                                                               "M-Pesa payment received")
        assert mail.get_content().strip() == merchant

        received = {(m["channel"], m["to"]): m for m in messages_at(stack, 3)}
        assert received[("sms", "+254711000111")]["text"] == merchant
        assert received[("sms", "+254711000111")]["username"] == "sandbox"
        assert received[("sms", "+254712345678")]["text"] == \
            f"Thank you! We received KES 500 for lunch. M-Pesa receipt {receipt}."
        whatsapp = received[("whatsapp", "254722000222")]
        assert whatsapp["phone_number_id"] == "1234567890" and whatsapp["template"]["name"] == "payment_update"
        assert whatsapp["template"]["components"][0]["parameters"][0]["text"] == merchant
        assert len(received) == 3  # payment.registered and callback.received are not notified

        sms = next(e for e in endpoints if e["url"] == "sms:customer")
        deliveries = stack.api("GET", f"/webhooks/{sms['id']}/deliveries").json()["deliveries"]
        assert [(d["status_code"], d["success"]) for d in deliveries] == [(201, True)]


def test_the_stand_ins_refuse_requests_without_their_credentials(start_simulator):
    url = start_simulator()
    assert requests.post(f"{url}/version1/messaging", data={"username": "sandbox", "to": "+254711000111",
                                                             "message": "x"}, timeout=5).status_code == 401
    assert requests.post(f"{url}/v20.0/123/messages", json={"messaging_product": "whatsapp"}, timeout=5).status_code == 401
    assert requests.get(f"{url}/simulator/messages", timeout=5).json() == {"messages": []}


@pytest.mark.parametrize("language, event, customer, text", [
    ("en", "payment.failed", False, "M-Pesa payment not completed: KES 500 from 0712345678 for lunch: "
                                    "Request cancelled by user."),
    ("sw", "payment.completed", False, "Malipo ya M-Pesa yamepokelewa: KES 500 kutoka 0712345678 kwa lunch. "
                                       "Risiti UKYPST28TK."),
    ("sw", "payment.completed", True, "Asante! Tumepokea KES 500 kwa lunch. Risiti ya M-Pesa UKYPST28TK."),
    ("sw", "payment.failed", True, "Malipo yako ya M-Pesa ya KES 500 kwa lunch hayakufaulu: "
                                   "Request cancelled by user."),
    ("fr", "payment.unknown", False, "M-Pesa payment ws_CO_1 of KES 500 from 0712345678: completed."),
])
def test_templates_in_english_and_swahili(language, event, customer, text):
    payment = {**PAYMENT, "result_desc": "Request cancelled by user"} if event == "payment.failed" else PAYMENT
    assert render(event, payment, language, customer) == text
