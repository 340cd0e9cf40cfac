"""The payment record, written once: the store's SQL columns, the API's JSON and the OpenAPI
schema are all derived from `Payment`'s fields (server/store.py, server/openapi.py).

Each field carries its SQL definition, its JSON schema, whether code may update it, and the value a
new registration starts with. Registration input is checked here too (`validate_registration`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from mpesa_agent.payments.callbacks import CHECKOUT_ID_PATTERN, MAX_TEXT_FIELD
from mpesa_agent.payments.phones import InvalidAmount, InvalidPhoneNumber, normalize_phone, parse_amount
from mpesa_agent.payments.states import PENDING, SettledBy, State, Verification

TEXT_OR_NULL = {"type": ["string", "null"]}
TIME = {"type": "string", "format": "date-time"}
TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time"}


def _column(sql: str, schema: dict, *, updatable: bool = True, initial: Any = None, **kwargs):
    """A Payment field: its SQL definition, JSON schema, whether it may change, its value when new."""
    return field(metadata={"sql": sql, "schema": schema, "updatable": updatable, "initial": initial}, **kwargs)


def _enum_check(name: str, enum: type[State] | type[SettledBy] | type[Verification]) -> str:
    return f"CHECK ({name} IN ({', '.join(repr(str(v)) for v in enum)}))"


@dataclass(frozen=True)
class Payment:
    """One payment request: what was registered, and what M-Pesa's evidence made of it."""

    checkout_request_id: str = _column("TEXT PRIMARY KEY", {"type": "string"}, updatable=False)
    merchant_request_id: str | None = _column("TEXT", TEXT_OR_NULL)
    phone_number: str = _column("TEXT NOT NULL", {"type": "string", "pattern": r"^254\d{9}$",
                                                  "description": "MSISDN 2547XXXXXXXX"}, updatable=False)
    amount: int = _column("INTEGER NOT NULL CHECK (amount >= 1)",
                          {"type": "integer", "minimum": 1, "description": "Whole KES, as registered."},
                          updatable=False)
    description: str = _column("TEXT NOT NULL DEFAULT ''", {"type": "string"}, updatable=False)
    status: str = _column(f"TEXT NOT NULL DEFAULT 'pending' {_enum_check('status', State)}",
                          {"enum": [str(s) for s in State]}, initial=PENDING)
    result_code: str | None = _column("TEXT", TEXT_OR_NULL)
    result_desc: str | None = _column("TEXT", TEXT_OR_NULL)
    reason: str | None = _column("TEXT", TEXT_OR_NULL)
    receipt: str | None = _column("TEXT", TEXT_OR_NULL)
    transaction_date: str | None = _column("TEXT", TEXT_OR_NULL)
    paid_phone: str | None = _column("TEXT", TEXT_OR_NULL)
    paid_amount: str | None = _column("TEXT", {"type": ["string", "null"],
                                               "description": "Exact decimal text from the callback, e.g. '1.00'."})
    settled_by: str | None = _column("TEXT", {"enum": [*map(str, SettledBy), None]})
    review: str | None = _column("TEXT", {"type": ["string", "null"],
                                          "description": "Why a person should look at this payment."})
    callback_id: int | None = _column("INTEGER REFERENCES callbacks (id)", {"type": ["integer", "null"]})
    created_at: str = _column("TEXT NOT NULL", TIME, updatable=False)
    updated_at: str = _column("TEXT NOT NULL", TIME, updatable=False)  # set by every update
    settled_at: str | None = _column("TEXT", TIME_OR_NULL)
    query_attempts: int = _column("INTEGER NOT NULL DEFAULT 0", {
        "type": "integer", "minimum": 0, "description": "STK Queries the reconciler sent."}, initial=0, default=0)
    last_query_at: str | None = _column("TEXT", TIME_OR_NULL, default=None)
    last_query_result: str | None = _column("TEXT", TEXT_OR_NULL, default=None)
    verification: str | None = _column("TEXT", {"enum": [*map(str, Verification), None]}, default=None)
    batch_id: str | None = _column("TEXT", {"type": ["string", "null"],
                                            "description": "The bulk request (POST /payment/bulk) it belongs to."},
                                   updatable=False, default=None)
    # Retries (issue 13): a retry is a new payment linked to the one it retries; `attempt` counts the chain.
    retry_of: str | None = _column("TEXT", {"type": ["string", "null"], "description":
                                            "The payment this one retries (a new STK Push for the same phone and amount)."},
                                   updatable=False, default=None)
    attempt: int = _column("INTEGER NOT NULL DEFAULT 1", {"type": "integer", "minimum": 1, "description":
                                                           "1 for a first request, 2 for its retry, and so on."},
                           updatable=False, initial=1, default=1)
    retried_as: str | None = _column("TEXT", {"type": ["string", "null"], "description":
                                              "The payment that retried this one, once it was sent."}, default=None)

    @classmethod
    def new(cls, checkout_request_id: str, phone_number: str, amount: int, description: str,
            merchant_request_id: str | None, now: str, batch_id: str | None = None, **initial) -> "Payment":
        """A payment as registration writes it (every other field at its initial value, or `initial`'s)."""
        values = {f.name: f.metadata["initial"] for f in FIELDS}
        values.update(initial)
        values.update(checkout_request_id=checkout_request_id, phone_number=phone_number, amount=int(amount),
                      description=description, merchant_request_id=merchant_request_id,
                      created_at=now, updated_at=now, batch_id=batch_id)
        return cls(**values)

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in FIELD_NAMES}  # asdict() deep-copies: 10x slower


