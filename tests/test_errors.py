import pytest

from mpesa_agent.daraja.errors import (
    AuthenticationError, DarajaError, DarajaServerError, InvalidRequestError, OutcomeUnknownError,
    RequestRejectedError, SubscriberLockedError, ThrottledError, TransportError, error_class,
)


@pytest.mark.parametrize("cls, parent", [
    (InvalidRequestError, DarajaError), (RequestRejectedError, DarajaError), (AuthenticationError, DarajaError),
    (ThrottledError, DarajaError), (SubscriberLockedError, DarajaError), (DarajaServerError, DarajaError),
    (TransportError, DarajaError), (OutcomeUnknownError, TransportError),
])
def test_hierarchy_is_the_drawn_tree(cls, parent):
    assert cls.__mro__[1] is parent


@pytest.mark.parametrize("status, code, message, cls", [
    (400, "400.002.02", "Bad Request - Invalid BusinessShortCode", RequestRejectedError),
    (400, "400.002.05", "Invalid Request Payload", RequestRejectedError),
    (400, "", "", RequestRejectedError),
    (400, "400.008.01", "Invalid Authentication passed", AuthenticationError),
    (400, "400.008.02", "Invalid grant type passed", AuthenticationError),
    (404, "404.001.03", "Invalid Access Token", AuthenticationError),
    (401, "", "", AuthenticationError),
    (500, "500.001.1001", "Wrong credentials", AuthenticationError),
    (500, "500.003.02", "Spike Arrest Violation", ThrottledError),
    (500, "500.003.03", "Quota Violation", ThrottledError),
    (429, "", "", ThrottledError),
    (500, "500.001.1001", "Unable to lock subscriber, a transaction is already in process for the current subscriber",
     SubscriberLockedError),
    (500, "500.001.1001", "Merchant does not exist", RequestRejectedError),
    (500, "500.001.1001", "The transaction is being processed", DarajaServerError),
    (503, "", "", DarajaServerError),
    (None, None, None, DarajaServerError),
])
def test_error_class_maps_status_code_and_message(status, code, message, cls):
    assert error_class(status, code, message) is cls


@pytest.mark.parametrize("message, field", [
    ("Bad Request - Invalid BusinessShortCode", "BusinessShortCode"),
    ("Bad Request - Invalid PhoneNumber", "PhoneNumber"),
    ("Bad Request - Invalid CallBackURL", "CallBackURL"),
    ("Invalid Request Payload", None),
    ("Merchant does not exist", None),
])
def test_rejected_request_names_the_field(message, field):
    assert RequestRejectedError(error_code="400.002.02", error_message=message).field == field


def test_str_is_readable_and_keeps_daraja_details():
    error = RequestRejectedError(error_code="400.002.02", error_message="Bad Request - Invalid BusinessShortCode",
                                 request_id="1c5b-4ba8-815c-ac45c57a3db01495926", http_status=400)
    assert str(error) == ("Daraja rejected the request: Bad Request - Invalid BusinessShortCode "
                          "(errorCode 400.002.02, HTTP 400, requestId 1c5b-4ba8-815c-ac45c57a3db01495926)")
    assert (error.error_code, error.http_status) == ("400.002.02", 400)


def test_str_without_details_is_just_the_message():
    error = InvalidRequestError("Amount must be at least 1 KES, got 0", field="amount")
    assert str(error) == "Amount must be at least 1 KES, got 0"
    assert error.field == "amount" and error.error_code is None


def test_outcome_unknown_tells_the_caller_not_to_resend():
    text = str(OutcomeUnknownError(error_message="ReadTimeout"))
    assert "Do not send it again" in text and "query" in text and "ReadTimeout" in text
