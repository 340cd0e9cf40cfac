"""Wires the root agent: the two payment tools, the instruction, and the model choice."""
from google.adk.agents import Agent

from mpesa_agent.config import Settings
from mpesa_agent.offline_model import OfflineModel
from mpesa_agent.prompts import DESCRIPTION, INSTRUCTION
from mpesa_agent.tools import check_payment_status_realtime, send_instant_payment_with_tracking

settings = Settings.from_env()

root_agent = Agent(
    name="mpesa_agent",
    model=settings.agent_model if settings.use_gemini else OfflineModel(),
    description=DESCRIPTION,
    instruction=INSTRUCTION,
    tools=[send_instant_payment_with_tracking, check_payment_status_realtime],
)

__all__ = ["root_agent", "send_instant_payment_with_tracking", "check_payment_status_realtime"]
