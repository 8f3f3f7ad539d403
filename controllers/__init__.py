"""The controller manager: leader election, shared informers, work queues, controllers.

Each controller is level-triggered (``controllers.base.Controller``): informer
handlers only enqueue keys; ``reconcile(key)`` reads the shared caches, writes
through a fenced client and returns a ``Result``. ``controllers.manager`` runs
them all while this process holds the leader lease.
"""
