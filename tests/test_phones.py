import pytest

from mpesa_agent.payments.phones import (InvalidAmount, InvalidPhoneNumber, display_phone, masked_phone, normalize_phone,
                                parse_amount)


@pytest.mark.parametrize("raw, msisdn", [
    ("0712345678", "254712345678"), ("0712 345 678", "254712345678"), ("0712-345-678", "254712345678"),
    ("+254712345678", "254712345678"), ("+254 712 345 678", "254712345678"), ("254712345678", "254712345678"),
    ("712345678", "254712345678"), (254712345678, "254712345678"), ("0110000000", "254110000000"),
    ("0100123456", "254100123456"), ("0770123456", "254770123456"), ("(0712) 345678", "254712345678"),
])
def test_normalize_phone_accepts_every_usual_form(raw, msisdn):
    assert normalize_phone(raw) == msisdn


@pytest.mark.parametrize("raw", ["", None, "abc", "07123", "0201234567", "+14155552671", "07123456789", True])
def test_normalize_phone_rejects_non_kenyan_mobiles(raw):
    with pytest.raises(InvalidPhoneNumber):
        normalize_phone(raw)


def test_display_phone():
    assert display_phone("254712345678") == "0712345678"


@pytest.mark.parametrize("raw, amount", [(500, 500), ("1,200", 1200), ("1.00", 1), (2.0, 2), ("250000", 250000)])
def test_parse_amount_takes_whole_shillings(raw, amount):
    assert parse_amount(raw) == amount


@pytest.mark.parametrize("raw, message", [
    (0, "at least 1"), (-5, "at least 1"), ("1.5", "whole shillings"), ("abc", "not a number"),
    ("nan", "not a number"), ("inf", "not a number"), (None, "missing"), (True, "missing"), (200, "above the limit"),
])
def test_parse_amount_rejects(raw, message):
    with pytest.raises(InvalidAmount, match=message):
        parse_amount(raw, maximum=100)


def test_masked_phone_keeps_numbers_out_of_logs():
    assert masked_phone("254712345678") == "0712***678"
    assert masked_phone("") == "***"
