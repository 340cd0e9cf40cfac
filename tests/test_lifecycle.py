"""decide(payment, evidence): every rule of DESIGN.md "Payment life", one or more tests each, no I/O."""
from dataclasses import replace

import pytest

from mpesa_agent.payments.callbacks import parse_callback
from mpesa_agent.payments.lifecycle import (CallbackEvidence, GiveUp, QueryEvidence, decide, is_open)
from mpesa_agent.payments.record import Payment
from mpesa_agent.payments.states import CallbackOutcome, EventType, Reason, SettledBy, Verification
from tests.test_callback_manager import callback_body

NOW = "2026-11-29T10:00:05.000+00:00"


def pending(**changes) -> Payment:
    payment = Payment.new("ws_CO_1", "254712345678", 500, "lunch", None, "2026-11-29T10:00:00.000+00:00")
    return replace(payment, **changes)


def callback(callback_id=7, receipt_owner=None, **kwargs) -> CallbackEvidence:
    return CallbackEvidence(parse_callback(callback_body(**kwargs)), callback_id, receipt_owner)


def apply(payment: Payment, evidence, **kwargs) -> tuple[Payment, object]:
    decision = decide(payment, evidence, now=NOW, **kwargs)
    return replace(payment, **decision.changes), decision


def test_a_matching_success_callback_completes_and_wakes():
    payment, decision = apply(pending(), callback())
    assert (payment.status, payment.receipt, payment.settled_by, payment.settled_at) == (
        "completed", "NLJ7RT61SV", "callback", NOW)
    assert (payment.paid_amount, payment.paid_phone, payment.callback_id) == ("500", "254712345678", 7)
    assert decision.events == (EventType.PAYMENT_COMPLETED,) and decision.settled
    assert decision.outcome == CallbackOutcome.APPLIED and decision.note is None


@pytest.mark.parametrize("code, reason", [(1032, Reason.CANCELLED), (1, Reason.INSUFFICIENT_BALANCE),
                                          (2001, Reason.WRONG_PIN), ("1037", Reason.NO_RESPONSE)])
def test_a_failure_callback_fails_with_a_reason_for_people(code, reason):
    payment, decision = apply(pending(), callback(result_code=code))
    assert (payment.status, payment.reason, payment.receipt) == ("failed", reason, None)
    assert decision.events == (EventType.PAYMENT_FAILED,) and decision.settled


def test_rule_1_the_first_final_state_wins_and_a_contradiction_is_recorded_not_applied():
    paid, _ = apply(pending(), callback())
    after, decision = apply(paid, callback(callback_id=8, result_code=1032))
    assert after.status == "completed" and after.receipt == "NLJ7RT61SV"
    assert decision.outcome == CallbackOutcome.CONFLICT and decision.events == (EventType.PAYMENT_CONFLICT,)
    assert "callback #8" in after.review and not decision.settled


def test_rule_1_the_same_callback_again_is_a_duplicate_and_changes_nothing():
    paid, _ = apply(pending(), callback())
    decision = decide(paid, callback(callback_id=8), now=NOW)
    assert decision.outcome == CallbackOutcome.DUPLICATE and decision.changes == {} and decision.events == ()
    failed, _ = apply(pending(), callback(result_code=1032))
    assert decide(failed, callback(result_code=1031), now=NOW).outcome == CallbackOutcome.DUPLICATE


def test_rule_1_a_second_success_with_another_receipt_is_a_conflict():
    paid, _ = apply(pending(), callback())
    after, decision = apply(paid, callback(callback_id=9, receipt="OTHER00001"))
    assert decision.outcome == CallbackOutcome.CONFLICT and after.receipt == "NLJ7RT61SV"
    assert "OTHER00001" in after.review


@pytest.mark.parametrize("kwargs, words", [
    ({"amount": 499}, "Amount 499 but registered 500"),
    ({"amount": None}, "no Amount"),
    ({"phone": 254799999999}, "PhoneNumber 254799999999"),
])
def test_rule_2_a_success_that_does_not_match_the_registration_is_unknown_for_review(kwargs, words):
    payment, decision = apply(pending(), callback(**kwargs))
    assert (payment.status, payment.reason) == ("unknown", Reason.MISMATCH) and words in payment.review
    assert decision.events == (EventType.PAYMENT_UNKNOWN,) and decision.settled
    assert not is_open(payment)


def test_rule_2_a_success_without_a_receipt_is_never_completed():
    payment, _ = apply(pending(), callback(receipt=None))
    assert (payment.status, payment.reason) == ("unknown", Reason.NO_RECEIPT) and payment.review


def test_rule_2_a_masked_phone_and_amount_1_00_still_match():
    payment, _ = apply(pending(amount=1), callback(amount="1.00", phone="2547****5678"))
    assert payment.status == "completed" and payment.paid_amount == "1.00"


def test_rule_3_a_receipt_completes_at_most_one_payment():
    payment, decision = apply(pending(), callback(receipt_owner="ws_CO_other"))
    assert (payment.status, payment.reason) == ("unknown", Reason.RECEIPT_USED)
    assert "ws_CO_other" in payment.review and decision.events == (EventType.PAYMENT_UNKNOWN,)
    same, _ = apply(pending(), callback(receipt_owner="ws_CO_1"))  # its own receipt: a duplicate's case
    assert same.status == "completed"


