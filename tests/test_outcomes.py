import pytest

from mpesa_agent.payments.states import COMPLETED, FAILED, PENDING, UNKNOWN, classify


@pytest.mark.parametrize("code, state", [
    (0, COMPLETED), ("0", COMPLETED), (0.0, COMPLETED), (1032, FAILED), ("1032", FAILED), (1031, FAILED),
    (2001, FAILED), (1037, FAILED), (1, FAILED), ("SFC_IC0003", FAILED), ("4999", PENDING),
    (12345, UNKNOWN), ("", UNKNOWN), (None, UNKNOWN), (True, UNKNOWN),
])
def test_classify_maps_codes_not_descriptions(code, state):
    assert classify(code, "The service request is processed successfully.")[0] == state


def test_reasons_are_for_people():
    assert classify(1032) == (FAILED, "Request cancelled by user")
    assert "PIN" in classify("2001")[1]
    assert "99" in classify(99, "Odd thing")[1] and "Odd thing" in classify(99, "Odd thing")[1]
