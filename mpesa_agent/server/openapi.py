"""OpenAPI 3.1 description of the callback server's API, served at `GET /openapi.json`.

Built in code because the callback route's path comes from MPESA_CALLBACK_URL: the document names
the path prefix, and the secret token is a path parameter, never a value in it.
tests/test_openapi.py keeps it true: every route is described, and real answers validate.
"""
from __future__ import annotations

from typing import Any

from mpesa_agent.payments.bulk import MAX_DESCRIPTION, MAX_ITEMS, MAX_REFERENCE, OUTCOMES, BatchStatus, ItemState
from mpesa_agent.payments.callbacks import CHECKOUT_ID_PATTERN, MAX_TEXT_FIELD
from mpesa_agent.payments.record import TEXT_OR_NULL, json_schema as payment_schema
from mpesa_agent.payments.states import CallbackOutcome, EventType, State

STATES = [str(state) for state in State]
EVENT_TYPES = [str(type) for type in EventType]
CALLBACK_OUTCOMES = [str(outcome) for outcome in CallbackOutcome]
EXAMPLE_ID = "ws_CO_191220191020363925"

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "description": "Every error of the server except the callback route's 400/403 (CallbackRejected).",
        "required": ["status", "error"],
        "additionalProperties": False,
        "properties": {
            "status": {"const": "error"},
            "error": {"type": "string", "minLength": 1, "description": "What is wrong, in plain words."},
            "fields": {
                "description": "400 on register: each bad field and why; 409: the fields that differ.",
                "oneOf": [{"type": "object", "additionalProperties": {"type": "string"}},
                          {"type": "array", "items": {"type": "string"}}],
            },
            "checkout_request_id": {"type": "string", "description": "404: the id (first 100 characters)."},
            "batch_id": {"type": "string", "description": "404 on /payment/bulk/*: the batch id."},
            "problems": {"type": "array", "items": {"$ref": "#/components/schemas/RowProblem"},
                         "description": "400 on POST /payment/bulk: every bad row, with its line and why."},
            "db": {"type": "string", "description": "503: the database file."},
            "payment_status": {"enum": STATES, "description": "409 on retry: the payment's status."},
            "needs": {"const": "confirm_repeat",
                      "description": "409 on retry: the same push went out within PAYMENT_REPEAT_WINDOW."},
            "retry_after": {"type": "integer", "description": "409 / 429 on retry: seconds until it would go."},
            "retry": {"$ref": "#/components/schemas/Retry"},
            "sent": {"type": ["boolean", "null"],
                     "description": "502 on retry: false, nothing went out; null, it may have (not re-sent)."},
            "parameter": {"type": "string", "description": "400 on history and analytics: the wrong query parameter."},
        },
    },
    "Payment": payment_schema(),
    "PaymentDetails": {
        "type": "object",
        "required": ["Amount", "MpesaReceiptNumber", "TransactionDate", "PhoneNumber"],
        "additionalProperties": False,
        "properties": {
            "Amount": {"type": ["integer", "string", "null"], "description": "Whole KES as a number, else exact text."},
            "MpesaReceiptNumber": TEXT_OR_NULL,
            "TransactionDate": {"type": ["integer", "string", "null"]},
            "PhoneNumber": {"type": ["integer", "string", "null"]},
            "VerifiedBy": {"const": "STK Query"},
        },
    },
    "RegisterRequest": {
        "type": "object",
        "required": ["checkout_request_id", "phone_number", "amount"],
        "properties": {
            "checkout_request_id": {"type": "string", "pattern": CHECKOUT_ID_PATTERN.pattern,
                                    "description": "Daraja's CheckoutRequestID from the STK Push answer."},
            "phone_number": {"type": ["string", "integer"],
                             "description": "Any usual Kenyan form (0712345678, +254 712 345 678, ...)."},
            "amount": {"type": ["integer", "number", "string"],
                       "description": 'Whole KES, 1 to PAYMENT_MAX_AMOUNT: 500, "500", "1,500", 500.0.'},
            "description": {"type": ["string", "null"], "maxLength": MAX_TEXT_FIELD},
            "merchant_request_id": {"type": ["string", "null"], "maxLength": MAX_TEXT_FIELD},
        },
        "examples": [{"checkout_request_id": EXAMPLE_ID, "phone_number": "0712345678", "amount": 500,
                      "description": "lunch", "merchant_request_id": "29115-34620561-1"}],
    },
    "Registered": {
        "type": "object",
        "required": ["status", "created", "checkout_request_id", "payment_status", "payment"],
        "additionalProperties": False,
        "properties": {
            "status": {"const": "registered"},
            "created": {"type": "boolean", "description": "false: the same registration again (201 vs 200)."},
            "checkout_request_id": {"type": "string"},
            "payment_status": {"enum": STATES},
            "payment": {"$ref": "#/components/schemas/Payment"},
        },
    },
    "StkCallback": {
        "type": "object",
        "description": "Daraja's STK callback; keys it does not know are ignored.",
        "required": ["Body"],
        "properties": {"Body": {"type": "object", "required": ["stkCallback"], "properties": {"stkCallback": {
            "type": "object",
            "required": ["CheckoutRequestID", "ResultCode"],
            "properties": {
                "MerchantRequestID": {"type": "string"},
                "CheckoutRequestID": {"type": "string"},
                "ResultCode": {"type": ["integer", "string"]},
                "ResultDesc": {"type": "string"},
                "CallbackMetadata": {"type": "object", "properties": {"Item": {"type": "array", "items": {
                    "type": "object", "required": ["Name"], "properties": {"Name": {"type": "string"}}}}}},
            },
        }}}},
        "examples": [{"Body": {"stkCallback": {
            "MerchantRequestID": "29115-34620561-1", "CheckoutRequestID": EXAMPLE_ID, "ResultCode": 1032,
            "ResultDesc": "Request cancelled by user"}}}],
    },
    "CallbackAccepted": {
        "type": "object", "required": ["ResultCode", "ResultDesc"], "additionalProperties": False,
        "properties": {"ResultCode": {"const": 0}, "ResultDesc": {"const": "Accepted"}},
    },
    "CallbackRejected": {
        "type": "object", "required": ["ResultCode", "ResultDesc"], "additionalProperties": False,
        "description": "Daraja's shape, for people testing by hand (Daraja ignores the answer).",
        "properties": {"ResultCode": {"const": 1}, "ResultDesc": {"type": "string", "pattern": "^Rejected: ."}},
    },
    "Health": {
        "type": "object",
        "required": ["status", "db", "payments", "callbacks", "waiting", "rejected"],
        "additionalProperties": False,
        "properties": {
            "status": {"enum": ["ok", "degraded"], "description": "degraded (503): the database refuses writes."},
            "error": {"type": "string", "description": "degraded: what the database said."},
            "db": {"type": "string"},
            "payments": {"type": "object", "description": "Payments per status.",
                         "propertyNames": {"enum": STATES}, "additionalProperties": {"type": "integer"}},
            "callbacks": {"type": "object", "description": "Raw callbacks per outcome.",
                          "additionalProperties": {"type": "integer"}},
            "waiting": {"type": "integer", "minimum": 0, "description": "Long-poll waiters right now."},
            "rejected": {"type": "integer", "minimum": 0,
                         "description": "Refused callbacks (wrong token or source) since start; only a sample is stored."},
        },
    },
}


