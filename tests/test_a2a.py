"""The agent over A2A, driven by the `a2a-sdk` client: its card, and a payment asked in words."""
import asyncio
import inspect
import uuid

import pytest
import requests
from a2a.client import create_client
from a2a.types import Message, Part, Role, SendMessageRequest, TaskState

from harness import Process, Stack, free_port


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    folder = tmp_path_factory.mktemp("a2a")
    with Stack(folder, SIMULATOR_CALLBACK_DELAY="0.2", PAYMENT_WAIT_SECONDS="20") as stack:
        port = free_port()
        server = Process(["-m", "mpesa_agent.a2a_server", "--port", str(port)], stack.env,
                         f"http://127.0.0.1:{port}/.well-known/agent-card.json", folder / "a2a.log").start(timeout=60)
        yield f"http://127.0.0.1:{port}"
        server.stop()


def ask(url: str, text: str) -> tuple[list[str], int]:
    """Send `text` as a new conversation; (every text the agent answered, the task's last state)."""
    async def run():
        client = create_client(url)
        client = await client if inspect.isawaitable(client) else client
        request = SendMessageRequest(message=Message(message_id=uuid.uuid4().hex, role=Role.ROLE_USER,
                                                     parts=[Part(text=text)]))
        texts, state = [], None
        async for response in client.send_message(request):
            if response.HasField("artifact_update"):
                texts += [part.text for part in response.artifact_update.artifact.parts if part.text]
            if response.HasField("status_update"):
                state = response.status_update.status.state
            if response.HasField("task"):
                state = response.task.status.state
                texts += [part.text for artifact in response.task.artifacts for part in artifact.parts if part.text]
        return texts, state
    return asyncio.run(asyncio.wait_for(run(), 90))


def test_the_agent_card_describes_the_agent_and_its_payment_skills(agent):
    card = requests.get(f"{agent}/.well-known/agent-card.json", timeout=10).json()
    assert card["name"] == "mpesa_agent" and "M-Pesa" in card["description"]
    skills = {skill["name"] for skill in card["skills"]}
    assert {"send_instant_payment_with_tracking", "check_payment_status_realtime"} <= skills


def test_another_agent_asks_for_a_payment_in_words_and_gets_the_outcome(agent):
    texts, state = ask(agent, "Send 500 to 0712345678 for lunch")
    assert state == TaskState.TASK_STATE_COMPLETED
    assert any(text.startswith("✅ 0712345678 paid 500 KSh for lunch. Receipt ") for text in texts), texts


def test_what_is_missing_is_asked_not_guessed(agent):
    texts, _ = ask(agent, "tuma pesa kwa 0712345678")
    assert texts and "How much" in " ".join(texts) and "paid" not in " ".join(texts)
