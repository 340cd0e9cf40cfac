"""What happens to a push: magic numbers, result wording, and the control API's rules."""
from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field, fields

from .checks import msisdn, new_request_id

QUICK = 0.1  # seconds before a magic number's customer acts

# Magic numbers: (result code, delay in seconds; None = the configured callback delay).
MAGIC_NUMBERS = {
    "254700000000": (0, QUICK),
    "254700000001": (1, QUICK),
    "254700001032": (1032, QUICK),
    "254700002001": (2001, QUICK),
    "254700001037": (1037, None),
    "254700000020": (0, 20.0),
    "254708374149": (1037, None),  # the real sandbox's test MSISDN never enters a PIN
}

CALLBACK_DESCS = {
    "0": "The service request is processed successfully.",
    "1": "The balance is insufficient for the transaction.",
    "3": "Declined due to limit rule: greater than the maximum transaction amount.",
    "17": "Rule limited.",
    "26": "System busy. The service request is rejected.",
    "1001": "Unable to lock subscriber, a transaction is already in process for the current subscriber",
    "1019": "Transaction has expired",
    "1025": "An error occurred while sending a push request",
    "1031": "Request cancelled by user",
    "1032": "Request cancelled by user",
    "1036": "SMSC ACK timeout.",
    "1037": "No response from user.",
    "2001": "The initiator information is invalid.",
    "2028": "The request is not permitted according to product assignment",
    "8006": "The security credential is locked",
    "9999": "An error occurred while sending a push request.",
    "SFC_IC0003": "Operator does not exist",
}
# STK Query words some codes differently from the callback (seen in the sandbox, 2026).
QUERY_DESCS = {**CALLBACK_DESCS, "1037": "DS timeout user cannot be reached"}
FALLBACK_DESC = "The transaction could not be completed."

ERROR_PRESETS = {
    "spike_arrest": {"http_status": 500, "errorCode": "500.003.02", "errorMessage": "Spike Arrest Violation"},
    "quota_violation": {"http_status": 500, "errorCode": "500.003.03", "errorMessage": "Quota Violation"},
    "subscriber_locked": {
        "http_status": 500, "errorCode": "500.001.1001",
        "errorMessage": "Unable to lock subscriber, a transaction is already in process for the current subscriber"},
    "bad_gateway": {"http_status": 502, "raw": "<html><body><h1>502 Bad Gateway</h1></body></html>"},
}
_RESULT_CODE = re.compile(r"[A-Za-z0-9_]{1,20}")


@dataclass(frozen=True)
class Plan:
    """What happens to one push: the customer's answer and any misbehaviour asked for."""

    result_code: int | str
    result_desc: str | None = None
    delay: float = 0.0
    duplicate: int = 1
    lose_callback: bool = False
    callback_before_ack: bool = False
    ack_delay: float = 0.0
    push_error: dict | None = None
    query_error: dict | None = None
    query_error_times: int | None = None
    rule_id: int | None = None


@dataclass
class Rule:
    id: int
    scope: str
    phone: str | None
    count: int | None  # pushes left; None = until reset
    effects: dict
    max_per_second: float | None = None  # a rate rule: applies only to pushes over this rate (Daraja's spike arrest)
    admitted: deque = field(default_factory=deque, repr=False)  # when pushes under the rate went through

    def to_json(self) -> dict:
        rate = {} if self.max_per_second is None else {"max_per_second": self.max_per_second}
        return {"id": self.id, "scope": self.scope, "phone": self.phone, "count": self.count, **rate, **self.effects}

    def admits(self, now: float) -> bool:
        """A rate rule lets this push through (and counts it) while fewer than max_per_second went
        through in the last second."""
        while self.admitted and now - self.admitted[0] >= 1.0:
            self.admitted.popleft()
        if len(self.admitted) < self.max_per_second:
            self.admitted.append(now)
            return True
        return False



def error_answer(spec: dict) -> tuple[int, dict | str]:
    """The (status, body) of a push_error / query_error: Daraja's envelope, or a raw text body."""
    if "raw" in spec:
        return spec["http_status"], spec["raw"]
    return spec["http_status"], {"requestId": new_request_id(), "errorCode": spec["errorCode"],
                                 "errorMessage": spec["errorMessage"]}


