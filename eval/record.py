"""Record eval cases from a real run: `python -m eval.record CASES.json [--write]`.

CASES.json is `{"eval_id": ["first message", "second message", ...], ...}`; a case whose person rejects an
ADK confirmation step is `{"eval_id": {"messages": [...], "confirmation_answers": [false]}}` (the answers
in order; past them the person approves, as tests/test_eval.py replays it). Each conversation runs
through the real agent (offline model) against a real simulator and callback server, one case after
another on one Payments, as tests/test_eval.py replays them. It prints every turn's tool calls and
reply; with --write it adds the cases to mpesa_agent.evalset.json (replacing any with the same id).
Read what it printed before you commit it: a recorded mistake is a mistake the eval then protects.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from harness import Stack
from mpesa_agent.tools import Payments, QuerySchedule
from tests.conversation import APP, chat

EVAL_SET = Path(__file__).resolve().parent / "mpesa_agent.evalset.json"


ANSWERS = "confirmation_answers"  # session_input.state: the person's answers to ADK's confirmation steps


def as_case(eval_id: str, messages: list[str], turns, answers: list[bool] = ()) -> dict:
    return {
        "eval_id": eval_id,
        "conversation": [{
            "invocation_id": f"{eval_id}-{n}",
            "user_content": {"role": "user", "parts": [{"text": message}]},
            "final_response": {"role": "model", "parts": [{"text": turn.reply}]},
            "intermediate_data": {"tool_uses": [{"name": name, "args": args} for name, args in turn.trajectory],
                                  "tool_responses": [], "intermediate_responses": []},
        } for n, (message, turn) in enumerate(zip(messages, turns), start=1)],
        "session_input": {"app_name": APP, "user_id": "eval_user", "state": {ANSWERS: list(answers)} if answers else {}},
    }


async def record(payments: Payments, cases: dict[str, list[str]]) -> list[dict]:
    recorded = []
    for eval_id, spec in cases.items():
        messages, answers = (spec, []) if isinstance(spec, list) else (spec["messages"], spec.get(ANSWERS, []))
        turns = await chat(payments, messages, answers)
        print(f"== {eval_id}")
        for message, turn in zip(messages, turns):
            print(f"  > {message}")
            for name, args in turn.trajectory:
                print(f"    {name} {json.dumps(args, ensure_ascii=False)}")
            print("    " + turn.reply.replace("\n", "\n    "))
            for hint in turn.hints:
                print("    [confirmation] " + hint.replace("\n", "\n    "))
        recorded.append(as_case(eval_id, messages, turns, answers))
    return recorded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", type=Path)
    parser.add_argument("--write", action="store_true", help="add the cases to the eval set")
    options = parser.parse_args()
    cases = json.loads(options.cases.read_text())
    with tempfile.TemporaryDirectory() as folder, Stack(Path(folder), PAYMENT_WAIT_SECONDS="8",
                                                        BULK_PUSHES_PER_SECOND="20") as stack:
        recorded = asyncio.run(record(Payments(stack.settings, schedule=QuerySchedule(first=0.3, every=0.3)), cases))
    if options.write:
        data = json.loads(EVAL_SET.read_text())
        new = {case["eval_id"]: case for case in recorded}  # a re-recorded case keeps its place (replay order)
        kept = [new.pop(c["eval_id"], c) for c in data["eval_cases"]]
        data["eval_cases"] = kept + list(new.values())
        EVAL_SET.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        print(f"{len(data['eval_cases'])} cases in {EVAL_SET.name}")


if __name__ == "__main__":
    main()
