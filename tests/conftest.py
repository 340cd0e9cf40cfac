import os
import threading

import psycopg
import pytest
from hypothesis import settings as hypothesis_settings
from werkzeug.serving import make_server

from callback_server import create_app
from harness.postgres import Database, admin_url
from mpesa_agent.config import Settings
from mpesa_agent.simulator import create_app as create_simulator


# Property tests explore new inputs on every ./test.sh run; under CI=true they replay the same
# derandomized inputs, so that a CI verdict can be reproduced (`CI=true ./test.sh`). A failure
# found locally is kept as an @example or a plain test (tests/test_fuzz.py has several).
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI") == "true":
    hypothesis_settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    """No test sees the developer's MPESA_*/CALLBACK_*/GOOGLE_* variables."""
    for name in list(os.environ):
        if name.startswith(("MPESA_", "CALLBACK_", "PAYMENT", "GOOGLE_", "GEMINI_", "SIMULATOR_", "TRUSTED_",
                            "RECONCILE_", "VERIFY_", "WEBHOOK", "BULK_", "DASHBOARD_")):
            monkeypatch.delenv(name, raising=False)


def pytest_configure(config):
    config.addinivalue_line("markers", "stores: run each test on SQLite and on PostgreSQL (the db_kind fixture)")
    config.addinivalue_line("markers", "sqlite_only: about the SQLite file itself; not run on PostgreSQL")


def pytest_generate_tests(metafunc):
    """Tests of modules marked `stores` run once per store, unless marked `sqlite_only`."""
    if "db_kind" in metafunc.fixturenames and metafunc.definition.get_closest_marker("stores"):
        kinds = ["sqlite"] if metafunc.definition.get_closest_marker("sqlite_only") else ["sqlite", "postgresql"]
        metafunc.parametrize("db_kind", kinds, indirect=True)


@pytest.fixture
def db_kind(request) -> str:
    return getattr(request, "param", "sqlite")


@pytest.fixture(scope="session")
def postgres_database() -> Database:
    """A PostgreSQL database of this test run's own (harness/postgres.py), dropped at the end.

    From MPESA_TEST_POSTGRES_URL, else the local server at 127.0.0.1:5432. Without one the
    PostgreSQL tests are skipped, saying how to enable them; under CI=true they fail instead."""
    try:
        database = Database(admin_url(), "mpesa_test")
    except psycopg.Error as exc:
        why = (f"PostgreSQL tests skipped: no server at {admin_url()} ({str(exc).strip().splitlines()[0]}). "
               "Set MPESA_TEST_POSTGRES_URL=postgresql://user@host:port/dbname to run them.")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{why} Under CI=true they must run.", pytrace=False)
        pytest.skip(why)
    yield database
    database.drop()


@pytest.fixture
def postgres_url(postgres_database) -> str:
    """A schema of its own in the test run's database, as a postgresql:// URL (search_path set)."""
    return postgres_database.schema_url()


@pytest.fixture
def db_target(db_kind, tmp_path, request):
    """Where PAYMENTS_DB points for this test: a SQLite file, or a PostgreSQL schema's URL."""
    if db_kind == "postgresql":
        return request.getfixturevalue("postgres_url")
    return tmp_path / "payments.db"


@pytest.fixture(autouse=True)
def _apps_close_their_stores(monkeypatch):
    """Stores that tests' own create_app() calls open are closed after the test: a PostgreSQL store
    left open keeps its pool and LISTEN connections (PostgreSQL allows 100 in all)."""
    import mpesa_agent.server.app as app_module

    opened = []
    real = app_module.open_store
    monkeypatch.setattr(app_module, "open_store", lambda *args, **kwargs: opened.append(real(*args, **kwargs))
                        or opened[-1])
    yield
    for store in opened:
        store.close()


@pytest.fixture
def settings(tmp_path, db_target) -> Settings:
    """Offline settings on a tmp_path database (or, for `stores` tests, each store), ignoring .env files."""
    return Settings.from_env(
        {
            "MPESA_CONSUMER_KEY": "test-key",
            "MPESA_CONSUMER_SECRET": "test-secret",
            "MPESA_CALLBACK_URL": "http://127.0.0.1:8001/callback/0123456789abcdef0123456789abcdef",
            "CALLBACK_API_KEY": "test-api-key",
            "PAYMENTS_DB": str(db_target),
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
