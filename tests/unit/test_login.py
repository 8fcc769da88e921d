"""Where the operator in a Pod logs in: the API server's address from the kubelet's environment."""

from __future__ import annotations

import pytest

from controller.operator.login import in_cluster_server


@pytest.mark.parametrize(
    ("host", "port", "server"),
    [
        ("10.0.0.1", "443", "https://10.0.0.1:443"),
        ("fd00:10:96::1", "6443", "https://[fd00:10:96::1]:6443"),
        (None, None, "https://kubernetes.default.svc"),  # no kubelet said where: the DNS name, as kopf has it
    ],
)
def test_the_server_is_the_address_every_container_is_given(
    monkeypatch: pytest.MonkeyPatch, host: str | None, port: str | None, server: str
) -> None:
    for name, value in (("KUBERNETES_SERVICE_HOST", host), ("KUBERNETES_SERVICE_PORT", port)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert in_cluster_server() == server
