"""The pure parts of `mizzen exec` / `mizzen kill`: signal names, the KILL/STOP refusal,
role flags, who may call which agent method (also through a real gRPC server with
the AuthInterceptor and bearer tokens), and the CLI's ``--`` split."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator

import grpc
import pytest

from mizzen.cli.main import build_parser
from mizzen.security.server_auth import AuthInterceptor, Denied, Identity
from mizzen.security.tokens import hash_token
from nodeagent.agent_service import NodeAgentService
from nodeagent.logs import DiskLogSource
from nodeagent.pod_ops import AgentPolicy, InvalidRequest, check_signal, parse_roles, parse_signal
from nodeagent.stats import UsageSampler
from protos import agent_pb2, agent_pb2_grpc


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("HUP", signal.SIGHUP),
        ("SIGHUP", signal.SIGHUP),
        ("hup", signal.SIGHUP),
        (" usr1 ", signal.SIGUSR1),
        ("1", signal.SIGHUP),
        ("15", signal.SIGTERM),
        ("KILL", signal.SIGKILL),
    ],
)
def test_parse_signal(text: str, expected: signal.Signals) -> None:
    assert parse_signal(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "signal: required"),
        ("NOPE", 'signal: unknown signal "NOPE"'),
        ("SIG_BLOCK", 'signal: unknown signal "SIG_BLOCK"'),
        ("_BLOCK", 'signal: unknown signal "_BLOCK"'),
        ("999", "signal: unknown signal number 999"),
        ("-1", 'signal: unknown signal "-1"'),
    ],
)
def test_parse_signal_refuses_naming_the_field(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_signal(text)
    assert str(err.value) == message


def test_kill_and_stop_need_force() -> None:
    for sig in (signal.SIGKILL, signal.SIGSTOP):
        with pytest.raises(InvalidRequest, match=f"^signal: {sig.name} cannot be handled"):
            check_signal(sig, force=False)
        check_signal(sig, force=True)
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR2, signal.SIGCONT):
        check_signal(sig, force=False)


def test_parse_roles() -> None:
    assert parse_roles("--exec-roles", "admin") == {"admin"}
    assert parse_roles("--exec-roles", "viewer, controller") == {"admin", "viewer", "controller"}
    assert parse_roles("--exec-roles", "") == {"admin"}
    with pytest.raises(ValueError, match=r"^--signal-roles: unknown or ungrantable role node"):
        parse_roles("--signal-roles", "viewer,node")


VIEWER = Identity("vera", "viewer")
ADMIN = Identity("ada", "admin")
CONTROLLER = Identity("cm", "controller")
NODE = Identity("node:a", "node")


async def _allowed(policy: AgentPolicy, who: Identity, method: str) -> bool:
    try:
        await policy.authorize(who, f"/mizzen.v1.NodeAgent/{method}", None)
    except Denied:
        return False
    return True


async def test_default_policy_exec_and_signal_are_admin_only() -> None:
    policy = AgentPolicy()
    table = {
        (who.role, method): await _allowed(policy, who, method)
        for who in (ADMIN, VIEWER, CONTROLLER, NODE)
        for method in ("Logs", "Stats", "Exec", "Signal")
    }
    assert {k for k, ok in table.items() if ok} == {
        ("admin", "Logs"),
        ("admin", "Stats"),
        ("admin", "Exec"),
        ("admin", "Signal"),
        ("viewer", "Logs"),
        ("viewer", "Stats"),
    }


async def test_exec_is_a_permission_of_its_own() -> None:
    policy = AgentPolicy(exec_roles=frozenset({"viewer"}))
    assert await _allowed(policy, VIEWER, "Exec")
    assert not await _allowed(policy, VIEWER, "Signal")
    assert not await _allowed(policy, CONTROLLER, "Exec")
    policy = AgentPolicy(signal_roles=frozenset({"controller"}))
    assert await _allowed(policy, CONTROLLER, "Signal")
    assert not await _allowed(policy, CONTROLLER, "Exec")
    with pytest.raises(Denied) as denied:
        await AgentPolicy().authorize(VIEWER, "/mizzen.v1.NodeAgent/Exec", None)
    assert denied.value.message(VIEWER) == (
        "mizzen: vera (role viewer) may not run commands in pods (exec): only roles admin may"
    )


async def test_through_the_interceptor(tmp_path: pytest.TempPathFactory) -> None:
    """A viewer's token is refused Exec and Signal (PERMISSION_DENIED) before the service
    runs; an admin's reaches it (here: NOT_FOUND, no such pod on this node)."""
    tokens = {hash_token("tok-v"): ("vera", "viewer"), hash_token("tok-a"): ("ada", "admin")}
    server = grpc.aio.server(interceptors=[AuthInterceptor(AgentPolicy(), tokens=tokens)])
    service = NodeAgentService(DiskLogSource(str(tmp_path)), UsageSampler(dict))
    agent_pb2_grpc.add_NodeAgentServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    async def requests() -> AsyncIterator[agent_pb2.ExecRequest]:
        yield agent_pb2.ExecRequest(start=agent_pb2.ExecStart(pod="p", command=["true"]))

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = agent_pb2_grpc.NodeAgentStub(channel)
            codes = {}
            for token in ("tok-v", "tok-a"):
                md = (("authorization", f"Bearer {token}"),)
                for name in ("Signal", "Exec"):
                    try:
                        if name == "Signal":
                            await stub.Signal(
                                agent_pb2.SignalRequest(pod="p", signal="HUP"), metadata=md
                            )
                        else:
                            async for _ in stub.Exec(requests(), metadata=md):
                                pass
                    except grpc.aio.AioRpcError as err:
                        codes[(token, name)] = err.code()
            await stub.Stats(
                agent_pb2.StatsRequest(), metadata=(("authorization", "Bearer tok-v"),)
            )
    finally:
        await server.stop(None)
    denied, missing = grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND
    assert codes == {
        ("tok-v", "Signal"): denied,
        ("tok-v", "Exec"): denied,
        ("tok-a", "Signal"): missing,
        ("tok-a", "Exec"): missing,
    }


@pytest.mark.parametrize(
    ("argv", "command", "namespace", "stdin"),
    [
        (["exec", "web", "--", "sh", "-c", "exit 3"], ["sh", "-c", "exit 3"], None, False),
        (["exec", "web", "-n", "x", "-i", "--", "ls", "-l"], ["ls", "-l"], "x", True),
        (["exec", "-i", "web", "--", "ls", "--", "-n"], ["ls", "--", "-n"], None, True),
        (["exec", "web", "true"], ["true"], None, False),
    ],
)
def test_exec_command_after_dashes(
    argv: list[str], command: list[str], namespace: str | None, stdin: bool
) -> None:
    args = build_parser("exec").parse_args(argv)
    assert (args.command, args.pod, args.argv) == ("exec", "web", command)
    assert (args.namespace, args.stdin) == (namespace, stdin)
