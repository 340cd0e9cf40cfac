"""schemathesis against the live callback server (a real process), from its own /openapi.json.

Every operation gets schemathesis's examples, coverage (boundary and negative) and fuzzing cases,
checked for no 5xx, a documented status code, and a body that matches the documented schema.
"""
import math

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from harness import callback_server, free_port

TOKEN = "5c4e3a7d5c4e3a7d5c4e3a7d5c4e3a7d"
API_KEY = "schemathesis-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHECKS = [schemathesis.checks.not_a_server_error, schemathesis.checks.status_code_conformance,
          schemathesis.checks.response_schema_conformance]
LONGEST_WAIT = 0.05  # seconds; the long-poll would otherwise hold a case for up to 300 s


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("schemathesis")
    # 64 threads: a margin in case a generated timeout that short_wait cannot cut holds one for 300 s
    # no Daraja at this address: the bulk sender's pushes of generated batches are refused, never sent
    process = callback_server(folder, api_key=API_KEY, token=TOKEN, MPESA_BASE_URL=f"http://127.0.0.1:{free_port()}")
    yield process.start()
    process.stop()


@pytest.fixture(scope="module")
def live_schema(server):
    config = schemathesis.Config.from_dict({"headers": AUTH, "generation": {"max-examples": 30}})
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=config, timeout=10)


schema = schemathesis.pytest.from_fixture("live_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request):
    """schemathesis 4.32.5's lazy loader reads `node._nodeid`, which pytest 9 no longer has."""
    request.node._nodeid = request.node.nodeid


def short_wait(case) -> None:
    """Cut a timeout that would make the long-poll or the event stream last (by default 120 s, or for
    ever) to LONGEST_WAIT; others as sent.

    A generated `timeout` may be an array (`?timeout=1000&timeout=x`): the server reads the first
    value, so each value is cut; left alone, 16 such cases held every server thread for 300 s."""
    case.query = case.query if case.query is not None else {}
    raw = case.query.get("timeout")
    if raw is None:
        case.query["timeout"] = LONGEST_WAIT
    elif isinstance(raw, (list, tuple)):
        case.query["timeout"] = [_shortened(value) for value in raw] or LONGEST_WAIT
    else:
        case.query["timeout"] = _shortened(raw)


def _shortened(raw):
    try:
        seconds = float(raw)
    except (TypeError, ValueError):
        return raw
    return LONGEST_WAIT if math.isfinite(seconds) and seconds > LONGEST_WAIT else raw


@schema.parametrize()
@settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_the_live_server_answers_as_its_openapi_document_says(case, server):
    if case.operation.path.startswith("/payment/wait/") or case.operation.path == "/events/stream":
        short_wait(case)
    case.call_and_validate(headers=AUTH, checks=CHECKS, timeout=10)
