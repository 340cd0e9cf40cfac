"""Wires the root agent: the payment, bulk and history tools on the process's Payments, the instruction, and the
model choice."""
from google.adk.agents import Agent

from mpesa_agent.config import Settings
from mpesa_agent.offline_model import OfflineModel
from mpesa_agent.prompts import DESCRIPTION, INSTRUCTION
from mpesa_agent.tools import Payments, agent_tools

settings = Settings.from_env()
payments = Payments(settings)
tools = agent_tools(payments)  # the push behind ADK's confirmation above PAYMENT_CONFIRM_ABOVE
send_instant_payment_with_tracking, check_payment_status_realtime, wait_for_payment = tools[0].func, *tools[1:3]

root_agent = Agent(
    name="mpesa_agent",
    model=settings.agent_model if settings.use_gemini else OfflineModel(),
    description=DESCRIPTION,
    instruction=INSTRUCTION,
    tools=tools,
)

__all__ = ["root_agent", "send_instant_payment_with_tracking", "check_payment_status_realtime"]
