"""The embedded offline model (an ADK `BaseLlm`) and its language understanding (intents.py)."""
from mpesa_agent.offline_model.model import (HELP_TEXT, MODEL_NAME, REFUSAL, OfflineModel,
                                             reply_to_result)

__all__ = ["HELP_TEXT", "MODEL_NAME", "REFUSAL", "OfflineModel", "reply_to_result"]
