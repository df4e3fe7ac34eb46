"""The fleet: the nodes that share one etcd store, their liveness, and its views."""
