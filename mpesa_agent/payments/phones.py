"""Kenyan phone numbers and KES amounts, validated the way Daraja needs them."""
from __future__ import annotations

from decimal import Decimal, InvalidOperation

import phonenumbers

_MOBILE_TYPES = (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE)


class InvalidPhoneNumber(ValueError):
    """The text is not a Kenyan mobile number."""


class InvalidAmount(ValueError):
    """The amount is not a whole number of KES within bounds."""


def normalize_phone(raw: object) -> str:
    """Return the MSISDN `2547XXXXXXXX` / `2541XXXXXXXX` for any usual written form.

    Accepts 07.., 01.., 7.., +2547.., 2547.., with spaces, dashes, dots or brackets. The numbering
    plan comes from `phonenumbers`, so new Safaricom/Airtel/Telkom ranges need no code change.
    """
    text = str(raw if raw is not None else "").strip()
    if isinstance(raw, bool) or not text:
        raise InvalidPhoneNumber("Phone number is missing")
    digits = "".join(ch for ch in text if ch.isdigit())
    if len(digits) == 9 and digits[0] in "17":  # 712345678: the leading 0 was dropped
        text = "0" + digits
    elif digits.startswith("254") and not text.startswith("+"):
        text = "+" + digits
    try:
        number = phonenumbers.parse(text, "KE")
    except phonenumbers.NumberParseException:
        raise InvalidPhoneNumber(f"{text!r} is not a phone number") from None
    if number.country_code != 254 or not phonenumbers.is_valid_number(number):
        raise InvalidPhoneNumber(f"{text!r} is not a valid Kenyan mobile number (e.g. 0712345678)")
    if phonenumbers.number_type(number) not in _MOBILE_TYPES:
        raise InvalidPhoneNumber(f"{text!r} is not a mobile number; M-Pesa needs a mobile line")
    return f"254{number.national_number}"


def display_phone(msisdn: str) -> str:
    """`254712345678` -> `0712345678`, the form people write."""
    return "0" + msisdn[3:] if msisdn.startswith("254") and len(msisdn) == 12 else msisdn


def masked_phone(msisdn: str) -> str:
    """`254712345678` -> `0712***678`: enough to tell payments apart in a log, not to call."""
    local = display_phone(msisdn)
    return local[:4] + "***" + local[-3:] if len(local) >= 10 else "***"


def parse_amount(raw: object, maximum: int | None = None) -> int:
    """Return a whole-KES amount >= 1 (and <= `maximum`); reject cents, not round them."""
    if isinstance(raw, bool) or raw is None or raw == "":
        raise InvalidAmount("Amount is missing")
    try:
        value = Decimal(str(raw).replace(",", "").strip())
    except InvalidOperation:
        raise InvalidAmount(f"Amount {raw!r} is not a number") from None
    if not value.is_finite():
        raise InvalidAmount(f"Amount {raw!r} is not a number")
    if value != value.to_integral_value():
        raise InvalidAmount(f"M-Pesa takes whole shillings only, got {raw}")
    if value < 1:
        raise InvalidAmount(f"Amount must be at least 1 KES, got {raw}")
    if maximum is not None and value > maximum:
        shown = f"{int(value):,}" if value.adjusted() < 20 else f"{value:E}"  # int() of 1E+999999999 never ends
        raise InvalidAmount(f"Amount {shown} KES is above the limit of {maximum:,} KES")
    return int(value)
