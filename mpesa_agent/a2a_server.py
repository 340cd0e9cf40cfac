"""The agent over A2A (ADK's own support, `to_a2a`), for other agents to send it payment requests.

    python -m mpesa_agent.a2a_server [--host 127.0.0.1] [--port 8004]

Its agent card (`/.well-known/agent-card.json`) describes the agent and its skills (the payment
tools); `START_A2A=1 ./start.sh` starts it beside the chat. The agent, its tools and guardrails
are the ones `adk web` serves.
"""
from __future__ import annotations

import argparse
import sys
import warnings

DEFAULT_PORT = 8004


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpesa_agent.a2a_server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=r"\[EXPERIMENTAL\]")  # ADK marks its A2A layer experimental
    import uvicorn
    from google.adk.a2a.utils.agent_to_a2a import to_a2a

    from mpesa_agent.agent import root_agent, settings
    from mpesa_agent.config import mode

    print(f"M-Pesa agent over A2A on http://{args.host}:{args.port} (card: /.well-known/agent-card.json). "
          f"Mode: {mode(settings)}", file=sys.stderr, flush=True)
    uvicorn.run(to_a2a(root_agent, host=args.host, port=args.port), host=args.host, port=args.port,
                log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
