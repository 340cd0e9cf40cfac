"""The ADK eval set in the suite, without google-adk[eval]: every case's tool trajectory, scored by ADK's own evaluator.

Replays each conversation's user turns through the real agent against the real stack, as `adk eval` does: in one
process with one guardrail state, a few cases at a time. The ROUGE reply score needs `adk eval` (eval/README.md).
"""
import asyncio
from collections import Counter
from pathlib import Path

import pytest
import requests
from google.adk.evaluation.eval_case import IntermediateData, Invocation, get_all_tool_calls
from google.adk.evaluation.eval_config import EvalConfig, get_eval_metrics_from_config
from google.adk.evaluation.eval_set import EvalSet
from google.adk.evaluation.trajectory_evaluator import TrajectoryEvaluator
from google.genai import types

from mpesa_agent.config import Settings
from mpesa_agent.tools import RETRY_MANY_TOOL, RETRY_TOOL, Payments
from eval.record import ANSWERS
from tests.conversation import APP, SEND, chat
from test_callback_integration import FAST_QUERIES, stack  # noqa: F401  (fixture)

EVAL = Path(__file__).resolve().parent.parent / "eval"
EVAL_SET = EvalSet.model_validate_json((EVAL / "mpesa_agent.evalset.json").read_text())
CONFIG = EvalConfig.model_validate_json((EVAL / "test_config.json").read_text())
PARALLELISM = 4  # adk eval's default


def trajectory_evaluator() -> TrajectoryEvaluator:
    [metric] = [m for m in get_eval_metrics_from_config(CONFIG) if m.metric_name == "tool_trajectory_avg_score"]
    return TrajectoryEvaluator(eval_metric=metric)


def calls(invocation: Invocation) -> list[tuple[str, dict]]:
    return [(call.name, call.args) for call in get_all_tool_calls(invocation.intermediate_data)]


@pytest.fixture(scope="module")
def replies(stack):
    """Every case's turns, run against one Payments; {eval_id: [Turn, ...]}."""
    requests.post(stack.base_url + "/simulator/reset", timeout=5).raise_for_status()
    payments = Payments(stack, schedule=FAST_QUERIES)
    gate = asyncio.Semaphore(PARALLELISM)

    async def replay(case):
        async with gate:
            return await chat(payments, [turn.user_content.parts[0].text for turn in case.conversation],
                              case.session_input.state.get(ANSWERS, []))

    async def replay_all():
        return await asyncio.gather(*(replay(case) for case in EVAL_SET.eval_cases))

    return {case.eval_id: turns for case, turns in zip(EVAL_SET.eval_cases, asyncio.run(replay_all()))}


def test_the_eval_set_has_enough_well_formed_cases():
    ids = [case.eval_id for case in EVAL_SET.eval_cases]
    assert len(ids) >= 120  # issue 14: the classes of misreading, in the way shop owners type
    assert len(set(ids)) == len(ids)
    for case in EVAL_SET.eval_cases:
        assert case.session_input.app_name == APP
        assert all(turn.final_response and turn.final_response.parts[0].text for turn in case.conversation)


def test_the_config_scores_trajectories_exactly_with_args():
    evaluator = trajectory_evaluator()
    assert (evaluator._match_type.name, evaluator._ignore_args, evaluator._threshold) == ("EXACT", False, 1.0)


def test_cases_do_not_trip_each_others_guardrails():
    """No two cases may ask one phone for the same amount (the 2-minute repeat guard), and no phone may
    get more requests than the rate limit allows: `adk eval` runs every case in one process. A retry is
    one more request to the phone it retries (the last one sent, or every one sent for the unanswered)."""
    owner, per_phone = {}, Counter()
    for case in EVAL_SET.eval_cases:
        sent = []
        for turn in case.conversation:
            for name, args in calls(turn):
                if name in (RETRY_TOOL, RETRY_MANY_TOOL):
                    per_phone.update(sent[-1:] if name == RETRY_TOOL else set(sent))
                if name != SEND:
                    continue
                sent.append(args["phone_number"])
                per_phone[args["phone_number"]] += 1
                key = (args["phone_number"], args["amount"])
                assert owner.setdefault(key, case.eval_id) == case.eval_id, f"{key} in {owner[key]} and {case.eval_id}"
    assert max(per_phone.values()) <= Settings().rate_limit_count


@pytest.mark.parametrize("case", EVAL_SET.eval_cases, ids=lambda case: case.eval_id)
def test_case_follows_its_expected_tool_trajectory(replies, case):
    expected = case.conversation
    actual = [Invocation(user_content=turn.user_content,
                         final_response=types.Content(role="model", parts=[types.Part(text=result.reply)]),
                         intermediate_data=IntermediateData(
                             tool_uses=[types.FunctionCall(name=name, args=args) for name, args in result.trajectory]))
              for turn, result in zip(expected, replies[case.eval_id])]

    assert [calls(turn) for turn in actual] == [calls(turn) for turn in expected]
    assert trajectory_evaluator().evaluate_invocations(actual, expected).overall_score == 1.0