SCHEMAS.update({
    "Event": {
        "type": "object",
        "description": "One entry of the event log; never changed or deleted.",
        "required": ["id", "type", "checkout_request_id", "created_at", "data"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "integer", "minimum": 1, "description": "Strictly increasing: resume after it."},
            "type": {"enum": EVENT_TYPES},
            "checkout_request_id": {"type": ["string", "null"]},
            "created_at": {"type": "string", "format": "date-time"},
            "data": {
                "type": "object", "required": ["payment"],
                "description": "The payment as it is after the change (null for a parked callback and for "
                               "batch events); for callback events also what the callback said and what became "
                               "of it; for batch.* events the batch in brief.",
                "properties": {
                    "payment": {"oneOf": [{"$ref": "#/components/schemas/Payment"}, {"type": "null"}]},
                    "batch": {"$ref": "#/components/schemas/Batch"},
                    "callback": {"type": "object", "required": ["id", "outcome"], "properties": {
                        "id": {"type": "integer"}, "outcome": {"enum": CALLBACK_OUTCOMES},
                        "note": {"type": ["string", "null"]}, "result_code": {"type": "string"},
                        "result_desc": {"type": "string"}, "state": {"enum": STATES},
                        "metadata": {"type": "object", "description": "CallbackMetadata items by Name."}}},
                },
            },
        },
    },
    "EventPage": {
        "type": "object", "required": ["events", "next_after", "last_id"], "additionalProperties": False,
        "properties": {"events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                       "next_after": {"type": "integer", "minimum": 0,
                                      "description": "Pass as `after` for the next page."},
                       "last_id": {"type": "integer", "minimum": 0,
                                   "description": "The newest event's id in the whole log (0: none): "
                                                  "stream after it for new events only."}},
    },
    "PaymentList": {
        "type": "object", "required": ["payments"], "additionalProperties": False,
        "properties": {"payments": {"type": "array", "items": {"$ref": "#/components/schemas/Payment"}}},
    },
    "Retry": {
        "type": "object", "additionalProperties": False,
        "description": "A payment's retry (at most one per payment): planned, being sent, sent, unknown or skipped.",
        "required": ["retry_of", "attempt", "requested_by", "state", "due_at", "tries", "checkout_request_id", "note",
                     "created_at", "updated_at"],
        "properties": {
            "retry_of": {"type": "string"}, "attempt": {"type": "integer", "minimum": 2},
            "requested_by": {"enum": ["person", "auto"]},
            "state": {"enum": ["scheduled", "sending", "sent", "unknown", "skipped"],
                      "description": "unknown: M-Pesa's answer to the push was lost; it is never sent again."},
            "due_at": {"type": "string", "format": "date-time"},
            "tries": {"type": "integer", "minimum": 0},
            "checkout_request_id": {"type": ["string", "null"], "description": "The new push's, once sent."},
            "note": {"type": ["string", "null"]},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
        },
    },
    "RetryRequest": {
        "type": "object",
        "properties": {"confirm_repeat": {
            "type": "boolean", "default": False,
            "description": "true once the person confirmed a second prompt for the same amount within "
                           "PAYMENT_REPEAT_WINDOW (120 s)."}},
    },
    "Retried": {
        "type": "object", "additionalProperties": False,
        "required": ["status", "created", "message", "checkout_request_id", "retry_of", "attempt", "payment_status",
                     "payment"],
        "properties": {
            "status": {"const": "retried"},
            "created": {"type": "boolean", "description": "false: this payment's retry had already been sent (200)."},
            "message": {"type": "string"}, "checkout_request_id": {"type": "string", "description": "The new push's."},
            "retry_of": {"type": "string"}, "attempt": {"type": "integer", "minimum": 2},
            "payment_status": {"enum": STATES}, "payment": {"$ref": "#/components/schemas/Payment"},
        },
    },
    "Timeline": {
        "type": "object", "required": ["checkout_request_id", "events"], "additionalProperties": False,
        "properties": {"checkout_request_id": {"type": "string"},
                       "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}}},
    },
})


_COUNT = {"type": "integer", "minimum": 0}
_BUCKET = {"count": _COUNT, "amount": {**_COUNT, "description": "KES registered, every state."},
           **{state: _COUNT for state in STATES},
           "completed_amount": {**_COUNT, "description": "KES of completed payments: what was collected."}}
