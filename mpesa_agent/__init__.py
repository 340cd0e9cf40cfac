"""M-Pesa STK Push agent with real-time completion tracking.

ADK finds `root_agent` in `mpesa_agent.agent`; this package stays import-light so that the
simulator and the callback server start without loading ADK.
"""
import importlib


def __getattr__(name: str):
    # `adk eval` imports this file and reads its `agent` attribute: load ADK only then.
    if name == "agent":
        return importlib.import_module(f"{__name__}.agent")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
