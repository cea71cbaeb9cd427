"""An HTTP double of the parts of Vault's API the product uses, for tests only.

It speaks Vault's wire format, so the product's real hvac client is exercised: KV v1 and KV v2
reads (mounts configured per test), token lookup-self and renew-self with TTLs, AppRole login,
and the 403 / 404 / 503 answers Vault gives. `fail_next(n, status)` makes the next n requests
answer `status` (503: sealed or standby; 429, 500, 502, 401), to test retries and refusals.
`namespace=` keeps the secrets in that Enterprise namespace (reads without the
X-Vault-Namespace header find nothing); `tls=(cert, key)` serves HTTPS."""
from __future__ import annotations

import json
import secrets
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class VaultDouble:
    def __init__(self, token_ttl: int = 3600, kv2_mounts=("secret",), kv1_mounts=("kv",),
                 namespace: str | None = None, tls: tuple[str, str] | None = None):
        self.root_token = "hvs." + secrets.token_urlsafe(18)
        self.token_ttl = token_ttl
        self.kv2_mounts, self.kv1_mounts = set(kv2_mounts), set(kv1_mounts)
        self.data: dict[str, dict] = {}        # "<mount>/<name>" -> key/values
        self.tokens: dict[str, dict] = {self.root_token: {"expires": time.time() + token_ttl,
                                                          "denied": set()}}
        self.approles: dict[str, str] = {}     # role_id -> secret_id
        self.requests: list[tuple[str, str]] = []  # (method, path); never bodies
        self.namespace = namespace
        self.namespaces: list[str | None] = []  # the X-Vault-Namespace of each request
        self.renewals = 0
        self._failures: list[int] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.tls = tls is not None
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # ------------------------------------------------------------ test API
    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> VaultDouble:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def put(self, mount: str, name: str, values: dict) -> str:
        """Stores a secret; returns the path a pipeline's credentialPath uses for it."""
        self.data[f"{mount}/{name}"] = dict(values)
        return f"{mount}/data/{name}" if mount in self.kv2_mounts else f"{mount}/{name}"

    def add_approle(self) -> tuple[str, str]:
        role_id, secret_id = secrets.token_hex(8), secrets.token_urlsafe(16)
        self.approles[role_id] = secret_id
        return role_id, secret_id

    def deny(self, token: str, path: str) -> None:
        self.tokens[token]["denied"].add(path)

    def fail_next(self, n: int, status: int = 503) -> None:
        with self._lock:
            self._failures.extend([status] * n)

    def reads(self, path: str) -> int:
        return sum(1 for m, p in self.requests if m == "GET" and p == f"/v1/{path}")

    # ------------------------------------------------------------ the server
    def _answer(self, method: str, path: str, token: str | None, body: dict,
                namespace: str | None = None):
        with self._lock:
            self.requests.append((method, path))
            self.namespaces.append(namespace)
            if self._failures:
                return self._failures.pop(0), {"errors": ["Vault is sealed"]}
        if path == "/v1/auth/approle/login" and method in ("POST", "PUT"):
            if self.approles.get(body.get("role_id")) != body.get("secret_id"):
                return 400, {"errors": ["invalid role or secret ID"]}
            tok = "hvs." + secrets.token_urlsafe(18)
            self.tokens[tok] = {"expires": time.time() + self.token_ttl, "denied": set()}
            return 200, {"auth": {"client_token": tok, "lease_duration": self.token_ttl,
                                  "renewable": True, "policies": ["default"]}}
        info = self.tokens.get(token or "")
        if info is None or info["expires"] < time.time():
            return 403, {"errors": ["permission denied"]}
        if path == "/v1/auth/token/lookup-self":
            return 200, {"data": {"ttl": int(info["expires"] - time.time()), "renewable": True,
                                  "display_name": "token", "policies": ["default"]}}
        if path == "/v1/auth/token/renew-self" and method in ("POST", "PUT"):
            info["expires"] = time.time() + self.token_ttl
            self.renewals += 1
            return 200, {"auth": {"client_token": token, "lease_duration": self.token_ttl,
                                  "renewable": True}}
        if method != "GET":
            return 405, {"errors": ["unsupported in the double"]}
        rel = path[len("/v1/"):]
        if self.namespace and namespace != self.namespace:
            return 404, {"errors": []}  # the path exists in another namespace only
        if rel in info["denied"]:
            return 403, {"errors": ["1 error occurred:\n\t* permission denied\n\n"]}
        mount, _, rest = rel.partition("/")
        if mount in self.kv2_mounts:
            if not rest.startswith("data/"):
                return 404, {"errors": [], "warnings": ["Invalid path for a versioned K/V "
                                                        "secrets engine."]}
            values = self.data.get(f"{mount}/{rest[len('data/'):]}")
            if values is None:
                return 404, {"errors": []}
            return 200, {"data": {"data": values, "metadata": {"version": 1}},
                         "lease_duration": 0, "renewable": False}
        if mount in self.kv1_mounts:
            values = self.data.get(rel)
            if values is None:
                return 404, {"errors": []}
            return 200, {"data": values, "lease_duration": 2764800, "renewable": False}
        return 404, {"errors": [f"no handler for route '{rel}'"]}

    def _handler(self):
        double = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}") if n else {}
                status, payload = double._answer(self.command, self.path.split("?")[0],
                                                 self.headers.get("X-Vault-Token"), body,
                                                 self.headers.get("X-Vault-Namespace"))
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_PUT = _serve

            def log_message(self, *args):  # quiet
                pass

        return Handler