SCHEMAS.update({
    "HistoryPage": {
        "type": "object", "required": ["payments", "next_cursor"], "additionalProperties": False,
        "properties": {"payments": {"type": "array", "items": {"$ref": "#/components/schemas/Payment"}},
                       "next_cursor": {"type": ["string", "null"],
                                       "description": "Pass as `cursor` for the next (older) page; null: none."}},
    },
    "Analytics": {
        "type": "object", "additionalProperties": False,
        "required": ["since", "until", "timezone", "count", "amount", "by_status", "completion_rate",
                     "failure_reasons", "time_to_callback", "by_day", "by_hour"],
        "properties": {
            "since": {"type": "string", "format": "date-time"}, "until": {"type": "string", "format": "date-time"},
            "timezone": {"type": "string", "description": "Days and hours are Kenyan (EAT, UTC+3)."},
            "count": _COUNT, "amount": {**_COUNT, "description": "KES registered in the period, every state."},
            "by_status": {"type": "object", "required": STATES, "additionalProperties": False,
                          "properties": {state: {"type": "object", "required": ["count", "amount"],
                                                 "additionalProperties": False,
                                                 "properties": {"count": _COUNT, "amount": _COUNT}}
                                         for state in STATES}},
            "completion_rate": {"type": ["number", "null"], "minimum": 0, "maximum": 1,
                                "description": "completed / (completed + failed); null when neither."},
            "failure_reasons": {"type": "array", "description": "Most frequent first.", "items": {
                "type": "object", "required": ["reason", "result_codes", "count", "amount"],
                "additionalProperties": False,
                "properties": {"reason": {"type": "string", "description": "In words, e.g. Request cancelled by user."},
                               "result_codes": {"type": "array", "items": {"type": "string"}},
                               "count": _COUNT, "amount": _COUNT}}},
            "time_to_callback": {
                "type": "object", "required": ["count", "p50", "p90", "sampled"], "additionalProperties": False,
                "description": "Seconds from registration (right after the push) to the settling callback.",
                "properties": {"count": _COUNT, "p50": {"type": ["number", "null"], "minimum": 0},
                               "p90": {"type": ["number", "null"], "minimum": 0},
                               "sampled": {"type": "boolean",
                                           "description": "true: only the newest 50,000 callbacks of the period were used."}}},
            "by_day": {"type": "array", "description": "Every Kenyan day of the period, oldest first.", "items": {
                "type": "object", "required": ["date", *_BUCKET], "additionalProperties": False,
                "properties": {"date": {"type": "string", "format": "date"}, **_BUCKET}}},
            "by_hour": {"type": "array", "minItems": 24, "maxItems": 24,
                        "description": "Hours of the (Kenyan) day 0-23, summed over the period.", "items": {
                            "type": "object", "required": ["hour", *_BUCKET], "additionalProperties": False,
                            "properties": {"hour": {"type": "integer", "minimum": 0, "maximum": 23}, **_BUCKET}}},
        },
    },
})


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


_ENDPOINT_PROPERTIES = {
    "id": {"type": "string"},
    "url": {"type": "string", "format": "uri"},
    "events": {"type": "array", "minItems": 1, "items": {"enum": ["*", *EVENT_TYPES]},
               "description": 'The event types sent to it; ["*"] for all.'},
    "description": {"type": "string"},
    "enabled": {"type": "boolean"},
    "note": {"type": ["string", "null"], "description": "Why it was disabled (its last attempt failed)."},
    "created_at": {"type": "string", "format": "date-time"},
    "updated_at": {"type": "string", "format": "date-time"},
    "previous_secret_expires_at": {"type": ["string", "null"], "format": "date-time",
                                   "description": "After a rotation, the old secret also signs until then."},
}
_WEBHOOK_INPUT = {
    "url": {"type": "string", "maxLength": 2048, "description": "http(s); a loopback or private address is refused "
                                                                 "unless WEBHOOKS_ALLOW_PRIVATE_URLS=true."},
    "events": _ENDPOINT_PROPERTIES["events"],
    "description": {"type": "string", "maxLength": 500},
}
SCHEMAS.update({
    "WebhookEndpoint": {"type": "object", "required": list(_ENDPOINT_PROPERTIES), "additionalProperties": False,
                        "properties": _ENDPOINT_PROPERTIES},
    "WebhookEndpointWithSecret": {
        "type": "object", "required": [*_ENDPOINT_PROPERTIES, "secret"], "additionalProperties": False,
        "properties": {**_ENDPOINT_PROPERTIES, "secret": {
            "type": "string", "pattern": "^whsec_",
            "description": "Verify deliveries with it (any Standard Webhooks library); shown only here."}}},
    "WebhookList": {"type": "object", "required": ["webhooks"], "additionalProperties": False,
                    "properties": {"webhooks": {"type": "array", "items": _ref("WebhookEndpoint")}}},
    "NewWebhook": {"type": "object", "required": ["url", "events"], "additionalProperties": False,
                   "properties": _WEBHOOK_INPUT},
    "WebhookChanges": {"type": "object", "minProperties": 1, "additionalProperties": False,
                       "properties": {**_WEBHOOK_INPUT, "enabled": {
                           "type": "boolean", "description": "true resumes a disabled endpoint and its pending messages."}}},
    "Deliveries": {"type": "object", "required": ["endpoint_id", "deliveries"], "additionalProperties": False,
                   "properties": {"endpoint_id": {"type": "string"}, "deliveries": {"type": "array", "items": {
                       "type": "object", "description": "One attempt, newest first.",
                       "required": ["id", "event_id", "attempt", "attempted_at", "status_code", "latency_ms",
                                    "response", "success"],
                       "additionalProperties": False,
                       "properties": {
                           "id": {"type": "integer"}, "event_id": {"type": "integer"},
                           "attempt": {"type": "integer", "minimum": 1, "description": "1 for the first."},
                           "attempted_at": {"type": "string", "format": "date-time"},
                           "status_code": {"type": ["integer", "null"], "description": "null: no HTTP answer."},
                           "latency_ms": {"type": "number"},
                           "response": {"type": ["string", "null"],
                                        "description": "The start of the answer's body, or the error."},
                           "success": {"type": "boolean", "description": "Only a 2xx is a success."}}}}}},
    "Replay": {"oneOf": [
        {"type": "object", "required": ["event_id"], "additionalProperties": False,
         "properties": {"event_id": {"type": "integer", "description": "This event, whatever its type."}}},
        {"type": "object", "required": ["since"], "additionalProperties": False,
         "properties": {"since": {"type": "string", "format": "date-time"},
                        "until": {"type": "string", "format": "date-time", "description": "Default: now."}},
         "description": "Every event of a subscribed type created in [since, until)."}]},
    "Replayed": {"type": "object", "required": ["endpoint_id", "queued"], "additionalProperties": False,
                 "properties": {"endpoint_id": {"type": "string"}, "queued": {"type": "integer", "minimum": 0}}},
    "Deleted": {"type": "object", "required": ["deleted"], "additionalProperties": False,
                "properties": {"deleted": {"type": "string"}}},
    "WebhookMessage": {
        "type": "object", "required": ["type", "timestamp", "data"], "additionalProperties": False,
        "description": "What each endpoint receives (POST, Standard Webhooks headers webhook-id = the event's id, "
                       "webhook-timestamp, webhook-signature).",
        "properties": {"type": {"enum": EVENT_TYPES}, "timestamp": {"type": "string", "format": "date-time"},
                       "data": _ref("Event")}},
})