def valid_result_code(value: object) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and bool(_RESULT_CODE.fullmatch(value)))


_SCOPES = {"phone": None, "next": 1, "all": None}  # scope -> default count
_PLAN_FIELDS = {f.name for f in fields(Plan)} - {"rule_id"}


def parse_rule(spec: object, rule_id: int) -> Rule:
    """A Rule from control-API JSON; ValueError names the first wrong field."""
    if not isinstance(spec, dict):
        raise ValueError("send a JSON object")
    unknown = set(spec) - _PLAN_FIELDS - {"scope", "phone", "count", "max_per_second"}
    if unknown:
        raise ValueError(f"unknown fields: {', '.join(sorted(unknown))}")
    phone = None
    if spec.get("phone") is not None:
        phone = msisdn(spec["phone"])
        if phone is None:
            raise ValueError("phone must be a Kenyan mobile number such as 0712345678 or 254712345678")
    scope = spec.get("scope", "phone" if phone else None)
    if scope not in _SCOPES:
        raise ValueError('scope must be "phone" (with a phone), "next" or "all"')
    if scope == "phone" and not phone:
        raise ValueError('scope "phone" needs a phone')
    if scope == "all" and phone:
        raise ValueError('scope "all" takes no phone; use scope "phone"')
    count = spec.get("count", _SCOPES[scope])
    if count is not None and not _whole(count, 1):
        raise ValueError("count must be a whole number >= 1")
    effects = {}
    for name, value in spec.items():
        if name in _PLAN_FIELDS:
            effects[name] = _effect(name, value)
    rate = spec.get("max_per_second")
    if rate is not None:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 10_000:
            raise ValueError("max_per_second must be a number of pushes per second above 0")
        effects.setdefault("push_error", dict(ERROR_PRESETS["spike_arrest"]))  # what Daraja answers over its rate
    if not effects:
        raise ValueError(f"say what should happen: one of {', '.join(sorted(_PLAN_FIELDS))}")
    return Rule(rule_id, scope, phone, count, effects, rate)


def _effect(name: str, value: object):
    if name == "result_code":
        if not valid_result_code(value):
            raise ValueError("result_code must be a number or a short code like SFC_IC0003")
    elif name == "result_desc":
        if not isinstance(value, str) or not value:
            raise ValueError("result_desc must be a non-empty string")
    elif name in ("delay", "ack_delay"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 3600:
            raise ValueError(f"{name} must be seconds between 0 and 3600")
        value = float(value)
    elif name in ("duplicate", "query_error_times"):
        if not _whole(value, 1):
            raise ValueError(f"{name} must be a whole number >= 1")
    elif name in ("lose_callback", "callback_before_ack"):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
    else:  # push_error, query_error
        value = _error_spec(name, value)
    return value


def _error_spec(name: str, value: object) -> dict:
    if isinstance(value, str):
        if value not in ERROR_PRESETS:
            raise ValueError(f"{name} must be an object or one of {', '.join(ERROR_PRESETS)}")
        return dict(ERROR_PRESETS[value])
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be an object or one of {', '.join(ERROR_PRESETS)}")
    allowed = {"http_status", "errorCode", "errorMessage", "raw"} | ({"processed"} if name == "push_error" else set())
    unknown = set(value) - allowed
    if unknown:
        raise ValueError(f"{name} has unknown fields: {', '.join(sorted(unknown))}")
    spec = {"http_status": value.get("http_status", 500)}
    if not _whole(spec["http_status"], 400) or spec["http_status"] > 599:
        raise ValueError(f"{name}.http_status must be 400..599")
    if "raw" in value:
        if not isinstance(value["raw"], str):
            raise ValueError(f"{name}.raw must be a string")
        spec["raw"] = value["raw"]
    else:
        if not isinstance(value.get("errorCode"), str) or not isinstance(value.get("errorMessage", ""), str):
            raise ValueError(f"{name} needs errorCode (and errorMessage) strings, or raw")
        spec.update(errorCode=value["errorCode"], errorMessage=value.get("errorMessage", ""))
    if "processed" in value:
        if not isinstance(value["processed"], bool):
            raise ValueError("push_error.processed must be true or false")
        spec["processed"] = value["processed"]
    return spec


def _whole(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum
