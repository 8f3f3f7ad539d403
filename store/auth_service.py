"""etcdserverpb.Auth: etcd's users, roles and key-range permissions (store/etcd_auth.py).

Writes are replicated ``("auth", ...)`` commands; passwords are bcrypt-hashed
here, on the member that received the request, before anything is proposed.
Reads (UserGet/List, RoleGet/List, AuthStatus, Authenticate) wait for a
barrier, so they see every change acknowledged before them. Who may call what
is decided by ``EtcdAuthInterceptor`` (store/etcd_auth_interceptor.py).
"""

from __future__ import annotations

import asyncio
import time

import grpc

from protos import auth_pb2, rpc_pb2, rpc_pb2_grpc

from . import etcd_auth
from .grpc_errors import grpc_errors
from .node import StoreNode
from .state_machine import StateMachine


class AuthService(rpc_pb2_grpc.AuthServicer):
    def __init__(self, node: StoreNode) -> None:
        self.node = node

    async def _propose(self, *cmd: object) -> object:
        resp = await self.node.propose(("auth", *cmd))
        return self.node.fill_header(resp)

    @grpc_errors
    async def AuthEnable(
        self, request: rpc_pb2.AuthEnableRequest, context: grpc.aio.ServicerContext
    ) -> object:
        return await self._propose("enable", etcd_auth.new_secret())

    @grpc_errors
    async def AuthDisable(
        self, request: rpc_pb2.AuthDisableRequest, context: grpc.aio.ServicerContext
    ) -> object:
        return await self._propose("disable")

    @grpc_errors
    async def AuthStatus(
        self, request: rpc_pb2.AuthStatusRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AuthStatusResponse:
        await self.node.barrier()
        enabled, rev = self.node.read(lambda sm: (sm.auth_enabled, sm.auth_revision))
        return self.node.fill_header(rpc_pb2.AuthStatusResponse(enabled=enabled, authRevision=rev))

    @grpc_errors
    async def Authenticate(
        self, request: rpc_pb2.AuthenticateRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AuthenticateResponse:
        await self.node.barrier()

        def lookup(sm: StateMachine) -> tuple[bool, auth_pb2.User | None]:
            return sm.auth_enabled, etcd_auth.user(sm, request.name)

        enabled, user = self.node.read(lookup)
        if not enabled:
            raise etcd_auth.NOT_ENABLED
        if not self.node.read(lambda sm: sm.auth_secret):
            # restored from a snapshot file (no secret saved): the first applied
            # enable's secret is everyone's
            await self.node.propose(("auth", "enable", etcd_auth.new_secret()))
        if user is None:
            raise etcd_auth.AUTH_FAILED
        if user.options.no_password:
            raise etcd_auth.NO_PASSWORD_USER
        ok = await asyncio.to_thread(etcd_auth.check_password, user.password, request.password)
        if not ok:
            raise etcd_auth.AUTH_FAILED

        def mint(sm: StateMachine) -> str | None:
            current = etcd_auth.user(sm, request.name)
            if not sm.auth_enabled or current is None or current.password != user.password:
                return None  # changed while the password was checked
            return etcd_auth.mint_token(sm, request.name, time.time(), self.node.cfg.auth_token_ttl)

        token = self.node.read(mint)
        if token is None:
            raise etcd_auth.AUTH_FAILED
        return self.node.fill_header(rpc_pb2.AuthenticateResponse(token=token))

    # ------------------------------------------------------------------ users

    async def _hash(self, password: str, hashed: str) -> str:
        if hashed:  # etcd 3.5 clients may hash themselves (bcrypt, as etcd stores it)
            return hashed
        return await asyncio.to_thread(etcd_auth.hash_password, password)

    @grpc_errors
    async def UserAdd(
        self, request: rpc_pb2.AuthUserAddRequest, context: grpc.aio.ServicerContext
    ) -> object:
        if not request.name:
            raise etcd_auth.USER_EMPTY
        no_password = request.options.no_password
        hashed = "" if no_password else await self._hash(request.password, request.hashedPassword)
        return await self._propose("user_add", request.name, hashed, no_password)

    @grpc_errors
    async def UserGet(
        self, request: rpc_pb2.AuthUserGetRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AuthUserGetResponse:
        await self.node.barrier()
        user = self.node.read(lambda sm: etcd_auth.user(sm, request.name))
        if user is None:
            raise etcd_auth.USER_NOT_FOUND
        return self.node.fill_header(rpc_pb2.AuthUserGetResponse(roles=user.roles))

    @grpc_errors
    async def UserList(
        self, request: rpc_pb2.AuthUserListRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AuthUserListResponse:
        await self.node.barrier()
        names = self.node.read(lambda sm: sorted(sm.auth_users))
        return self.node.fill_header(rpc_pb2.AuthUserListResponse(users=names))

    @grpc_errors
    async def UserDelete(
        self, request: rpc_pb2.AuthUserDeleteRequest, context: grpc.aio.ServicerContext
    ) -> object:
        return await self._propose("user_delete", request.name)

    @grpc_errors
    async def UserChangePassword(
        self, request: rpc_pb2.AuthUserChangePasswordRequest, context: grpc.aio.ServicerContext
    ) -> object:
        hashed = await self._hash(request.password, request.hashedPassword)
        return await self._propose("user_password", request.name, hashed)

    @grpc_errors
    async def UserGrantRole(
        self, request: rpc_pb2.AuthUserGrantRoleRequest, context: grpc.aio.ServicerContext
    ) -> object:
        return await self._propose("user_grant", request.user, request.role)

    @grpc_errors
    async def UserRevokeRole(
        self, request: rpc_pb2.AuthUserRevokeRoleRequest, context: grpc.aio.ServicerContext
    ) -> object:
        return await self._propose("user_revoke", request.name, request.role)

    # ------------------------------------------------------------------ roles

    @grpc_errors
    async def RoleAdd(
        self, request: rpc_pb2.AuthRoleAddRequest, context: grpc.aio.ServicerContext
    ) -> object:
        return await self._propose("role_add", request.name)

    @grpc_errors
    async def RoleGet(
        self, request: rpc_pb2.AuthRoleGetRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AuthRoleGetResponse:
        await self.node.barrier()
        role = self.node.read(lambda sm: etcd_auth.role(sm, request.role))
        if role is None:
            raise etcd_auth.ROLE_NOT_FOUND
        return self.node.fill_header(rpc_pb2.AuthRoleGetResponse(perm=role.keyPermission))

    @grpc_errors
    async def RoleList(
        self, request: rpc_pb2.AuthRoleListRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.AuthRoleListResponse:
        await self.node.barrier()
        names = self.node.read(lambda sm: sorted(sm.auth_roles))
        return self.node.fill_header(rpc_pb2.AuthRoleListResponse(roles=names))

    @grpc_errors
    async def RoleDelete(
        self, request: rpc_pb2.AuthRoleDeleteRequest, context: grpc.aio.ServicerContext
    ) -> object:
        return await self._propose("role_delete", request.role)

    @grpc_errors
    async def RoleGrantPermission(
        self, request: rpc_pb2.AuthRoleGrantPermissionRequest, context: grpc.aio.ServicerContext
    ) -> object:
        return await self._propose("role_grant", request.name, request.perm.SerializeToString())

    @grpc_errors
    async def RoleRevokePermission(
        self, request: rpc_pb2.AuthRoleRevokePermissionRequest, context: grpc.aio.ServicerContext
    ) -> object:
        return await self._propose("role_revoke", request.role, request.key, request.range_end)
