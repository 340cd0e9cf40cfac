"""When a push may be sent again, written once for the agent's tools and the callback server.

`check_push` is the per-phone guard every push passes (the agent's send tool, the server's retry
endpoint and its automatic retries): at most `count` pushes to one phone per `window` seconds, and
no identical push (same phone, same amount) within `repeat_window` seconds unless the person
confirmed it, because Daraja declines it anyway (ResultCode 17) or the customer gets two prompts.

`retry_refusal` says why a payment may not be retried. A retry is a new STK Push for the same
phone and amount, so it is allowed only when the first one certainly did not take money:
- `completed`: it was paid; a retry would charge twice;
- `pending`: the customer may still pay it;
- `unknown`: nobody knows whether money moved (a lost push answer, an unrecognised result code,
  no final answer from STK Query): the reconciler's STK Query settles it; once a query says it
  failed, the payment is `failed` and may be retried;
- `failed` with a review note: contradicting evidence arrived (say, a success callback after the
  failure), so the customer may have paid;
- `failed` otherwise: M-Pesa said it did not go through (a callback, or a verified STK Query).

`auto_retryable` is narrower: only failures where asking again can help without annoying or
harming the customer (see AUTO_RETRY_CODES), and never past the maximum number of attempts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from mpesa_agent.payments.record import Payment
from mpesa_agent.payments.states import COMPLETED, FAILED, PENDING, UNKNOWN, normalize_code

REPEAT_WINDOW = 120  # Daraja's rule 17: same amount to the same phone within 2 minutes
# The customer never saw or never answered the prompt: asking again is what a shopkeeper would do.
NO_ANSWER_CODES = frozenset({
    "1037",  # no response from the customer / phone unreachable
    "1019",  # the prompt expired before the PIN was entered
    "1036",  # the prompt was not delivered (SMSC ACK timeout)
})
# Automatic retry: the no-answer codes, and M-Pesa being busy for a moment.
AUTO_RETRY_CODES = NO_ANSWER_CODES | frozenset({
    "26",    # M-Pesa system busy
    "1001",  # another transaction in progress on this phone (Daraja: retry after 1-3 minutes)
})
# Never automatic, deliberately: 1031/1032 (the customer cancelled: their answer), 1 (insufficient
# balance: a new prompt minutes later rarely finds money, and nags), 2001 (wrong PIN: prompting again
# walks the customer towards a locked PIN, 8006), 8006, the limit rules 2/3/4/8, 17 (an identical
# request was already sent), 1025/9999 and 2028/SFC_IC0003 (our request or setup is wrong: it would
# fail the same way). A person can still retry any failed payment by hand.


@dataclass(frozen=True)
class PushCheck:
    """The guard's verdict: `ok`, `rate_limited` (wait `wait` seconds) or `repeat` (`ago` seconds ago)."""

    verdict: str
    wait: int = 0  # whole seconds, rounded up
    ago: int = 0
    recent: int = 0  # pushes to this phone within the rate window

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"


def check_push(history: Iterable[tuple[float, int]], amount: int, now: float, *, count: int, window: float,
               repeat_window: float = REPEAT_WINDOW, confirmed: bool = False) -> PushCheck:
    """May one more push of `amount` go to a phone whose earlier pushes were `history` ((time, amount))?"""
    pushes = [(at, sent) for at, sent in history if now - at <= max(window, repeat_window)]
    in_window = sorted(at for at, _ in pushes if now - at <= window)
    if len(in_window) >= count:
        return PushCheck("rate_limited", wait=int(window - (now - in_window[-count])) + 1, recent=len(in_window))
    repeats = [at for at, sent in pushes if sent == amount and now - at <= repeat_window]
    if repeats and not confirmed:
        last = max(repeats)
        return PushCheck("repeat", ago=int(now - last), wait=int(repeat_window - (now - last)) + 1,
                         recent=len(in_window))
    return PushCheck("ok", recent=len(in_window))


def retry_refusal(payment: Payment) -> str | None:
    """Why `payment` may not be retried, in words for a person; None when it may."""
    if payment.status == COMPLETED:
        receipt = f" (receipt {payment.receipt})" if payment.receipt else ""
        return f"it was paid{receipt}: a retry would charge the customer twice"
    if payment.status == PENDING:
        return ("it is still waiting for the customer's answer: they may still pay it, so a retry now could "
                "charge twice; wait for the outcome")
    if payment.status == UNKNOWN:
        return ("its outcome is unknown, so the customer may have paid: wait for the reconciler's STK Query "
                "(or check the M-Pesa statement); once M-Pesa says it failed it can be retried")
    if payment.status == FAILED and payment.review:
        return f"it failed, but evidence that it may have been paid needs review first: {payment.review}"
    if payment.status != FAILED:
        return f"its status is {payment.status}"
    return None


def auto_retryable(payment: Payment, max_retries: int) -> bool:
    """Worth an automatic retry: a failure that trying again can fix, within `max_retries` retries in its chain."""
    return (retry_refusal(payment) is None and normalize_code(payment.result_code) in AUTO_RETRY_CODES
            and payment.attempt <= max_retries)

