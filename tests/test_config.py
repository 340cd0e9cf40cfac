import pytest

from mpesa_agent.config import ConfigError, Settings, callback_url_problems


def test_env_files_layer_and_process_environment_wins(tmp_path):
    (tmp_path / ".env").write_text("MPESA_SHORTCODE=111111\nMPESA_PASSKEY=from-env\nPAYMENT_MAX_AMOUNT=10\n")
    (tmp_path / ".env.local").write_text("MPESA_PASSKEY=from-local\n")
    settings = Settings.from_env({"PAYMENT_MAX_AMOUNT": "20"}, root=tmp_path)
    assert (settings.shortcode, settings.passkey, settings.max_amount) == ("111111", "from-local", 20)
    assert settings.party_b == "111111"
    assert settings.payments_db == tmp_path / "data" / "payments.db"


def test_environment_picks_the_base_url():
    assert Settings.from_env({"MPESA_ENV": "Sandbox"}, load_files=False).base_url == "https://sandbox.safaricom.co.ke"
    assert Settings.from_env({"MPESA_BASE_URL": "http://x:1/"}, load_files=False).base_url == "http://x:1"
    with pytest.raises(ConfigError, match="MPESA_ENV"):
        Settings.from_env({"MPESA_ENV": "live"}, load_files=False)
    with pytest.raises(ConfigError, match="PAYMENT_MAX_AMOUNT"):
        Settings.from_env({"PAYMENT_MAX_AMOUNT": "lots"}, load_files=False)


def test_secrets_stay_out_of_repr():
    settings = Settings.from_env({"MPESA_CONSUMER_SECRET": "s3cret-value", "CALLBACK_API_KEY": "k3y-value",
                                  "MPESA_CALLBACK_URL": "https://a.example/callback/tok3n-value"}, load_files=False)
    text = repr(settings)
    assert "s3cret-value" not in text and "k3y-value" not in text and "tok3n-value" not in text
    assert settings.passkey not in text


@pytest.mark.parametrize("env, url, problem", [
    ("production", "http://pay.example.com/callback/0123456789abcdef0123456789abcdef", "https"),
    ("sandbox", "https://Pay.Example.com/callback/0123456789abcdef0123456789abcdef", "lowercase"),
    ("sandbox", "https://pay.example.com/mpesa/0123456789abcdef0123456789abcdef", "mpesa"),
    ("sandbox", "https://pay.example.com/callback/short", "secret token"),
    ("sandbox", "http://127.0.0.1:8001/callback/0123456789abcdef0123456789abcdef", "publicly reachable"),
    ("sandbox", "", "not set"),
])
def test_callback_url_problems_name_what_is_wrong(env, url, problem):
    settings = Settings.from_env({"MPESA_ENV": env, "MPESA_CALLBACK_URL": url}, load_files=False)
    assert any(problem in p for p in callback_url_problems(settings))


def test_good_public_callback_url_passes():
    settings = Settings.from_env({"MPESA_ENV": "production",
                                  "MPESA_CALLBACK_URL": "https://pay.example.com/callback/0123456789abcdef0123456789abcdef"},
                                 load_files=False)
    assert callback_url_problems(settings) == []


def test_empty_environment_variable_does_not_hide_env_local(tmp_path):
    (tmp_path / ".env").write_text("CALLBACK_API_KEY=\n")
    (tmp_path / ".env.local").write_text("CALLBACK_API_KEY=generated-key\n")
    assert Settings.from_env({"CALLBACK_API_KEY": ""}, root=tmp_path).callback_api_key == "generated-key"
