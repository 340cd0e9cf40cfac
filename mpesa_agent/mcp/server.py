"""The agent's payment tools for any MCP client, over stdio or streamable HTTP.

    python -m mpesa_agent.mcp                      # stdio, for desktop agent clients
    python -m mpesa_agent.mcp --http --port 8003   # streamable HTTP at /mcp, Bearer CALLBACK_API_KEY

The tools share one implementation with the ADK tools (`tools.Payments`): the same guardrails,
the same callback server, the same answers. A refusal (a bad phone or amount, the rate limit, a
repeat within 2 minutes, live money off) is an MCP tool error the client can read. A push above
PAYMENT_CONFIRM_ABOVE KES, the same push again within 2 minutes, and every retry need `confirm: true`:
the calling agent must ask its person first. A bulk request (many phones at once) always needs `confirm: true`.
"""
from __future__ import annotations

import argparse
import hmac
import sys

from mcp.server.fastmcp import FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from mcp.types import ToolAnnotations

from mpesa_agent.config import ConfigError, Settings, mode
from mpesa_agent.tools import Payments

DEFAULT_PORT = 8003
REFUSED = ("error", "needs_confirmation")
INSTRUCTIONS = ("M-Pesa STK Push payment requests for a Kenyan merchant: the phone's owner gets a prompt to pay "
                "the merchant's shortcode and approves it with their PIN. Send only a phone number and an amount "
                "the person stated; ask them to confirm before passing confirm=true.")


def make_server(payments: Payments) -> FastMCP:
    """An MCP server whose tools act through `payments`."""
    server = FastMCP("mpesa", instructions=INSTRUCTIONS)
    confirm_above = payments.settings.confirm_above

    @server.tool(annotations=ToolAnnotations(title="Request an M-Pesa payment (STK Push)", readOnlyHint=False,
                                             destructiveHint=True, idempotentHint=False, openWorldHint=True))
    async def send_payment_request(phone_number: str, amount: int, context: str = "",
                                   wait_for_completion: bool = True, confirm: bool = False) -> dict:
        """Ask a customer to pay by M-Pesa STK Push (a PIN prompt on their phone), then report the outcome.

        Args:
            phone_number: The customer's Kenyan mobile number, e.g. 0712345678 or +254712345678.
            amount: Whole Kenya shillings, at least 1.
            context: What the payment is for, e.g. "lunch".
            wait_for_completion: Wait (up to about 2 minutes) for the customer's answer before replying.
            confirm: True only after the person confirmed: needed above PAYMENT_CONFIRM_ABOVE KES and
                for the same request to the same phone again within 2 minutes.

        Returns the outcome: `status` (success, failed, timeout, pending or unknown), a `message`,
        `payment_status`, `checkout_request_id`, and `payment_details` on success.
        """
        if amount > confirm_above and not confirm:
            raise ToolError(f"Not sent: {amount:,} KSh is above {confirm_above:,} KSh. Ask the person to confirm "
                            "the phone and the amount, then call again with confirm=true.")
        result = await payments.send(phone_number, amount, context, wait_for_completion, confirm_repeat=confirm)
        if result.get("status") in REFUSED:
            raise ToolError(result["message"] + (" Call again with confirm=true once the person confirms."
                                                 if result["status"] == "needs_confirmation" else ""))
        return result

    @server.tool(annotations=ToolAnnotations(title="Retry a failed M-Pesa payment request", readOnlyHint=False,
                                             destructiveHint=True, idempotentHint=True, openWorldHint=True))
    async def retry_payment(checkout_request_id: str, wait_for_completion: bool = True, confirm: bool = False) -> dict:
        """Send a failed payment request again: a new STK Push for the same phone and amount, linked to the
        first (`retry_of`, `attempt`). Only a payment M-Pesa said failed is retried, never a paid, pending or
        unknown one; calling again for the same payment answers the retry already sent.

        Args:
            checkout_request_id: The failed payment's ID, e.g. "ws_CO_26112026125423123712345678".
            wait_for_completion: Wait (up to about 2 minutes) for the customer's answer to the new prompt.
            confirm: True only after the person agreed to a new prompt on the customer's phone.

        Returns the new payment's outcome, as send_payment_request does, with `retry_of` and `attempt`.
        """
        if not confirm:
            checked = await payments.retry_check(checkout_request_id)
            if checked["status"] != "retryable":
                raise ToolError(checked["message"])
            raise ToolError(f"{checked['message']} Ask the person, then call again with confirm=true.")
        result = await payments.retry(checkout_request_id, wait_for_completion)
        if result.get("status") == "error":
            raise ToolError(result["message"])
        return result

    @server.tool(annotations=ToolAnnotations(title="Check an M-Pesa payment", readOnlyHint=True,
                                             idempotentHint=True, openWorldHint=True))
    async def check_payment_status(checkout_request_id: str) -> dict:
        """A payment's current status, from the callback server's record (M-Pesa is asked only if it
        does not know the payment).

        Args:
            checkout_request_id: The payment's ID, e.g. "ws_CO_26112026125423123712345678".
        """
        result = await payments.status(checkout_request_id)
        if result.get("status") == "error":
            raise ToolError(result["message"])
        return result

    @server.tool(annotations=ToolAnnotations(title="Request M-Pesa payments from many people (bulk)",
                                             readOnlyHint=False, destructiveHint=True, idempotentHint=False,
                                             openWorldHint=True))
    async def send_bulk_payment_request(rows: str, description: str = "", confirm: bool = False) -> dict:
        """Ask several customers to pay at once: each phone on the list gets one M-Pesa prompt, sent by the
        callback server at a pace Daraja accepts. Every row is checked first; nothing is sent if one is bad.

        Args:
            rows: One customer per line as CSV: "phone,amount" or "phone,amount,reference" (header allowed).
            description: What the requests are for, e.g. "chama contribution".
            confirm: True only after the person saw the whole list and the total and confirmed: always needed.

        Returns `status` "accepted", `batch_id` (follow it with check_bulk_payment_request), `item_count`,
        `total_amount` and `summary`.
        """
        if not confirm:
            raise ToolError("Not sent: a bulk request prompts every phone on the list. Show the person the list and "
                            "the total, then call again with confirm=true.")
        result = await payments.bulk(rows, description)
        if result.get("status") == "error":
            raise ToolError(result["message"] + "".join(f"\n{problem}" for problem in result.get("problems") or []))
        return result

    @server.tool(annotations=ToolAnnotations(title="Check a bulk M-Pesa request", readOnlyHint=True,
                                             idempotentHint=True, openWorldHint=True))
    async def check_bulk_payment_request(batch_id: str, wait: bool = False) -> dict:
        """How a bulk request is going: how many paid, who has not paid and why (from the callback server).

        Args:
            batch_id: The bulk request's ID (bat_...).
            wait: Wait (up to about 2 minutes) until everyone has answered.
        """
        result = await payments.bulk_status(batch_id, wait)
        if result.get("status") == "error":
            raise ToolError(result["message"])
        return result

    return server


