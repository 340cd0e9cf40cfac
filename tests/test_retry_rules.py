"""payments/retry.py, rule by rule: when a push may go (again), and which payments may be retried."""
import pytest

from mpesa_agent.payments.record import Payment
from mpesa_agent.payments.retry import AUTO_RETRY_CODES, auto_retryable, check_push, retry_refusal

LIMITS = {"count": 3, "window": 600, "repeat_window": 120}


def payment(status="failed", result_code="1037", review=None, attempt=1, **extra) -> Payment:
    return Payment.new("ws_CO_1", "254712345678", 500, "lunch", None, "2026-11-29T10:00:00.000+00:00", status=status,
                       result_code=result_code, review=review, attempt=attempt, **extra)


def test_the_rate_limit_counts_every_push_in_the_window_and_says_when_the_next_may_go():
    assert check_push([(0, 10), (100, 20)], 30, 200, **LIMITS).ok
    limited = check_push([(0, 10), (100, 20), (150, 30)], 40, 200, **LIMITS)
    assert (limited.verdict, limited.wait, limited.recent) == ("rate_limited", 401, 3)
    assert check_push([(0, 10), (100, 20), (150, 30)], 40, 601, **LIMITS).ok, "the oldest left the window"


def test_the_same_amount_within_the_repeat_window_needs_confirming():
    repeat = check_push([(100, 500)], 500, 130, **LIMITS)
    assert (repeat.verdict, repeat.ago, repeat.wait) == ("repeat", 30, 91)
    assert check_push([(100, 500)], 500, 130, confirmed=True, **LIMITS).ok
    assert check_push([(100, 500)], 700, 130, **LIMITS).ok, "another amount is not a repeat"
    assert check_push([(100, 500)], 500, 221, **LIMITS).ok, "after 2 minutes it is not a repeat"


@pytest.mark.parametrize("status, review, refused", [
    ("completed", None, "a retry would charge the customer twice"),
    ("pending", None, "they may still pay it"),
    ("unknown", None, "the customer may have paid"),
    ("failed", "callback #7: a success callback after the failure", "may have been paid needs review first"),
])
def test_only_a_certain_failure_may_be_retried(status, review, refused):
    assert refused in retry_refusal(payment(status, review=review))
    assert retry_refusal(payment("failed", "1032")) is None, "a person may retry a cancel"


@pytest.mark.parametrize("code", sorted(AUTO_RETRY_CODES))
def test_automatic_retry_is_for_no_answer_and_busy_within_the_maximum(code):
    assert auto_retryable(payment(result_code=code), max_retries=2)
    assert auto_retryable(payment(result_code=code, attempt=2), max_retries=2)
    assert not auto_retryable(payment(result_code=code, attempt=3), max_retries=2), "2 retries already"
    assert not auto_retryable(payment(result_code=code, attempt=1), max_retries=0), "0: never"


@pytest.mark.parametrize("code", ["1032", "1031", "1", "2001", "8006", "17", "2", "1025", "2028", "SFC_IC0003"])
def test_automatic_retry_never_repeats_the_customers_answer_or_a_setup_error(code):
    assert not auto_retryable(payment(result_code=code), max_retries=5)

