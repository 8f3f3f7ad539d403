"""examples/app: its programs as plain processes on loopback, and its manifest up to date.

The processes get what the agent gives them (docs/agent.md): their port as
MIZZEN_PORT_HTTP / PORT, the Services' ready endpoints as
<SVC>_SERVICE_ENDPOINTS at start and in the live file
$MIZZEN_POD_DIR/services/<svc>.json. Here the test plays the agent: the chain
web → api → db answers, and the api follows its live file when db replicas
go away and come back. (Applied to a cluster, the same manifest needs dynamic
ports and the endpoints controller: the two other parts of issue 17.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mizzen.testing.local_cluster import REPO_ROOT, free_ports

pytestmark = pytest.mark.integration

APP = REPO_ROOT / "examples" / "app"


def test_the_manifest_ships_the_current_programs() -> None:
    check = subprocess.run(
        [sys.executable, str(APP / "build.py"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    docs = list(yaml.safe_load_all((APP / "app.yaml").read_text()))
    code = docs[0]
    assert code["kind"] == "ConfigMap" and code["metadata"]["name"] == "app-code"
    assert code["data"] == {
        name: (APP / name).read_text() for name in ("api.py", "db.py", "discovery.py", "web.py")
    }
    kinds = [(d["kind"], d["metadata"]["name"]) for d in docs[1:]]
    assert kinds == [
        ("Service", "db"),
        ("Service", "api"),
        ("Service", "web"),
        ("Deployment", "db"),
        ("Deployment", "api"),
        ("Deployment", "web"),
    ]
    needs = {d["metadata"]["name"]: d["spec"].get("dependsOn") for d in docs[4:]}
    assert needs == {"db": None, "api": [{"service": "db"}], "web": [{"service": "api"}]}


class Processes:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, program: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
        full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1", **env}
        log = open(self.base / f"{program}-{port}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, str(APP / program)], env=full, stdout=log, stderr=log, cwd="/"
        )
        log.close()
        self.procs.append(proc)
        wait_http(f"http://127.0.0.1:{port}/healthz", codes=(200, 503))
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    p = Processes(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


def fetch(url: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def wait_http(url: str, codes: tuple[int, ...] = (200,), timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if fetch(url)[0] in codes:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{url} did not answer {codes} within {timeout}s")
        time.sleep(0.05)


def live_file(pod_dir: Path, service: str, ports: list[int]) -> None:
    """What the agent writes (atomically): the ready endpoints of service."""
    target = pod_dir / "services" / f"{service}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    body = {"service": service, "ports": {"http": [{"ip": "127.0.0.1", "port": p} for p in ports]}}
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(body))
    tmp.rename(target)


def test_web_answers_through_the_api_and_the_db(processes: Processes, tmp_path: Path) -> None:
    db1, db2, api1, api2, web1 = free_ports(5)
    processes.start("db.py", db1, {"PORT": str(db1), "MIZZEN_POD_NAME": "db-1"})
    processes.start("db.py", db2, {"MIZZEN_PORT_HTTP": str(db2), "MIZZEN_POD_NAME": "db-2"})
    dbs = f"127.0.0.1:{db1},127.0.0.1:{db2}"
    # api-1 knows db from its environment only; api-2 from its live file
    processes.start(
        "api.py",
        api1,
        {"PORT": str(api1), "DB_SERVICE_ENDPOINTS": dbs, "MIZZEN_POD_NAME": "api-1"},
    )
    api2_dir = tmp_path / "api-2"
    live_file(api2_dir, "db", [db1, db2])
    processes.start(
        "api.py",
        api2,
        {
            "PORT": str(api2),
            "DB_SERVICE_ENDPOINTS": f"127.0.0.1:{db1}",
            "MIZZEN_POD_DIR": str(api2_dir),
            "MIZZEN_POD_NAME": "api-2",
        },
    )
    processes.start(
        "web.py",
        web1,
        {
            "PORT": str(web1),
            "API_SERVICE_ENDPOINTS": f"127.0.0.1:{api1},127.0.0.1:{api2}",
            "MIZZEN_POD_NAME": "web-1",
        },
    )
    pages = [fetch(f"http://127.0.0.1:{web1}/") for _ in range(4)]
    assert [code for code, _ in pages] == [200] * 4, pages
    assert [text.split(":")[1].split(" (")[0] for _, text in pages] == [
        " visit 1",
        " visit 2",
        " visit 3",
        " visit 4",
    ]
    assert {text.split("(api ")[1].split(",")[0] for _, text in pages} == {"api-1", "api-2"}
    assert all(text.startswith("web web-1: visit") for _, text in pages)
    assert pages[0][1].endswith("db (new))\n")  # the first visit found no counter
    assert all("db db-" in text for _, text in pages[1:])
    # every db replica holds the counter
    assert fetch(f"http://127.0.0.1:{db1}/kv/visits") == (200, "4")
    assert fetch(f"http://127.0.0.1:{db2}/kv/visits") == (200, "4")


def test_the_api_follows_its_live_file(processes: Processes, tmp_path: Path) -> None:
    db1, db2, api = free_ports(3)
    first = processes.start("db.py", db1, {"PORT": str(db1), "MIZZEN_POD_NAME": "db-1"})
    pod_dir = tmp_path / "api"
    live_file(pod_dir, "db", [db1])
    processes.start(
        "api.py",
        api,
        {
            "PORT": str(api),
            "DB_SERVICE_ENDPOINTS": f"127.0.0.1:{db1}",
            "MIZZEN_POD_DIR": str(pod_dir),
        },
    )
    code, body = fetch(f"http://127.0.0.1:{api}/visits", "POST")
    assert (code, json.loads(body)["db"]) == (200, "(new)")
    # every db replica gone: the agent's file lists none; the api is not ready
    first.kill()
    first.wait()
    live_file(pod_dir, "db", [])
    assert fetch(f"http://127.0.0.1:{api}/healthz")[0] == 503
    assert fetch(f"http://127.0.0.1:{api}/visits", "POST")[0] == 503
    # db returns (a new replica, another port): the api follows without a restart
    processes.start("db.py", db2, {"PORT": str(db2), "MIZZEN_POD_NAME": "db-2"})
    live_file(pod_dir, "db", [db2])
    assert fetch(f"http://127.0.0.1:{api}/healthz")[0] == 200
    code, body = fetch(f"http://127.0.0.1:{api}/visits", "POST")
    assert code == 200
    assert json.loads(body)["visits"] == 1  # a toy db: the new replica started empty
    assert fetch(f"http://127.0.0.1:{db2}/kv/visits") == (200, "1")
