"""The payment tools over MCP, driven by the `mcp` SDK's own client: over stdio (a child process, as a
desktop client starts it) and over streamable HTTP, against the simulator and the callback server."""
import asyncio
import json
import sys

import anyio
import pytest
import requests
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamablehttp_client

from harness import ROOT, Process, Stack, free_port

# anyio imports its subprocess module lazily, and pytest rewrites it then (anyio is a pytest
# plugin): after hypothesis has changed the recursion limit, CPython 3.11.7's ast.parse fails
# with "AST constructor recursion depth mismatch". Importing it here, at collection, avoids that.
anyio.open_process  # noqa: B018


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("mcp"), SIMULATOR_CALLBACK_DELAY="0.2", PAYMENT_WAIT_SECONDS="20") as stack:
        yield stack


def result_of(answer) -> dict:
    """A tool's answer as the client reads it: its structured content, or the JSON in its text."""
    if answer.structuredContent:
        return answer.structuredContent.get("result", answer.structuredContent)
    return json.loads(answer.content[0].text)


async def exercise(session: ClientSession, tag: int) -> None:
    """What any MCP client does: list the tools, send a payment, check it, and read refusals."""
    await session.initialize()
    tools = {tool.name: tool for tool in (await session.list_tools()).tools}
    send, status = tools["send_payment_request"], tools["check_payment_status"]
    assert (send.annotations.destructiveHint, send.annotations.readOnlyHint) == (True, False)
    assert (status.annotations.readOnlyHint, status.annotations.idempotentHint) == (True, True)
    assert send.inputSchema["properties"]["amount"]["type"] == "integer"
    assert set(send.inputSchema["required"]) == {"phone_number", "amount"}

    paid = await session.call_tool("send_payment_request", {"phone_number": "0712345678", "amount": 500,
                                                            "context": "lunch"})
    assert not paid.isError, paid.content
    outcome = result_of(paid)
    assert (outcome["status"], outcome["payment_status"]) == ("success", "completed")
    assert outcome["payment_details"]["MpesaReceiptNumber"]
    checked = result_of(await session.call_tool("check_payment_status",
                                                {"checkout_request_id": outcome["checkout_request_id"]}))
    assert checked["payment_status"] == "completed"

    again = await session.call_tool("send_payment_request", {"phone_number": "0712345678", "amount": 500})
    assert again.isError and "Send the same request again?" in again.content[0].text  # the 2-minute rule
    big = await session.call_tool("send_payment_request", {"phone_number": "0722000111", "amount": 20_000})
    assert big.isError and "confirm=true" in big.content[0].text
    bad = await session.call_tool("send_payment_request", {"phone_number": "020 2222 333", "amount": 100})
    assert bad.isError and "Not sent: '020 2222 333' is not a mobile number" in bad.content[0].text
    unknown = await session.call_tool("check_payment_status", {"checkout_request_id": "not an id"})
    assert unknown.isError

    bulk = tools["send_bulk_payment_request"]
    assert (bulk.annotations.destructiveHint, bulk.annotations.readOnlyHint) == (True, False)
    rows = "".join(f"07{tag}3{n:06d},{100 + n}\n" for n in range(3))
    unconfirmed = await session.call_tool("send_bulk_payment_request", {"rows": rows, "description": "chama"})
    assert unconfirmed.isError and "confirm=true" in unconfirmed.content[0].text
    invalid = await session.call_tool("send_bulk_payment_request", {"rows": rows + "0712,5\n", "confirm": True})
    assert invalid.isError and "line 4:" in invalid.content[0].text
    accepted = result_of(await session.call_tool("send_bulk_payment_request",
                                                 {"rows": rows, "description": "chama", "confirm": True}))
    assert (accepted["status"], accepted["item_count"], accepted["total_amount"]) == ("accepted", 3, 303)
    settled = result_of(await session.call_tool("check_bulk_payment_request",
                                                {"batch_id": accepted["batch_id"], "wait": True}))
    assert (settled["status"], settled["summary"]) == ("settled", "3 of 3 paid")
    retry = tools["retry_payment"]
    assert (retry.annotations.destructiveHint, retry.annotations.idempotentHint) == (True, True)
    refused = await session.call_tool("retry_payment", {"checkout_request_id": outcome["checkout_request_id"],
                                                        "confirm": True})
    assert refused.isError and "a retry would charge the customer twice" in refused.content[0].text
    failed = result_of(await session.call_tool("send_payment_request", {"phone_number": "0700001032", "amount": 30}))
    assert failed["payment_status"] == "failed"
    asked = await session.call_tool("retry_payment", {"checkout_request_id": failed["checkout_request_id"]})
    assert asked.isError and "call again with confirm=true" in asked.content[0].text
    retried = await session.call_tool("retry_payment", {"checkout_request_id": failed["checkout_request_id"],
                                                        "confirm": True})
    assert not retried.isError, retried.content
    answer = result_of(retried)
    assert (answer["retry_of"], answer["attempt"], answer["payment_status"]) == (failed["checkout_request_id"], 2, "failed")


def test_over_stdio_the_sdk_client_lists_sends_and_reads_refusals(stack):
    params = StdioServerParameters(command=sys.executable, args=["-m", "mpesa_agent.mcp"], env=stack.env, cwd=ROOT)

    async def run():
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await exercise(session, tag=1)
    asyncio.run(asyncio.wait_for(run(), 120))


def test_over_http_with_the_bearer_key(stack, tmp_path):
    port = free_port()
    server = Process(["-m", "mpesa_agent.mcp", "--http", "--port", str(port)], stack.env,
                     f"http://127.0.0.1:{port}/health", tmp_path / "mcp.log").start()
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        assert requests.post(url, json={}, timeout=5).status_code == 401
        assert requests.post(url, json={}, headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401

        async def run():
            headers = {"Authorization": f"Bearer {stack.api_key}"}
            async with streamablehttp_client(url, headers=headers) as (read, write, _), \
                    ClientSession(read, write) as session:
                await exercise(session, tag=2)
        asyncio.run(asyncio.wait_for(run(), 120))
    finally:
        server.stop()
