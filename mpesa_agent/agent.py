"""Wires the root agent: the payment, bulk and history tools on the process's Payments, the instruction, and the
model choice."""
from google.adk.agents import Agent

from mpesa_agent.config import Settings
from mpesa_agent.offline_model import OfflineModel
from mpesa_agent.prompts import DESCRIPTION, INSTRUCTION
from mpesa_agent.tools import Payments, agent_tools, explain_approval

settings = Settings.from_env()
payments = Payments(settings)
tools = agent_tools(payments)  # pushes and retries behind ADK's tool confirmation where the person must approve
send_instant_payment_with_tracking, check_payment_status_realtime, wait_for_payment = tools[0].func, *tools[1:3]

root_agent = Agent(
    name="mpesa_agent",
    model=settings.agent_model if settings.use_gemini else OfflineModel(),
    description=DESCRIPTION,
    instruction=INSTRUCTION,
    tools=tools,
    after_tool_callback=explain_approval,  # the approve / reject step says what would be sent, in words
)

__all__ = ["root_agent", "send_instant_payment_with_tracking", "check_payment_status_realtime"]
