"""How the operator's kopf connects to the API server: its Pod's ServiceAccount, else KUBECONFIG."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import kopf


def in_cluster_server() -> str:
    """Where a Pod reaches the API server: the address the kubelet gives every container, as client-go's
    in-cluster configuration (and the kubernetes client's) reads it. kopf's own loader names
    ``kubernetes.default.svc``, which only a cluster DNS answers: a cluster without one (or a Pod whose
    DNS is not the cluster's) would leave the operator unable to log in at all."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return "https://kubernetes.default.svc"
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # kopf's own loaders read KUBECONFIG when called; the kubernetes client's auto-login captures it at
    # import time.
    found = kopf.login_with_service_account(**kwargs)
    if found is not None:
        return dataclasses.replace(found, server=in_cluster_server())
    return kopf.login_with_kubeconfig(**kwargs)
