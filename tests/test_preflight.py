import shlex

from mpesa_agent import preflight
from mpesa_agent.config import Settings, mode

TOKEN = "0123456789abcdef0123456789abcdef"


def settings(**values) -> Settings:
    return Settings.from_env({"MPESA_CALLBACK_URL": f"http://127.0.0.1:8001/callback/{TOKEN}", **values},
                             load_files=False)


def test_simulator_callbacks_must_reach_the_server_we_start():
    assert preflight.problems(settings()) == []
    found = preflight.problems(settings(CALLBACK_SERVER_URL="http://127.0.0.1:9001"))
    assert found and "same callback server" in found[0]


def test_real_daraja_needs_real_credentials():
    found = preflight.problems(settings(MPESA_ENV="sandbox", MPESA_CALLBACK_URL=f"https://pay.example.com/callback/{TOKEN}"))
    assert any("MPESA_CONSUMER_KEY" in problem for problem in found)


def test_output_is_safe_for_the_shell(monkeypatch, capsys):
    monkeypatch.setenv("MPESA_BASE_URL", "http://127.0.0.1:8002/x;touch pwned")
    monkeypatch.setenv("MPESA_CALLBACK_URL", f"http://127.0.0.1:8001/callback/{TOKEN}")
    monkeypatch.setenv("MPESA_ENV_FILES", ".env")
    assert preflight.main() == 0
    values = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert shlex.split(values["DARAJA_URL"]) == ["http://127.0.0.1:8002/x;touch pwned"]
    assert values["SIM_PORT"] == "8002" and values["CALLBACK_PORT"] == "8001"


def test_production_needs_the_live_money_switch_and_says_which_mode_it_is():
    url = f"https://pay.example.com/callback/{TOKEN}"
    live = dict(MPESA_ENV="production", MPESA_CALLBACK_URL=url, MPESA_CONSUMER_KEY="k", MPESA_CONSUMER_SECRET="s")
    found = preflight.problems(settings(**live))
    assert any("MPESA_ALLOW_LIVE_MONEY=true" in problem for problem in found)
    assert not any("LIVE_MONEY" in p for p in preflight.problems(settings(**live, MPESA_ALLOW_LIVE_MONEY="true")))
    assert mode(settings(**live)).startswith("production, live money switched off")
    assert "LIVE MONEY" in mode(settings(**live, MPESA_ALLOW_LIVE_MONEY="true"))
    assert mode(settings()) == "simulator: offline, no money moves"
