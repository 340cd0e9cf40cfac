"""The text of SMS, WhatsApp and email notifications, in English and Swahili: one line per event,
for the merchant or (a receipt) for the customer who paid."""
from __future__ import annotations

from mpesa_agent.payments.phones import display_phone

LANGUAGES = ("en", "sw")
TEMPLATES = {
    ("en", "merchant", "payment.completed"):
        "M-Pesa payment received: KES {amount} from {phone} for {description}. Receipt {receipt}.",
    ("sw", "merchant", "payment.completed"):
        "Malipo ya M-Pesa yamepokelewa: KES {amount} kutoka {phone} kwa {description}. Risiti {receipt}.",
    ("en", "merchant", "payment.failed"):
        "M-Pesa payment not completed: KES {amount} from {phone} for {description}: {reason}.",
    ("sw", "merchant", "payment.failed"):
        "Malipo ya M-Pesa hayakukamilika: KES {amount} kutoka {phone} kwa {description}: {reason}.",
    ("en", "customer", "payment.completed"):
        "Thank you! We received KES {amount} for {description}. M-Pesa receipt {receipt}.",
    ("sw", "customer", "payment.completed"):
        "Asante! Tumepokea KES {amount} kwa {description}. Risiti ya M-Pesa {receipt}.",
    ("en", "customer", "payment.failed"):
        "Your M-Pesa payment of KES {amount} for {description} did not go through: {reason}.",
    ("sw", "customer", "payment.failed"):
        "Malipo yako ya M-Pesa ya KES {amount} kwa {description} hayakufaulu: {reason}.",
}
OTHER = {"en": "M-Pesa payment {checkout_request_id} of KES {amount} from {phone}: {status}.",
         "sw": "Malipo ya M-Pesa {checkout_request_id} ya KES {amount} kutoka {phone}: {status}."}


def render(event_type: str, payment: dict, language: str = "en", customer: bool = False) -> str:
    """One notification line for `payment` (a stored record, as events carry it)."""
    language = language if language in LANGUAGES else "en"
    values = {**payment, "phone": display_phone(payment["phone_number"]),
              "description": payment.get("description") or "M-Pesa",
              "reason": payment.get("result_desc") or payment.get("reason") or "-",
              "receipt": payment.get("receipt") or "-"}
    template = TEMPLATES.get((language, "customer" if customer else "merchant", event_type), OTHER[language])
    return template.format(**values)


def subject(text: str) -> str:
    """An email subject: the line up to its first colon."""
    return text.split(":", 1)[0]