_OUTCOME_COUNT = {"type": "object", "required": ["count", "amount"], "additionalProperties": False,
                  "properties": {"count": {"type": "integer", "minimum": 0},
                                 "amount": {"type": "integer", "minimum": 0, "description": "Whole KES."}}}
_BATCH_PROPERTIES = {
    "id": {"type": "string", "pattern": "^bat_"},
    "description": {"type": "string"},
    "status": {"enum": [str(s) for s in BatchStatus],
               "description": "sending: items still queued; sent: every item pushed (or refused); cancelled."},
    "settled": {"type": "boolean", "description": "Every item has its final answer (nothing queued or pending)."},
    "summary": {"type": "string", "description": 'For people: "28 of 30 paid, 1 cancelled, 1 did not answer".'},
    "item_count": {"type": "integer", "minimum": 1},
    "total_amount": {"type": "integer", "minimum": 1, "description": "Whole KES asked for, all items."},
    "paid_amount": {"type": "integer", "minimum": 0},
    "by_outcome": {"type": "object", "required": list(OUTCOMES), "additionalProperties": False,
                   "properties": {outcome: _OUTCOME_COUNT for outcome in OUTCOMES},
                   "description": "Count and KES per outcome: the payment's state once sent, else the item's."},
    "throttled": {"type": "integer", "minimum": 0, "description": "Pushes Daraja throttled (each sent later, once)."},
    "note": {"type": ["string", "null"], "description": "Why sending is paused right now."},
    "created_at": {"type": "string", "format": "date-time"},
    "updated_at": {"type": "string", "format": "date-time"},
    "finished_at": {"type": ["string", "null"], "format": "date-time"},
    "settled_at": {"type": ["string", "null"], "format": "date-time"},
}
_ITEM = {"type": "object", "additionalProperties": False,
         "required": ["position", "line", "phone_number", "amount", "reference", "state", "outcome", "reason",
                      "checkout_request_id", "receipt"],
         "properties": {
             "position": {"type": "integer", "minimum": 1}, "line": {"type": "integer", "minimum": 1},
             "phone_number": {"type": "string", "pattern": r"^254\d{9}$"}, "amount": {"type": "integer", "minimum": 1},
             "reference": {"type": "string"}, "state": {"enum": [str(s) for s in ItemState]},
             "outcome": {"enum": list(OUTCOMES)},
             "reason": {"type": ["string", "null"], "description": "Why it is not paid, in words (null once paid)."},
             "checkout_request_id": {"type": ["string", "null"]}, "receipt": {"type": ["string", "null"]}}}
