"""The embedded local default: what `codeb up` and the tests start on this machine.

A real control plane (`cluster`: etcd and kube-apiserver), the local Platform (`platform`:
PostgreSQL, Redis, MinIO, Caddy as processes) and the supervisor that keeps a runtime-local
workload running (`supervise`, started by path by `controller.drivers.processes`).
"""
