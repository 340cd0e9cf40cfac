"""The payment domain, shared by the agent, the callback server and the tests; it does no I/O.

states.py (states and reasons), phones.py (phone and money rules), callbacks.py (what a Daraja
callback says), lifecycle.py (`decide`: the life of a payment as one pure function), record.py
(the payment record, written once) and notifications.py (the brief's notification JSON).
"""
