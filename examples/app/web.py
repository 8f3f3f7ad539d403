"""The example app's "web" front: one page, through the api (and so the db).

    GET /             200 "web <pod>: visit <n> (api <pod>, db <pod>)"
    GET /healthz      200 (the readiness probe)

The web depends on the api Service (``dependsOn: [{service: api}]``): it
starts only once an api replica is ready, which itself started only once a db
replica was. Each request goes to the next api endpoint in turn.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from discovery import endpoints, listen_port

NAME = os.environ.get("MIZZEN_POD_NAME", "web")
TURN = itertools.count()


def visit() -> dict[str, object]:
    apis = endpoints("api")
    if not apis:
        raise OSError("no api endpoint")
    start = next(TURN)
    last: OSError = OSError("no api answered")
    for i in range(len(apis)):
        host, port = apis[(start + i) % len(apis)]
        request = urllib.request.Request(f"http://{host}:{port}/visits", data=b"", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return dict(json.loads(r.read()))
        except OSError as err:
            last = err
    raise last


class Handler(BaseHTTPRequestHandler):
    def _send(self, code: int, text: str) -> None:
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, "ok\n")
            return
        if self.path != "/":
            self._send(404, "not found\n")
            return
        try:
            seen = visit()
        except (OSError, ValueError) as err:
            self._send(502, f"web {NAME}: the api did not answer: {err}\n")
            return
        self._send(
            200, f"web {NAME}: visit {seen['visits']} (api {seen['api']}, db {seen['db']})\n"
        )


if __name__ == "__main__":
    server = ThreadingHTTPServer(("", listen_port()), Handler)
    print(
        f"web {NAME} listening on {server.server_address[1]}; api: {endpoints('api')}", flush=True
    )
    server.serve_forever()
