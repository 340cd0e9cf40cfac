"""A faithful offline Daraja (M-Pesa Express): OAuth, STK Push, STK Query and real callbacks.

Run it with `python -m mpesa_agent.simulator`; docs/simulator.md has the outcomes and the
control API. It imports nothing from the Daraja client it is there to test.
"""
from .app import create_app, main

__all__ = ["create_app", "main"]
