"""M-Pesa STK Push agent with real-time completion tracking.

ADK finds `root_agent` in `mpesa_agent.agent`; this package stays import-light so that the
simulator and the callback server start without loading ADK.
"""
