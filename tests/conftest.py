import os

import pytest

from mpesa_agent.config import Settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    """No test sees the developer's MPESA_*/CALLBACK_*/GOOGLE_* variables."""
    for name in list(os.environ):
        if name.startswith(("MPESA_", "CALLBACK_", "PAYMENT", "GOOGLE_", "GEMINI_", "SIMULATOR_")):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def settings(tmp_path) -> Settings:
    """Offline settings on a tmp_path database, ignoring .env files."""
    return Settings.from_env(
        {
            "MPESA_CONSUMER_KEY": "test-key",
            "MPESA_CONSUMER_SECRET": "test-secret",
            "MPESA_CALLBACK_URL": "http://127.0.0.1:8001/callback/0123456789abcdef0123456789abcdef",
            "CALLBACK_API_KEY": "test-api-key",
            "PAYMENTS_DB": str(tmp_path / "payments.db"),
        },
        root=tmp_path,
        load_files=False,
    )
