"""Notifications through the webhook outbox: email over SMTP, SMS through Africa's Talking and
WhatsApp through Meta's Cloud API. Each recipient configured in .env (NOTIFY_*) is an endpoint
whose url names the channel (`mailto:`, `sms:`, `whatsapp:`; `customer` is the payer's phone), so
its messages are queued with each event, retried, recorded and replayed like any webhook."""
from __future__ import annotations

import hashlib
import smtplib
from email.message import EmailMessage

import requests

from mpesa_agent.config import Settings
from mpesa_agent.payments.messages import render, subject
from mpesa_agent.payments.phones import normalize_phone
from mpesa_agent.server.outbox import RESPONSE_KEPT, Delivery

SCHEMES = ("mailto", "sms", "whatsapp")
CUSTOMER = "customer"


def channel_urls(settings: Settings) -> list[str]:
    """The endpoints .env asks for, as urls."""
    return ([f"mailto:{to}" for to in settings.notify_email_to] + [f"sms:{to}" for to in settings.notify_sms_to]
            + [f"whatsapp:{to}" for to in settings.notify_whatsapp_to])


def channel_id(url: str) -> str:
    return "ch_" + hashlib.sha256(url.encode()).hexdigest()[:16]


def is_channel(url: str) -> bool:
    return url.partition(":")[0] in SCHEMES


def send(delivery: Delivery, settings: Settings, session: requests.Session) -> tuple[int | None, bool, str]:
    """Send one notification: (the status its service answered, delivered?, the start of its answer)."""
    scheme, _, to = delivery.url.partition(":")
    payment = delivery.event.data.get("payment")
    if not payment:
        return None, True, "nothing to say: the event has no payment"
    text = render(delivery.event.type, payment, settings.notify_language, customer=to == CUSTOMER)
    if to == CUSTOMER:
        to = payment["phone_number"]
    if scheme == "mailto":
        return _email(settings, to, text)
    phone = normalize_phone(to)
    if scheme == "sms":
        return _sms(settings, session, phone, text)
    return _whatsapp(settings, session, phone, text)


def _email(settings: Settings, to: str, text: str) -> tuple[int | None, bool, str]:
    if not settings.smtp_host:
        return None, False, "SMTP_HOST is not set"
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = settings.smtp_from or "mpesa@localhost", to, subject(text)
    message.set_content(text)
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.webhook_timeout) as smtp:
        if settings.smtp_starttls:
            smtp.starttls()
        if settings.smtp_user:
            smtp.login(settings.smtp_user, settings.smtp_password)
        refused = smtp.send_message(message)
        code, answer = smtp.noop()
    return (550, False, f"refused: {refused}") if refused else (250, True, f"{code} {answer.decode(errors='replace')}")


def _sms(settings: Settings, session: requests.Session, phone: str, text: str) -> tuple[int | None, bool, str]:
    """Africa's Talking's messaging API: form fields, the key in an `apiKey` header, 201 when queued."""
    form = {"username": settings.africastalking_username, "to": f"+{phone}", "message": text}
    if settings.africastalking_sender_id:
        form["from"] = settings.africastalking_sender_id
    response = session.post(f"{settings.africastalking_base_url}/version1/messaging", data=form,
                            timeout=settings.webhook_timeout, allow_redirects=False,
                            headers={"apiKey": settings.africastalking_api_key, "Accept": "application/json"})
    try:
        recipients = response.json()["SMSMessageData"]["Recipients"]
        sent = bool(recipients) and all(r.get("statusCode") in (100, 101, 102) for r in recipients)
    except (ValueError, KeyError, TypeError):
        sent = False
    return response.status_code, response.ok and sent, response.text[:RESPONSE_KEPT]


def _whatsapp(settings: Settings, session: requests.Session, phone: str, text: str) -> tuple[int | None, bool, str]:
    """A template message whose body has one variable, {{1}}: the notification's text."""
    body = {"messaging_product": "whatsapp", "to": phone, "type": "template", "template": {
        "name": settings.whatsapp_template, "language": {"code": settings.notify_language},
        "components": [{"type": "body", "parameters": [{"type": "text", "text": text}]}]}}
    response = session.post(f"{settings.whatsapp_base_url}/{settings.whatsapp_phone_number_id}/messages", json=body,
                            timeout=settings.webhook_timeout, allow_redirects=False,
                            headers={"Authorization": f"Bearer {settings.whatsapp_token}"})
    return response.status_code, response.ok, response.text[:RESPONSE_KEPT]