def test_rule_3_a_receipt_added_after_a_query_is_checked_too():
    by_query, _ = apply(pending(), QueryEvidence("completed", 0, "ok"))
    after, decision = apply(by_query, callback(receipt_owner="ws_CO_other"))
    assert after.receipt is None and decision.outcome == CallbackOutcome.CONFLICT


def test_rule_4_an_unrecognised_code_is_unknown_and_still_open():
    payment, decision = apply(pending(), callback(result_code=7777))
    assert payment.status == "unknown" and payment.review is None and is_open(payment)
    settled, decision = apply(payment, callback(callback_id=8))
    assert settled.status == "completed" and decision.settled


def test_rule_4_the_reconcilers_unknown_is_settled_by_a_late_callback():
    gave_up, decision = apply(pending(), GiveUp("no final answer"))
    assert (gave_up.status, gave_up.settled_by) == ("unknown", SettledBy.RECONCILER) and gave_up.review
    assert decision.events == (EventType.PAYMENT_UNKNOWN,) and is_open(gave_up)
    late, decision = apply(gave_up, callback())
    assert late.status == "completed" and decision.settled


def test_rule_5_a_success_is_held_until_the_query_confirms_it():
    held, decision = apply(pending(), callback(), verify_successes=True)
    assert (held.status, held.verification, held.receipt) == ("pending", Verification.AWAITING, "NLJ7RT61SV")
    assert not decision.settled and decision.events == (EventType.PAYMENT_UPDATED,)
    confirmed, decision = apply(held, QueryEvidence("completed", "0", "ok"))
    assert (confirmed.status, confirmed.verification, confirmed.settled_by) == (
        "completed", Verification.CONFIRMED, SettledBy.CALLBACK)
    assert decision.events == (EventType.PAYMENT_COMPLETED,) and decision.settled


def test_rule_5_a_query_that_contradicts_the_held_success_wins_for_review():
    held, _ = apply(pending(), callback(), verify_successes=True)
    after, decision = apply(held, QueryEvidence("failed", "1032", "cancelled", Reason.CANCELLED))
    assert (after.status, after.verification, after.receipt) == ("failed", Verification.CONTRADICTED, None)
    assert "contradicted by STK Query" in after.review and decision.settled


def test_rule_5_a_failure_callback_contradicts_a_held_success():
    held, _ = apply(pending(), callback(), verify_successes=True)
    after, decision = apply(held, callback(callback_id=8, result_code=1032))
    assert (after.status, after.verification) == ("failed", Verification.CONTRADICTED)
    assert decision.outcome == CallbackOutcome.APPLIED and decision.settled
    again = decide(held, callback(callback_id=9), now=NOW)
    assert again.outcome == CallbackOutcome.DUPLICATE and again.changes == {}


def test_rule_6_still_processing_settles_nothing():
    assert decide(pending(), QueryEvidence("pending", "4999"), now=NOW).changes == {}
    held, _ = apply(pending(), callback(), verify_successes=True)
    assert decide(held, QueryEvidence("unknown"), now=NOW).changes == {}


def test_rule_6_a_query_settles_an_open_payment_and_never_a_final_one():
    failed, decision = apply(pending(), QueryEvidence("failed", "1032", "cancelled", Reason.CANCELLED))
    assert (failed.status, failed.settled_by) == ("failed", SettledBy.QUERY) and decision.settled
    after, decision = apply(failed, QueryEvidence("completed", "0"))
    assert after.status == "failed" and decision.events == (EventType.PAYMENT_CONFLICT,)
    assert "STK Query says completed" in after.review


def test_rule_6_give_up_touches_only_open_payments():
    paid, _ = apply(pending(), callback())
    assert decide(paid, GiveUp("late"), now=NOW).changes == {}
    held, _ = apply(pending(), callback(), verify_successes=True)
    gave_up, _ = apply(held, GiveUp("no confirmation"))
    assert (gave_up.status, gave_up.verification) == ("unknown", Verification.UNCONFIRMED)


def test_every_state_change_names_its_event_and_only_updatable_fields_change():
    from mpesa_agent.payments.record import UPDATABLE
    cases = [(pending(), callback()), (pending(), callback(result_code=1032)), (pending(), GiveUp("x")),
             (pending(), QueryEvidence("completed", "0"))]
    for payment, evidence in cases:
        decision = decide(payment, evidence, now=NOW)
        assert set(decision.changes) <= UPDATABLE
        state = decision.changes["status"]
        assert decision.events == ({"completed": EventType.PAYMENT_COMPLETED, "failed": EventType.PAYMENT_FAILED,
                                    "unknown": EventType.PAYMENT_UNKNOWN}[state],)


def test_decide_refuses_what_is_not_evidence():
    with pytest.raises(TypeError):
        decide(pending(), "paid", now=NOW)


def test_rule_3_a_held_success_whose_receipt_completed_another_payment_is_not_confirmed():
    held, _ = apply(pending(), callback(), verify_successes=True)
    after, decision = apply(held, QueryEvidence("completed", "0", "ok", receipt_owner="ws_CO_other"))
    assert (after.status, after.reason) == ("unknown", Reason.RECEIPT_USED) and "ws_CO_other" in after.review
    assert decision.events == (EventType.PAYMENT_UNKNOWN,) and not is_open(after)
