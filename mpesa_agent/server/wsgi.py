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

A long-poll may also be *parked* (`environ[PARKING].park(...)`, used by `/payment/wait`): its
greenlet, its Flask request and its frames are let go, and only the connection, its read buffer
and a small record stay until the payment settles or the wait times out; then a new greenlet
writes the answer and goes on serving the connection. A parked connection still counts against
`connections` and `per_source`.
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

from mpesa_agent.server.http import PARKING, error_body

log = logging.getLogger("callback_server")

HEADER_SECONDS = 10.0
BODY_SECONDS = 10.0
MAX_HEADER_BYTES = 64 * 1024
DEFAULT_CONNECTIONS = 16_000  # under the open-file limit, with room for the database and logs
DEFAULT_PER_SOURCE = 200
READ_BUFFER_BYTES = 1024  # per connection (io's default: 8 KiB)
PARKABLE = ("/payment/wait/",)  # the paths whose requests may park (the app decides)


def json_error(status: str, message: str) -> bytes:
    """A complete HTTP response: `status` with the app's JSON error body, closing the connection."""
    body = json.dumps(error_body(message)).encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode("latin-1") + body


class Parked:
    """A long-poll held without a greenlet: its connection, how to answer it, and its two ends
    (the payment settles: `watch` calls `fire`; the deadline: a timer calls it)."""

    __slots__ = ("server", "handler", "answer", "stop", "timer", "fired", "detached")

    def __init__(self, server: "Server", handler: "Handler", answer: Callable[[], tuple[str, list, bytes]]):
        self.server, self.handler, self.answer = server, handler, answer
        self.stop: Callable[[], None] | None = None
        self.timer = None
        self.fired = self.detached = False

    def fire(self, *_) -> None:
        """The payment settled or the deadline came: answer now (from any thread or the hub)."""
        if self.fired:
            return
        self.fired = True
        if self.timer is not None:
            self.timer.close()
        if self.stop is not None:
            self.stop()
        if self.detached:  # its greenlet is gone: a new one answers and carries on
            gevent.spawn(self.server.resume, self)


class Parking:
    """What the app calls to park its request (`environ[PARKING]`)."""

    __slots__ = ("server", "handler")

    def __init__(self, server: "Server", handler: "Handler"):
        self.server, self.handler = server, handler

    def park(self, watch: Callable[[Callable[[], None]], Callable[[], None]],
             answer: Callable[[], tuple[str, list, bytes]], seconds: float) -> None:
        """Answer with `answer()` (status, headers, body) once `watch(fire)` fires or after `seconds`.
        The app's own response to this request is then not sent."""
        parked = Parked(self.server, self.handler, answer)
        parked.timer = self.server.loop.timer(seconds)
        parked.timer.start(parked.fire, update=True)  # from now, not from the loop's last look at the clock
        try:
            parked.stop = watch(parked.fire)
        except BaseException:  # e.g. the database is away: the app answers this request itself
            parked.fired = True
            parked.timer.close()
            raise
        if parked.fired:  # settled already, while the watch began: it ends here
            parked.stop()
        self.handler.parked = parked


class RequestTimeout(socket.timeout):
    """The request line and headers did not arrive in time."""