SCHEMAS.update({
    "RowProblem": {"type": "object", "required": ["line", "field", "reason", "value"], "additionalProperties": False,
                   "properties": {"line": {"type": "integer", "minimum": 1,
                                           "description": "The CSV line, or the item's position in `items` (from 1)."},
                                  "field": {"type": ["string", "null"]}, "reason": {"type": "string"},
                                  "value": {"type": ["string", "null"], "description": "What was given (cut to 40)."}}},
    "BulkRequest": {
        "type": "object", "required": ["items"], "additionalProperties": False,
        "properties": {
            "description": {"type": "string", "maxLength": MAX_DESCRIPTION,
                            "description": "What the batch is for; an item without a reference uses it."},
            "items": {"type": "array", "minItems": 1, "maxItems": MAX_ITEMS, "items": {
                "type": "object", "required": ["phone_number", "amount"], "properties": {
                    "phone_number": {"type": ["string", "integer"]},
                    "amount": {"type": ["integer", "number", "string"], "description": "Whole KES."},
                    "reference": {"type": "string", "maxLength": MAX_REFERENCE,
                                  "description": "Shown to the customer (its first 12 letters and digits)."}}}},
            "skip_invalid": {"type": "boolean", "default": False,
                             "description": "Send the valid rows and skip the bad ones (listed in `skipped`)."}},
        "examples": [{"description": "chama", "items": [{"phone_number": "0712345678", "amount": 500},
                                                        {"phone_number": "0722000000", "amount": 500,
                                                         "reference": "June"}]}]},
    "BulkCsvForm": {
        "type": "object", "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary",
                                "description": "phone,amount[,reference] lines, UTF-8, header optional."},
                       "description": {"type": "string", "maxLength": MAX_DESCRIPTION},
                       "skip_invalid": {"enum": ["true", "false"]}}},
    "Batch": {"type": "object", "required": list(_BATCH_PROPERTIES), "additionalProperties": False,
              "properties": _BATCH_PROPERTIES},
    "BatchReport": {
        "type": "object", "additionalProperties": False,
        "required": [*_BATCH_PROPERTIES, "not_paid", "failed", "skipped"],
        "properties": {**_BATCH_PROPERTIES,
                       "not_paid": {"type": "array", "items": _ITEM, "description": "Every item not paid (yet)."},
                       "failed": {"type": "array", "items": _ITEM,
                                  "description": "Failed, refused (not_sent) or unknown items, each with why."},
                       "skipped": {"type": "array", "items": {"$ref": "#/components/schemas/RowProblem"}},
                       "items": {"type": "array", "items": _ITEM, "description": "With ?items=true: every item."}}},
    "BulkAccepted": {"type": "object", "required": ["status", "batch"], "additionalProperties": False,
                     "properties": {"status": {"const": "accepted"}, "batch": {"$ref": "#/components/schemas/BatchReport"}}},
    "BatchList": {"type": "object", "required": ["batches"], "additionalProperties": False,
                  "properties": {"batches": {"type": "array", "items": {"$ref": "#/components/schemas/Batch"}}}},
    "BatchCancelled": {
        "type": "object", "required": ["status", "cancelled", "batch"], "additionalProperties": False,
        "properties": {"status": {"enum": [str(s) for s in BatchStatus]},
                       "cancelled": {"type": "integer", "minimum": 0,
                                     "description": "Items cancelled now (0: every item was already sent)."},
                       "batch": {"$ref": "#/components/schemas/BatchReport"}}},
})


def _notification(status: str, payment_status: str, **extra: Any) -> dict:
    """One notification shape (the seed's JSON) plus the stored record."""
    properties = {"status": {"const": status}, "message": {"type": "string", "minLength": 1},
                  "payment_status": {"const": payment_status}, "checkout_request_id": {"type": "string"},
                  **extra, "note": {"type": "string", "description": "How the outcome was learnt, if not plainly."},
                  "attempts": {"type": "array", "items": {"$ref": "#/components/schemas/Payment"},
                               "description": "Status of a payment in a retry chain: every attempt, first to last."},
                  "retry": {"$ref": "#/components/schemas/Retry"},
                  "payment": {"$ref": "#/components/schemas/Payment"}}
    required = ["status", "message", "payment_status", "checkout_request_id", *extra, "payment"]
    return {"type": "object", "required": required, "additionalProperties": False, "properties": properties}


SCHEMAS.update({
    "Success": _notification("success", "completed", payment_details={"$ref": "#/components/schemas/PaymentDetails"}),
    "Failed": _notification("failed", "failed", error_message={"type": "string"}),
    "Unknown": _notification("unknown", "unknown", reason={"type": "string"}),
    "Pending": _notification("pending", "pending"),
    "Timeout": _notification("timeout", "pending"),
})


def _json(description: str, schema: dict, **extra: Any) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}, **extra}


def _error(description: str) -> dict:
    return _json(description, _ref("Error"))


def _body(name: str) -> dict:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


