"""A lean asyncio HTTP/1.1 client: one keep-alive socket per `Connection`, thousands at once.

The load generator shares 2 cores with the server, so it must cost far less per request than the
server does: raw asyncio streams, no HTTP library, bodies read by Content-Length.
"""
from __future__ import annotations

import asyncio
import json
import time


class HttpError(Exception):
    """The server closed the connection or answered something that is not HTTP/1.1."""


class Connection:
    """One keep-alive connection; `request` is not re-entrant (one request at a time)."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None):
        self.host, self.port = host, port
        self.base_headers = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> "Connection":
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        return self

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """Send one request and read the whole answer: (status, body)."""
        if self.writer is None:
            await self.open()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self.base_headers}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + (body or b""))
        try:
            raw = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            await self.close()
            raise HttpError(f"{method} {path}: connection closed ({type(exc).__name__})") from None
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise HttpError(f"{method} {path}: not an HTTP answer: {lines[0][:80]!r}")
        length, closing = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                closing = True
        payload = await self.reader.readexactly(length) if length else b""
        if closing:
            await self.close()
        return int(parts[1]), payload

    async def json(self, method: str, path: str, data: dict | None = None) -> tuple[int, dict]:
        status, payload = await self.request(method, path, None if data is None else json.dumps(data).encode())
        return status, json.loads(payload) if payload else {}

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = self.reader = None


async def timed(coro) -> tuple[float, object]:
    """(seconds, result) of awaiting `coro`."""
    started = time.perf_counter()
    result = await coro
    return time.perf_counter() - started, result