class Handler(pywsgi.WSGIHandler):
    """pywsgi's handler with a deadline on the request head, a read timeout on bodies and JSON errors."""

    parked: Parked | None = None

    def __init__(self, sock, address, server, rfile=None):
        # Each connection's read buffer is allocated when it opens and kept while it is held:
        # io's default 8 KiB was a quarter of a held waiter's memory. A request's head and a
        # callback's body fit in a few of these; a larger body is read in more steps.
        super().__init__(sock, address, server, rfile or sock.makefile("rb", READ_BUFFER_BYTES))

    def handle(self):
        """pywsgi's keep-alive loop, which ends without closing the connection when a request parks."""
        try:
            while self.socket is not None:
                result = self.handle_one_request()
                if self.parked is not None:
                    if not self.parked.fired:  # still waiting: let this greenlet go
                        self.parked.detached = True
                        self._forget_request()
                        self.server.parked_sockets.add(self.socket)
                        return
                    if self._send_parked_safely():  # settled while parking: answered from here
                        continue
                    break
                if result is None:
                    break
                if result is True:
                    continue
                self.status, response_body = result
                self.socket.sendall(response_body)
                break
        finally:
            if self.socket is not None and (self.parked is None or not self.parked.detached):
                self.close()

    def _send_parked_safely(self) -> bool:
        try:
            return self.send_parked()
        except Exception:  # a bug in the answer: the connection is closed, never left open
            log.exception("a parked request could not be answered")
            return False

    def send_parked(self) -> bool:
        """Write the parked request's answer; False when the connection is to close (or is gone)."""
        status, headers, body = self.parked.answer()
        self.parked = None
        close = self.close_connection
        head = [f"HTTP/1.1 {status}"] + [f"{name}: {value}" for name, value in headers]
        head.append("Connection: close" if close else "Connection: keep-alive")
        try:
            self.socket.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        except OSError:
            return False
        return not close

    def close(self) -> None:
        """Close the connection, reading out what the client still sent first (else a reset may
        destroy the answer it has not read yet), as pywsgi does."""
        raw = getattr(self.socket, "_sock", None)
        try:
            if raw is not None:
                try:
                    raw.recv(16384)
                finally:
                    raw.close()
            self.socket.close()
        except OSError:
            pass
        self.__dict__.pop("socket", None)
        self.__dict__.pop("rfile", None)
        self.__dict__.pop("wsgi_input", None)

    def _forget_request(self) -> None:
        """A parked request keeps its connection and read buffer, not its environ and headers."""
        for name in ("environ", "headers", "wsgi_input", "requestline", "application", "result", "command", "path"):
            self.__dict__.pop(name, None)

    def get_environ(self):
        environ = super().get_environ()
        if self.server.parking and environ.get("PATH_INFO", "").startswith(PARKABLE):
            environ[PARKING] = Parking(self.server, self)
        return environ

    def process_result(self):
        if self.parked is None:  # a parked request's answer is written later, by send_parked
            super().process_result()

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
                 header_seconds: float = HEADER_SECONDS, body_seconds: float = BODY_SECONDS, parking: bool = True):
        super().__init__(listener, application, spawn=Pool(connections), handler_class=Handler, log=None,
                         error_log=log, backlog=2048 if isinstance(listener, tuple) else None)
        self.parking = parking
        self.parked_sockets: set = set()  # connections whose request is parked (no greenlet)
        self.per_source, self.exempt = per_source, exempt
        self.header_seconds, self.body_seconds = header_seconds, body_seconds
        self.open_by_source: Counter = Counter()

    def handle(self, sock, address):
        source = _source(address)
        if not self.exempt(source) and self.open_by_source[source] >= self.per_source:
            try:
                sock.sendall(json_error("429 Too Many Requests",
                                        f"too many open connections from {source} (at most {self.per_source})"))
            except OSError:
                pass
            sock.close()
            return
        self.open_by_source[source] += 1
        if sock.family in (socket.AF_INET, socket.AF_INET6):  # a response's head and body go out together
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # (Nagle + delayed ACK: 40 ms each)
        self._serve(self.handler_class(sock, address, self), source)

    def _serve(self, handler: Handler, source: str) -> None:
        """Serve a connection until it closes, or until it parks (then `resume` carries on)."""
        parked = False
        try:
            handler.handle()
            parked = handler.parked is not None and handler.parked.detached
        finally:
            if not parked:
                self._closed(source)

    def resume(self, parked: Parked) -> None:
        """A parked request's payment settled or its deadline came: answer, then serve on."""
        handler = parked.handler  # still holding `parked`, for send_parked
        self.parked_sockets.discard(handler.socket)
        source = _source(handler.client_address)
        if self._watcher is None:
            self._start_accepting_if_started()  # a place is free again, if it was full
        if not handler._send_parked_safely() or handler.socket is None:
            handler.close()
            self._closed(source)
            return
        self._serve(self.handler_class(handler.socket, handler.client_address, self, rfile=handler.rfile), source)

    def full(self) -> bool:
        """No more connections: the active ones and the parked ones together are `connections`."""
        return self.pool.full() or self.pool.free_count() <= len(self.parked_sockets)

    def do_close(self, sock, *args) -> None:
        """The pool's greenlet for `sock` ended: close it, unless its request is parked."""
        if sock not in self.parked_sockets:
            super().do_close(sock, *args)

    def _closed(self, source: str) -> None:
        self.open_by_source[source] -= 1
        if not self.open_by_source[source]:
            del self.open_by_source[source]


def _source(address) -> str:
    """The address a connection comes from (a Unix socket has none)."""
    return address[0] if isinstance(address, tuple) else ""


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
