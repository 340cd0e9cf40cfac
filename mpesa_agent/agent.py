"""Wires the root agent: the two payment tools, the instruction, and the model choice."""
from google.adk.agents import Agent

from .config import Settings
from .offline_model import OfflineModel
from .prompts import DESCRIPTION, INSTRUCTION
from .tools import check_payment_status_realtime, send_instant_payment_with_tracking

settings = Settings.from_env()

root_agent = Agent(
    name="mpesa_agent",
    model=settings.agent_model if settings.use_gemini else OfflineModel(),
    description=DESCRIPTION,
    instruction=INSTRUCTION,
    tools=[send_instant_payment_with_tracking, check_payment_status_realtime],
)

__all__ = ["root_agent", "send_instant_payment_with_tracking", "check_payment_status_realtime"]