UNAUTHORIZED = _json("Missing or wrong API key.", _ref("Error"), headers={
    "WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}})
CHECKOUT_ID = {"name": "checkout_request_id", "in": "path", "required": True, "schema": {"type": "string"},
               "description": "The CheckoutRequestID given at registration.", "example": EXAMPLE_ID}
BEARER = [{"bearerAuth": []}]
AFTER = {"name": "after", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0, "default": 0},
         "description": "Only events with a larger id."}
LIMIT = {"name": "limit", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}
EVENT_TYPE = {"name": "type", "in": "query", "required": False, "schema": {"enum": EVENT_TYPES},
              "description": "Only events of this type."}
EVENT_CHECKOUT_ID = {"name": "checkout_request_id", "in": "query", "required": False,
                     "schema": {"type": "string", "pattern": CHECKOUT_ID_PATTERN.pattern},
                     "description": "Only this payment's events."}


NO_BATCH = _error("No batch with this id.")
BATCH_ID = {"name": "batch_id", "in": "path", "required": True, "schema": {"type": "string"},
            "example": "bat_3f2a9c0d1e4b5a67"}
BULK_PATHS = {
    "/payment/bulk": {
        "post": {"operationId": "bulk_create",
                 "summary": "Ask many people to pay: every row is validated first, then a durable job sends "
                            "the STK Pushes at BULK_PUSHES_PER_SECOND.",
                 "description": "JSON `items`, or a CSV (`phone,amount[,reference]`, header optional) as a "
                                "text/csv body (`?description=&skip_invalid=`) or a multipart file. Nothing is "
                                "stored if a row is bad, unless skip_invalid. Each item is pushed at most once.",
                 "security": BEARER,
                 "parameters": [{"name": "description", "in": "query", "required": False,
                                 "schema": {"type": "string", "maxLength": MAX_DESCRIPTION},
                                 "description": "For a text/csv body."},
                                {"name": "skip_invalid", "in": "query", "required": False,
                                 "schema": {"enum": ["true", "false"]}, "description": "For a text/csv body."}],
                 "requestBody": {"required": True, "content": {
                     "application/json": {"schema": _ref("BulkRequest")},
                     "text/csv": {"schema": {"type": "string"}, "example": "phone,amount,reference\n0712345678,500,June\n"},
                     "multipart/form-data": {"schema": _ref("BulkCsvForm")}}},
                 "responses": {"201": _json("Accepted: the batch, its items queued.", _ref("BulkAccepted"),
                                            headers={"Location": {"schema": {"type": "string"},
                                                                  "description": "/payment/bulk/{id}"}}),
                               "400": _error("Bad rows (`problems`: each line and why), or a request wrong as a whole."),
                               "401": UNAUTHORIZED,
                               "413": _error("The body is over 1 MiB.")}},
        "get": {"operationId": "bulk_list", "summary": "The newest batches, newest first, in brief.",
                "security": BEARER,
                "parameters": [{"name": "limit", "in": "query", "required": False,
                                "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}}],
                "responses": {"200": _json("The batches.", _ref("BatchList")), "400": _error("limit is not valid."),
                              "401": UNAUTHORIZED}},
    },
    "/payment/bulk/{batch_id}": {"get": {
        "operationId": "bulk_report",
        "summary": "Progress and outcome: counts and KES by outcome, who has not paid, who failed and why.",
        "security": BEARER,
        "parameters": [BATCH_ID, {"name": "items", "in": "query", "required": False,
                                  "schema": {"enum": ["true", "false"], "default": "false"},
                                  "description": "true: every item too."}],
        "responses": {"200": _json("The batch.", _ref("BatchReport")), "400": _error("items is not true or false."),
                      "401": UNAUTHORIZED, "404": NO_BATCH}}},
    "/payment/bulk/{batch_id}.csv": {"get": {
        "operationId": "bulk_report_csv", "summary": "Every item with its outcome, as CSV.", "security": BEARER,
        "parameters": [BATCH_ID],
        "responses": {"200": {"description": "position,line,phone_number,amount,reference,outcome,reason,"
                                             "checkout_request_id,receipt; one line per item.",
                              "content": {"text/csv": {"schema": {"type": "string"}}}},
                      "401": UNAUTHORIZED, "404": NO_BATCH}}},
    "/payment/bulk/{batch_id}/cancel": {"post": {
        "operationId": "bulk_cancel",
        "summary": "Stop the pushes not sent yet (an item being sent right now still goes out).",
        "security": BEARER, "parameters": [BATCH_ID],
        "responses": {"200": _json("Cancelled (or nothing left to cancel).", _ref("BatchCancelled")),
                      "401": UNAUTHORIZED, "404": NO_BATCH}}},
}


def _query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


SINCE = _query("since", {"type": "string"}, "From this time (inclusive): 2026-11-29 (a Kenyan day's start), "
                                            "2026-11-29T10:00:00Z, or a time with an offset (none: Kenyan time).")
UNTIL = _query("until", {"type": "string"}, "Before this time; a date alone includes that whole day.")
HISTORY_FILTERS = [
    _query("status", {"type": "string"}, "pending, completed, failed, unknown, or unpaid (pending, failed and "
                                         "unknown); several comma-separated."),
    _query("phone", {"type": "string"}, "The customer's number in any Kenyan form (0712345678, +254 712 345 678)."),
    _query("min_amount", {"type": "integer", "minimum": 1, "maximum": 10**12}, "Whole KES, inclusive."),
    _query("max_amount", {"type": "integer", "minimum": 1, "maximum": 10**12}, "Whole KES, inclusive."),
    SINCE, UNTIL,
    _query("receipt", {"type": "string", "maxLength": 30}, "An M-Pesa receipt, e.g. UKYPST28TK."),
    _query("q", {"type": "string", "maxLength": 100}, "Text in the description, any case."),
]
BAD_PARAMETER = _error("A query parameter is wrong; `parameter` names it.")
HISTORY_PATHS = {
    "/payment/history": {"get": {
        "operationId": "history",
        "summary": "Payments matching every filter, newest first, a page at a time (keyset: fast at any depth).",
        "security": BEARER,
        "parameters": [*HISTORY_FILTERS,
                       _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}, "Page size."),
                       _query("cursor", {"type": "string"}, "`next_cursor` of the previous page, unchanged.")],
        "responses": {"200": _json("A page.", _ref("HistoryPage")), "400": BAD_PARAMETER, "401": UNAUTHORIZED},
    }},
    "/payment/history.csv": {"get": {
        "operationId": "history_csv",
        "summary": "Every payment matching the filters as CSV (a header line, then one line per payment), streamed.",
        "security": BEARER,
        "parameters": HISTORY_FILTERS,
        "responses": {"200": {"description": "The CSV file; its columns are the Payment fields.",
                              "content": {"text/csv": {"schema": {"type": "string"}}}},
                      "400": BAD_PARAMETER, "401": UNAUTHORIZED},
    }},
    "/payment/analytics": {"get": {
        "operationId": "analytics",
        "summary": "Counts and KES by state, completion rate, failure reasons, time to callback, by day and hour.",
        "description": "Over payments created in [since, until); default: the 30 days before now; at most 400 days.",
        "security": BEARER,
        "parameters": [SINCE, UNTIL],
        "responses": {"200": _json("The figures.", _ref("Analytics")), "400": BAD_PARAMETER, "401": UNAUTHORIZED},
    }},
}


NO_ENDPOINT = _error("No webhook endpoint with this id.")
ENDPOINT_ID = {"name": "endpoint_id", "in": "path", "required": True, "schema": {"type": "string"}}
WEBHOOK_PATHS = {
    "/webhooks": {
        "post": {"operationId": "webhook_create", "summary": "Add an endpoint; the answer holds its secret, once.",
                 "security": BEARER, "requestBody": _body("NewWebhook"),
                 "responses": {"201": _json("Added.", _ref("WebhookEndpointWithSecret")),
                               "400": _error("A field is wrong (`fields` names each), e.g. a private URL."),
                               "401": UNAUTHORIZED}},
        "get": {"operationId": "webhook_list", "summary": "Every endpoint (without secrets).", "security": BEARER,
                "responses": {"200": _json("The endpoints.", _ref("WebhookList")), "401": UNAUTHORIZED}},
    },
    "/webhooks/{endpoint_id}": {
        "patch": {"operationId": "webhook_update", "summary": "Change url, events, description or enabled.",
                  "security": BEARER, "parameters": [ENDPOINT_ID], "requestBody": _body("WebhookChanges"),
                  "responses": {"200": _json("Changed.", _ref("WebhookEndpoint")),
                                "400": _error("A field is wrong, or nothing to change."),
                                "401": UNAUTHORIZED, "404": NO_ENDPOINT}},
        "delete": {"operationId": "webhook_delete", "summary": "Remove an endpoint, its queue and its attempts.",
                   "security": BEARER, "parameters": [ENDPOINT_ID],
                   "responses": {"200": _json("Removed.", _ref("Deleted")), "401": UNAUTHORIZED,
                                 "404": NO_ENDPOINT}},
    },
    "/webhooks/{endpoint_id}/rotate-secret": {"post": {
        "operationId": "webhook_rotate_secret", "summary": "A new secret; the old one keeps signing for 24 h.",
        "security": BEARER, "parameters": [ENDPOINT_ID],
        "responses": {"200": _json("The endpoint with its new secret.", _ref("WebhookEndpointWithSecret")),
                      "401": UNAUTHORIZED, "404": NO_ENDPOINT}}},
    "/webhooks/{endpoint_id}/deliveries": {"get": {
        "operationId": "webhook_deliveries", "summary": "Every delivery attempt, newest first.",
        "security": BEARER, "parameters": [ENDPOINT_ID, {
            "name": "limit", "in": "query", "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}],
        "responses": {"200": _json("The attempts.", _ref("Deliveries")), "400": _error("limit is not valid."),
                      "401": UNAUTHORIZED, "404": NO_ENDPOINT}}},
    "/webhooks/{endpoint_id}/replay": {"post": {
        "operationId": "webhook_replay", "summary": "Send one event, or every event of a time range, again.",
        "security": BEARER, "parameters": [ENDPOINT_ID], "requestBody": _body("Replay"),
        "responses": {"202": _json("Queued for delivery.", _ref("Replayed")),
                      "400": _error("Neither event_id nor since, or no such event."),
                      "401": UNAUTHORIZED, "404": NO_ENDPOINT}}},
}


def openapi_spec(callback_prefix: str = "/callback") -> dict:
    """The document for a server whose callbacks arrive at `<callback_prefix>/<token>`."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "M-Pesa callback server",
            "version": "1.0.0",
            "description": "Receives Daraja's STK Push callbacks, serves the /payment/* API and the "
                           "event log and webhooks (see docs/callback_server.md). /payment/*, /events* and /webhooks* need "
                           "`Authorization: Bearer <CALLBACK_API_KEY>`. Every answer is JSON, but the "
                           "event stream's.",
        },
        "paths": {
            "/payment/register": {"post": {
                "operationId": "register",
                "summary": "Track a payment by its CheckoutRequestID; the same registration again is safe.",
                "security": BEARER,
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("RegisterRequest")}}},
                "responses": {
                    "201": _json("Registered.", _ref("Registered")),
                    "200": _json("Already registered the same way (no change).", _ref("Registered")),
                    "400": _error("Not a JSON object, or a field is missing or wrong (`fields` names each)."),
                    "401": UNAUTHORIZED,
                    "409": _error("The id is registered with a different phone, amount, description or "
                                  "merchant id (`fields` lists them)."),
                    "413": _error("The body is over 64 KiB."),
                },
            }},
            "/payment/status/{checkout_request_id}": {"get": {
                "operationId": "status",
                "summary": "The notification for the payment's current state, with the stored record.",
                "security": BEARER,
                "parameters": [CHECKOUT_ID],
                "responses": {
                    "200": _json("The payment.", {"oneOf": [_ref(n) for n in ("Success", "Failed", "Unknown",
                                                                                 "Pending")]}),
                    "401": UNAUTHORIZED,
                    "404": _error("No payment registered with this id."),
                },
            }},
            "/payment/wait/{checkout_request_id}": {"get": {
                "operationId": "wait",
                "summary": "Long-poll: answers as soon as the payment leaves pending, else at the timeout.",
                "security": BEARER,
                "parameters": [CHECKOUT_ID, {
                    "name": "timeout", "in": "query", "required": False,
                    "schema": {"type": "number", "default": 120},
                    "description": "Seconds to wait, clamped to 0-300; not a finite number is 400."}],
                "responses": {
                    "200": _json("Settled, or still pending at the timeout (`status` timeout).",
                                 {"oneOf": [_ref(n) for n in ("Success", "Failed", "Unknown", "Timeout")]}),
                    "400": _error("timeout is not a number."),
                    "401": UNAUTHORIZED,
                    "404": _error("The id is still not registered at the end of the wait."),
                },
            }},
            f"{callback_prefix}/{{token}}": {"post": {
                "operationId": "callback",
                "summary": "Daraja's STK callback: stored, then applied; 200 only after the commit.",
                "security": [],
                "parameters": [{"name": "token", "in": "path", "required": True, "schema": {"type": "string"},
                                "description": "The secret last segment of MPESA_CALLBACK_URL."}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("StkCallback")}}},
                "responses": {
                    "200": _json("Stored and applied (or parked, a duplicate or a conflict).", _ref("CallbackAccepted")),
                    "400": _json("Not an STK callback; stored as invalid.", _ref("CallbackRejected")),
                    "403": _json("Source not in TRUSTED_CALLBACK_IPS; stored as rejected.", _ref("CallbackRejected")),
                    "404": _error("Wrong token (stored as rejected), the same answer as any unknown path."),
                    "413": _error("The body is over 64 KiB; not stored."),
                    "500": _error("A bug: the body was not stored; Daraja did not get Accepted."),
                    "503": _error("The database is unavailable (restarting, disk full): the body was not stored; "
                                  "Daraja did not get Accepted. Retry-After: 1."),
                },
            }},
            "/payments": {"get": {
                "operationId": "payments",
                "summary": "The newest payments, newest first (optionally in one status).",
                "security": BEARER,
                "parameters": [{"name": "status", "in": "query", "required": False, "schema": {"enum": STATES}},
                               {"name": "limit", "in": "query", "required": False,
                                "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 20}}],
                "responses": {
                    "200": _json("The payments.", _ref("PaymentList")),
                    "400": _error("status or limit is not valid."),
                    "401": UNAUTHORIZED,
                },
            }},
            "/events": {"get": {
                "operationId": "events",
                "summary": "The event log, oldest first, after an id; page with `next_after`.",
                "security": BEARER,
                "parameters": [AFTER, LIMIT, EVENT_TYPE, EVENT_CHECKOUT_ID],
                "responses": {
                    "200": _json("A page of events (empty when there is nothing after `after`).", _ref("EventPage")),
                    "400": _error("A filter is not valid."),
                    "401": UNAUTHORIZED,
                },
            }},
            "/events/stream": {"get": {
                "operationId": "events_stream",
                "summary": "Server-Sent Events: every event after Last-Event-ID (or `after`), then each new one.",
                "description": "Each event is `id:` (its id), `event:` (its type), `data:` (the Event as JSON). "
                               "A comment line every 15 s keeps proxies from closing the stream. Reconnect "
                               "with the Last-Event-ID header: no event is skipped or repeated.",
                "security": BEARER,
                "parameters": [{"name": "Last-Event-ID", "in": "header", "required": False,
                                "schema": {"type": "string", "pattern": "^[0-9]*$"},
                                "description": "Resume after this event id (wins over `after`)."},
                               AFTER, EVENT_TYPE, EVENT_CHECKOUT_ID, {
                                   "name": "timeout", "in": "query", "required": False,
                                   "schema": {"type": "number", "minimum": 0},
                                   "description": "End the stream after this many seconds (the client then "
                                                  "reconnects with Last-Event-ID); none: it stays open."}],
                "responses": {
                    "200": {"description": "The stream; it ends only after `timeout` seconds, if given.",
                            "content": {"text/event-stream": {"schema": {
                                "type": "object", "required": ["event", "data", "id"],
                                "properties": {"event": {"enum": EVENT_TYPES},
                                               "id": {"type": "string", "pattern": "^[0-9]+$"},
                                               "data": {"type": "string", "contentMediaType": "application/json",
                                                        "contentSchema": _ref("Event")}}}}}},
                    "400": _error("A filter is not valid."),
                    "401": UNAUTHORIZED,
                },
            }},
            "/payment/{checkout_request_id}/retry": {"post": {
                "operationId": "retry",
                "summary": "A new STK Push for a failed payment, linked to it (retry_of, attempt); at most one per "
                           "payment: the same retry again answers the first one's (200).",
                "description": "Allowed only when M-Pesa said the payment did not go through (failed, with nothing "
                               "for review). Completed, pending and unknown payments are refused (409): the "
                               "customer may have paid. The per-phone rate limit (429) and the repeat window "
                               "(409 with needs=confirm_repeat) apply.",
                "security": BEARER,
                "parameters": [CHECKOUT_ID],
                "requestBody": {"required": False, "content": {"application/json": {"schema": _ref("RetryRequest")}}},
                "responses": {
                    "201": _json("Sent: the new payment, pending.", _ref("Retried")),
                    "200": _json("Already retried: the retry sent before.", _ref("Retried")),
                    "400": _error("The body is not a JSON object, or confirm_repeat is not a boolean."),
                    "401": UNAUTHORIZED,
                    "404": _error("No payment registered with this id."),
                    "409": _error("Not retryable (completed, pending, unknown, for review; or its retry's answer "
                                  "was lost), or a repeat within PAYMENT_REPEAT_WINDOW without confirm_repeat."),
                    "429": _json("The phone's rate limit.", _ref("Error"), headers={
                        "Retry-After": {"description": "Seconds.", "schema": {"type": "integer"}}}),
                    "502": _error("M-Pesa refused the push (sent false) or its answer was lost (sent null)."),
                },
            }},
            "/payment/{checkout_request_id}/events": {"get": {
                "operationId": "timeline",
                "summary": "One payment's events, oldest first: its timeline.",
                "security": BEARER,
                "parameters": [CHECKOUT_ID],
                "responses": {
                    "200": _json("The payment's events.", _ref("Timeline")),
                    "401": UNAUTHORIZED,
                    "404": _error("No payment and no event with this id."),
                },
            }},
            **BULK_PATHS,
            **HISTORY_PATHS,
            **WEBHOOK_PATHS,
            "/health": {"get": {
                "operationId": "health",
                "summary": "Proves the database answers; counts payments and callbacks. No key needed.",
                "security": [],
                "responses": {
                    "200": _json("OK.", _ref("Health")),
                    "503": _json("The database cannot be read (an Error), or refuses writes (status degraded).",
                                 {"oneOf": [_ref("Error"), _ref("Health")]}),
                },
            }},
            "/openapi.json": {"get": {
                "operationId": "openapi",
                "summary": "This document.",
                "security": [],
                "responses": {"200": _json("OpenAPI 3.1.", {"type": "object", "required": ["openapi", "paths"]})},
            }},
        },
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "CALLBACK_API_KEY (from .env.local)."}},
            "schemas": SCHEMAS,
        },
    }
