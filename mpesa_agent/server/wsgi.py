"""The HTTP server in front of the Flask app: gevent's WSGI server, one greenlet per connection.

Chosen by measurement (docs/benchmark.md): a held long-poll, an event stream, an idle keep-alive
or a slow client costs a greenlet (a few KiB), not an OS thread, so none of them can take
capacity from Daraja's callback route. `callback_server.py` monkey-patches the standard library
first, so the app's locks, events and sockets cooperate with the greenlets. Guards:
- the request line and headers must arrive within HEADER_SECONDS of the first wait (a client
  that trickles bytes, or an idle keep-alive, is cut off); each read of a body may stall at
  most BODY_SECONDS;
- at most `per_source` open connections from one address (loopback and TRUSTED_PROXIES carry
  many clients and are exempt), at most `connections` in all;
- the server's own errors (a bad request line, headers too large, a timeout) are JSON, like
  the app's, and close the connection.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import socket
from collections import Counter
from typing import Callable

import gevent
from gevent import pywsgi
from gevent.pool import Pool

from mpesa_agent.server.http import error_body

log = logging.getLogger("callback_server")

HEADER_SECONDS = 10.0
BODY_SECONDS = 10.0
MAX_HEADER_BYTES = 64 * 1024
DEFAULT_CONNECTIONS = 16_000  # under the open-file limit, with room for the database and logs
DEFAULT_PER_SOURCE = 200
READ_BUFFER_BYTES = 1024  # per connection (io's default: 8 KiB)


def json_error(status: str, message: str) -> bytes:
    """A complete HTTP response: `status` with the app's JSON error body, closing the connection."""
    body = json.dumps(error_body(message)).encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode("latin-1") + body


class RequestTimeout(socket.timeout):
    """The request line and headers did not arrive in time."""


class Handler(pywsgi.WSGIHandler):
    """pywsgi's handler with a deadline on the request head, a read timeout on bodies and JSON errors."""

    def __init__(self, sock, address, server, rfile=None):
        # Each connection's read buffer is allocated when it opens and kept while it is held:
        # io's default 8 KiB was a quarter of a held waiter's memory. A request's head and a
        # callback's body fit in a few of these; a larger body is read in more steps.
        super().__init__(sock, address, server, rfile or sock.makefile("rb", READ_BUFFER_BYTES))

    def handle_one_request(self):
        if self.socket is not None:
            self.socket.settimeout(None)  # the head has a deadline of its own (below)
        self._deadline = gevent.Timeout.start_new(self.server.header_seconds, RequestTimeout)
        try:
            return super().handle_one_request()  # a timeout while waiting for a request line: just closed
        finally:
            self._deadline.cancel()

    def read_request(self, raw_requestline):
        try:
            ok = super().read_request(raw_requestline)
        except RequestTimeout:
            raise HeadTimedOut("the request headers did not arrive in time") from None
        finally:
            self._deadline.cancel()
        if ok and sum(len(key) + len(value) for key, value in self.headers.items()) > MAX_HEADER_BYTES:
            raise HeadersTooLarge(f"the request headers are over {MAX_HEADER_BYTES} bytes")
        self.socket.settimeout(self.server.body_seconds)  # each read of the body may stall this long
        return ok

    def _handle_client_error(self, ex):
        if isinstance(ex, HeadersTooLarge):
            return "413", json_error("413 Request Header Fields Too Large", str(ex))
        if isinstance(ex, HeadTimedOut):
            return "408", json_error("408 Request Timeout", str(ex))
        self.log_error("Invalid request (from %s): %s", self.client_address, str(ex) or type(ex).__name__)
        return "400", json_error("400 Bad Request", f"not a valid HTTP request: {str(ex)[:120] or 'malformed'}")

    def _send_error_response_if_possible(self, error_code):
        if self.response_length:
            self.close_connection = True
            return
        status = "400 Bad Request" if error_code == 400 else "500 Internal Server Error"
        body = json.dumps(error_body(status[4:].lower())).encode()
        try:
            self.start_response(status, [("Content-Type", "application/json"), ("Connection", "close")])
            self.write(body)
        except OSError:
            self.close_connection = True

    def log_error(self, msg, *args):
        log.warning("refused a malformed request: " + msg, *args)

    def log_request(self):
        pass  # the app logs what matters; an access line per request would cost more than the request


class HeadersTooLarge(ValueError):
    pass


class HeadTimedOut(ValueError):
    pass


class Server(pywsgi.WSGIServer):
    """At most `connections` open connections, and `per_source` from any one address but the exempt."""

    def __init__(self, listener, application, *, connections: int = DEFAULT_CONNECTIONS,
                 per_source: int = DEFAULT_PER_SOURCE, exempt: Callable[[str], bool] = lambda address: False,
                 header_seconds: float = HEADER_SECONDS, body_seconds: float = BODY_SECONDS):
        super().__init__(listener, application, spawn=Pool(connections), handler_class=Handler, log=None,
                         error_log=log, backlog=2048 if isinstance(listener, tuple) else None)
        self.per_source, self.exempt = per_source, exempt
        self.header_seconds, self.body_seconds = header_seconds, body_seconds
        self.open_by_source: Counter = Counter()

    def handle(self, sock, address):
        source = address[0] if isinstance(address, tuple) else ""
        if not self.exempt(source) and self.open_by_source[source] >= self.per_source:
            try:
                sock.sendall(json_error("429 Too Many Requests",
                                        f"too many open connections from {source} (at most {self.per_source})"))
            except OSError:
                pass
            sock.close()
            return
        self.open_by_source[source] += 1
        try:
            if sock.family in (socket.AF_INET, socket.AF_INET6):  # a response's head and body go out together
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # (Nagle + delayed ACK: 40 ms each)
            super().handle(sock, address)
        finally:
            self.open_by_source[source] -= 1
            if not self.open_by_source[source]:
                del self.open_by_source[source]


def exempt_sources(trusted_proxies: tuple[str, ...]) -> Callable[[str], bool]:
    """Loopback (a local tunnel agent, local tools) and trusted proxies carry many clients each."""
    networks = [ipaddress.ip_network(entry, strict=False) for entry in trusted_proxies]

    def exempt(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return ip.is_loopback or any(ip in network for network in networks)
    return exempt
