"""The example app's "api": counts visits in the db, found through the db Service.

    POST /visits      increments the counter in the db; 200 and JSON
                      {"visits": n, "api": this pod, "db": the replica read}
    GET /healthz      200 once a db endpoint is known (the readiness probe)

The api depends on the db Service (``dependsOn: [{service: db}]``), so it
starts only once db has a ready endpoint. It writes the counter to every db
replica it knows and reads it from the first that has it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from discovery import endpoints, listen_port

NAME = os.environ.get("MIZZEN_POD_NAME", "api")
LOCK = threading.Lock()
TIMEOUT = 2.0


def read_count(dbs: list[tuple[str, int]]) -> tuple[int, str]:
    """(the counter, the replica that answered); 0 when no replica has it."""
    for host, port in dbs:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/kv/visits", timeout=TIMEOUT) as r:
                return int(r.read() or b"0"), r.headers.get("X-Served-By", f"{host}:{port}")
        except urllib.error.HTTPError as err:
            if err.code != 404:
                continue
        except OSError:
            continue
    return 0, ""


def write_count(dbs: list[tuple[str, int]], value: int) -> int:
    """Store value on every replica; how many took it."""
    stored = 0
    for host, port in dbs:
        request = urllib.request.Request(
            f"http://{host}:{port}/kv/visits", data=str(value).encode(), method="PUT"
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT):
                stored += 1
        except OSError:
            continue
    return stored


class Handler(BaseHTTPRequestHandler):
    def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            ok = bool(endpoints("db"))
            self._send(200 if ok else 503, b"ok\n" if ok else b"no db endpoint\n", "text/plain")
        else:
            self._send(404, b"not found\n", "text/plain")

    def do_POST(self) -> None:
        if self.path != "/visits":
            self._send(404, b"not found\n", "text/plain")
            return
        dbs = endpoints("db")
        if not dbs:
            self._send(503, b'{"error": "no db endpoint"}\n')
            return
        with LOCK:  # one api replica at a time; replicas may race (a toy counter)
            count, served_by = read_count(dbs)
            if write_count(dbs, count + 1) == 0:
                self._send(502, b'{"error": "no db replica answered"}\n')
                return
        body = {"visits": count + 1, "api": NAME, "db": served_by or "(new)"}
        self._send(200, json.dumps(body).encode() + b"\n")


if __name__ == "__main__":
    server = ThreadingHTTPServer(("", listen_port()), Handler)
    print(f"api {NAME} listening on {server.server_address[1]}; db: {endpoints('db')}", flush=True)
    server.serve_forever()
