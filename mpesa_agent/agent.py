"""Wires the root agent: the two payment tools on the process's Payments, the instruction, and the model choice."""
from google.adk.agents import Agent

from mpesa_agent.config import Settings
from mpesa_agent.offline_model import OfflineModel
from mpesa_agent.prompts import DESCRIPTION, INSTRUCTION
from mpesa_agent.tools import Payments, make_tools, make_wait_tool

settings = Settings.from_env()
payments = Payments(settings)
send_instant_payment_with_tracking, check_payment_status_realtime = make_tools(payments)
wait_for_payment = make_wait_tool(payments)

root_agent = Agent(
    name="mpesa_agent",
    model=settings.agent_model if settings.use_gemini else OfflineModel(),
    description=DESCRIPTION,
    instruction=INSTRUCTION,
    tools=[send_instant_payment_with_tracking, check_payment_status_realtime, wait_for_payment],
)

__all__ = ["root_agent", "send_instant_payment_with_tracking", "check_payment_status_realtime"]