def with_bearer(app, api_key: str):
    """The streamable-HTTP app behind `Authorization: Bearer <key>` (constant-time compare)."""
    expected = f"Bearer {api_key}".encode()

    async def guarded(scope, receive, send):
        if scope["type"] == "http" and scope["path"] != "/health":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, expected):
                body = b'{"status": "error", "error": "missing or wrong API key: send Authorization: Bearer <CALLBACK_API_KEY>"}'
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": body})
                return
        await app(scope, receive, send)
    return guarded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpesa_agent.mcp", description=__doc__.split("\n")[0])
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return 1
    server = make_server(Payments(settings))
    print(f"M-Pesa MCP server. Mode: {mode(settings)}", file=sys.stderr)  # stdout is the protocol on stdio
    if not args.http:
        server.run("stdio")
        return 0
    if not settings.callback_api_key:
        print("Configuration error: CALLBACK_API_KEY is empty; the HTTP transport needs it as its Bearer key "
              "(start the callback server once: it generates one into .env.local)", file=sys.stderr)
        return 1
    import uvicorn
    from starlette.responses import JSONResponse

    @server.custom_route("/health", methods=["GET"])
    async def health(request):
        return JSONResponse({"status": "ok", "server": "mpesa-mcp"})

    print(f"MCP over streamable HTTP on http://{args.host}:{args.port}/mcp (Bearer CALLBACK_API_KEY)", file=sys.stderr)
    uvicorn.run(with_bearer(server.streamable_http_app(), settings.callback_api_key), host=args.host, port=args.port,
                log_level="warning")
    return 0
