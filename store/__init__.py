"""Store node: replicated state machine, Raft glue and the etcd-compatible gRPC API."""
