"""A PostgreSQL database of one test run or benchmark of its own: created, split into schemas
(one per store), dropped at the end. Tests (tests/conftest.py) and bench.scaling share it."""
from __future__ import annotations

import os
import uuid
from urllib.parse import quote, urlencode

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def admin_url() -> str:
    """MPESA_TEST_POSTGRES_URL (any database whose user may CREATE DATABASE), else the local server."""
    return os.environ.get("MPESA_TEST_POSTGRES_URL") or DEFAULT_URL


class Database:
    """`Database(admin_url, "mpesa_test")` creates a database of its own (psycopg.Error if the
    server cannot be reached); `.schema_url()` a fresh schema in it; `.drop()` removes it all."""

    def __init__(self, admin: str, prefix: str):
        self.admin = psycopg.connect(admin, autocommit=True, connect_timeout=5)
        self.name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.admin.execute(f'CREATE DATABASE "{self.name}"')
        self.url = make_conninfo(**{**conninfo_to_dict(admin), "dbname": self.name})

    def schema_url(self) -> str:
        """A new schema as a postgresql:// URL whose search_path points at it."""
        schema = f"s_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        return "postgresql://?" + urlencode({**conninfo_to_dict(self.url), "options": f"-csearch_path={schema}"},
                                            quote_via=quote)

    def drop(self) -> None:
        self.admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.admin.close()
