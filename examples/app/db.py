"""The example app's "db": a key-value store with an HTTP API, in memory.

    GET /kv/<key>     200 and the value, or 404
    PUT /kv/<key>     stores the request body; 204
    GET /healthz      200 (the readiness probe)

Each replica keeps its own copy; the api writes to every replica and reads
from any that has the key. It is a toy: a replica that restarts starts empty.
"""

from __future__ import annotations

import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from discovery import listen_port

DATA: dict[str, bytes] = {}
NAME = os.environ.get("MIZZEN_POD_NAME", "db")


class Handler(BaseHTTPRequestHandler):
    def _send(self, code: int, body: bytes = b"") -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Served-By", NAME)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, b"ok\n")
        elif self.path.startswith("/kv/") and self.path[4:] in DATA:
            self._send(200, DATA[self.path[4:]])
        else:
            self._send(404, b"not found\n")

    def do_PUT(self) -> None:
        if not self.path.startswith("/kv/") or len(self.path) == 4:
            self._send(400, b"PUT /kv/<key>\n")
            return
        length = int(self.headers.get("Content-Length") or 0)
        DATA[self.path[4:]] = self.rfile.read(length)
        self._send(204)


if __name__ == "__main__":
    server = ThreadingHTTPServer(("", listen_port()), Handler)
    print(f"db {NAME} listening on {server.server_address[1]}", flush=True)
    server.serve_forever()
