"""Safaricom's Daraja API (M-Pesa Express): the client, and the error tree it raises (errors.py)."""
from mpesa_agent.daraja.client import DarajaClient, StkPushAck, StkQueryResult

__all__ = ["DarajaClient", "StkPushAck", "StkQueryResult"]
