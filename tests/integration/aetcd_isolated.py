"""aetcd, imported with its protobuf files in a private descriptor pool.

aetcd ships its own compiled etcd protos (``auth.proto``, ``kv.proto``,
``rpc.proto``) with the package and message names of Mizzen's
``protos/*.proto``. protobuf refuses a second definition of a symbol in its
default pool, so whichever is imported second fails (``duplicate symbol
'authpb.UserAddOptions'``). Both speak the same wire format, so aetcd gets a
pool of its own: import ``aetcd`` from here, before anything else imports it.
"""

from __future__ import annotations

from unittest import mock

from google.protobuf import descriptor_pool

with mock.patch.object(descriptor_pool, "Default", return_value=descriptor_pool.DescriptorPool()):
    import aetcd

__all__ = ["aetcd"]
