"""Faults a real server cannot make on demand, from a small HTTP proxy in front of it: every
request is forwarded to the server, except those a rule answers itself (a 503 SlowDown to
the PUTs of Spark's part files, say) until the rule is lifted, or for its next `times`
requests only (a burst). `seen` lists every request's (method, path), answered or forwarded."""
from __future__ import annotations

import http.client
import http.server
import socket
import threading
import time
from dataclasses import dataclass


@dataclass
class Rule:
    method: str
    path_contains: str
    status: int
    body: bytes = b""
    hits: int = 0
    times: int | None = None  # answer this many matching requests, then forward again


class HttpFaults:
    """`HttpFaults(target_port)`: a proxy on a loopback port of its own (`.port`);
    `answer("PUT", "part-", 503, body)` makes it answer matching requests itself (method "*":
    any), `lift()` forwards everything again. `die_on("PUT", "part-")`: when a matching request
    comes the server seems to die, as if killed: that request and every one in flight get no
    answer (their connections are cut), new connections are refused; `revive()` listens again
    on the same port. The server behind keeps what it had stored, for the test to inspect."""

    def __init__(self, target_port: int):
        self.target_port, self.rules = target_port, []
        self.seen: list[tuple[str, str]] = []
        self.at: list[float] = []  # when each request of `seen` came (time.monotonic())
        self._lock = threading.Lock()
        self.dead, self._die_on, self._before_death = False, None, 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                rule = proxy._match(self.command, self.path)
                if proxy.dead:
                    return self._cut()
                if rule is not None:
                    self.send_response(rule.status)
                    self.send_header("Content-Type", "application/json" if
                                     rule.body.startswith(b"{") else "application/xml")
                    self.send_header("Content-Length", str(len(rule.body)))
                    self.end_headers()
                    self.wfile.write(rule.body)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=60)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("connection", "expect")}
                conn.request(self.command, self.path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
                if proxy.dead:  # died while the server answered: the answer is lost
                    conn.close()
                    return self._cut()
                self.send_response(r.status, r.reason)
                for k, v in r.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                # a HEAD's answer says the length of what a GET would return
                self.send_header("Content-Length", r.getheader("Content-Length", "0")
                                 if self.command == "HEAD" else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            def _cut(self):
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any  # noqa: N815

            def log_message(self, *args):
                pass

        self._handler = Handler
        self._listen(0)

    def _listen(self, port: int) -> None:
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), self._handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def die_on(self, method: str, path_contains: str, after: int = 0) -> None:
        """Dies at the matching request that follows `after` forwarded ones."""
        self._die_on, self._before_death = (method, path_contains), after

    def revive(self) -> None:
        with self._lock:
            self.dead, self._die_on = False, None
        self._listen(self.port)

    def answer(self, method: str, path_contains: str, status: int, body: bytes = b"",
               times: int | None = None) -> Rule:
        rule = Rule(method, path_contains, status, body, times=times)
        with self._lock:
            self.rules.append(rule)
        return rule

    def lift(self) -> None:
        with self._lock:
            self.rules.clear()

    def _match(self, method: str, path: str) -> Rule | None:
        with self._lock:
            self.seen.append((method, path.split("?")[0]))
            self.at.append(time.monotonic())
            if self._die_on and not self.dead and self._die_on[0] in ("*", method) and \
                    self._die_on[1] in path:
                self._before_death -= 1
            if self._die_on and not self.dead and self._before_death < 0:
                self.dead = True
                threading.Thread(target=self.close, daemon=True).start()  # stop listening
            for rule in self.rules:
                if rule.method in ("*", method) and rule.path_contains in path and (
                        rule.times is None or rule.hits < rule.times):
                    rule.hits += 1
                    return rule
        return None

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