FIELDS = fields(Payment)
FIELD_NAMES = tuple(f.name for f in FIELDS)
UPDATABLE = frozenset(f.name for f in FIELDS if f.metadata["updatable"])


def json_schema() -> dict:
    """The OpenAPI schema of a payment as the API sends it."""
    return {"type": "object", "description": "The stored payment record.", "required": list(FIELD_NAMES),
            "additionalProperties": False, "properties": {f.name: f.metadata["schema"] for f in FIELDS}}


class InvalidRegistration(ValueError):
    """`problems` maps each bad field to what is wrong with it."""

    def __init__(self, problems: dict[str, str]):
        self.problems = problems
        super().__init__("; ".join(f"{name}: {why}" for name, why in problems.items()))


def validate_registration(checkout_request_id: Any, phone_number: Any, amount: Any, description: Any,
                          merchant_request_id: Any, max_amount: int | None = None
                          ) -> tuple[str, str, int, str, str | None]:
    """(checkout id, MSISDN, whole KES, description, merchant id), or `InvalidRegistration`."""
    problems: dict[str, str] = {}
    checkout_id = checkout_request_id.strip() if isinstance(checkout_request_id, str) else None
    if checkout_id is None or not CHECKOUT_ID_PATTERN.match(checkout_id):
        problems["checkout_request_id"] = ("must be the CheckoutRequestID from the STK Push answer: "
                                           "1-100 letters, digits, _ . : or -")
    msisdn = None
    if phone_number is not None and (isinstance(phone_number, bool) or not isinstance(phone_number, (str, int))):
        problems["phone_number"] = "must be text like 0712345678 or 254712345678"
    elif len(str(phone_number)) > 30:
        problems["phone_number"] = "is too long to be a phone number"
    else:
        try:
            msisdn = normalize_phone(phone_number)
        except InvalidPhoneNumber as exc:
            problems["phone_number"] = str(exc)
    whole = None
    if isinstance(amount, (list, dict)):
        problems["amount"] = "must be a number of KES"
    else:
        try:
            whole = parse_amount(amount, maximum=max_amount)
        except InvalidAmount as exc:
            problems["amount"] = str(exc)
    if description is None:
        description = ""
    if not isinstance(description, str):
        problems["description"] = "must be text"
    else:
        description = " ".join(description.split())
        if len(description) > MAX_TEXT_FIELD:
            problems["description"] = f"must be at most {MAX_TEXT_FIELD} characters"
    if merchant_request_id is not None and (not isinstance(merchant_request_id, str)
                                            or len(merchant_request_id.strip()) > MAX_TEXT_FIELD):
        problems["merchant_request_id"] = f"must be text of at most {MAX_TEXT_FIELD} characters"
    if problems:
        raise InvalidRegistration(problems)
    return checkout_id, msisdn, whole, description, (merchant_request_id or "").strip() or None
