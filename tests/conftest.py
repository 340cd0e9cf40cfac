import os
import threading

import pytest
from werkzeug.serving import make_server

from callback_server import create_app
from mpesa_agent.config import Settings
from mpesa_agent.simulator import create_app as create_simulator


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    """No test sees the developer's MPESA_*/CALLBACK_*/GOOGLE_* variables."""
    for name in list(os.environ):
        if name.startswith(("MPESA_", "CALLBACK_", "PAYMENT", "GOOGLE_", "GEMINI_", "SIMULATOR_", "TRUSTED_",
                            "RECONCILE_", "VERIFY_", "WEBHOOK", "BULK_")):
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


@pytest.fixture
def start_simulator(settings):
    """Start a fresh simulator on an ephemeral port; returns its base URL."""
    servers = []

    def start(**overrides) -> str:
        options = {"callback_delay": 0.05, "seed": 7, **overrides}
        app = create_simulator(settings, **options)
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
        servers.append((server, app))
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server, app in servers:
        app.extensions["simulator"].reset()
        server.shutdown()
        server.server_close()


@pytest.fixture
def app(settings):
    """The callback server's Flask app on the `settings` fixture's tmp_path database."""
    app = create_app(settings)
    yield app
    app.extensions["callback_manager"].store.close()


@pytest.fixture
def client(app):
    return app.test_client()
