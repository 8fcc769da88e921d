"""A kubeconfig from a Project's Secret may not act on the operator's machine (pure checks)."""

from __future__ import annotations

import pytest
import yaml

from controller.clients.kubeconfig import api_client_from_kubeconfig, check_kubeconfig
from controller.errors import PermanentError

SOURCE = "Secret apps/target (spec.servers.cluster.kubeconfigSecretRef)"


def kubeconfig(user: dict[str, object], cluster: dict[str, object] | None = None) -> str:
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "remote", "cluster": cluster or {"server": "https://10.0.0.1:6443"}}],
        "users": [{"name": "deployer", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "remote", "user": "deployer"}}],
    })  # fmt: skip


def test_an_inline_token_kubeconfig_makes_a_client_for_its_server() -> None:
    client = api_client_from_kubeconfig(kubeconfig({"token": "s3cret-token"}), SOURCE)
    assert client.configuration.host == "https://10.0.0.1:6443"
    client.close()  # type: ignore[no-untyped-call]


@pytest.mark.parametrize(
    ("user", "cluster", "named"),
    [
        ({"exec": {"command": "/bin/sh"}}, None, "users[deployer].user.exec runs a program"),
        ({"auth-provider": {"name": "oidc"}}, None, "users[deployer].user.auth-provider runs a provider plugin"),
        ({"client-certificate": "/etc/shadow", "client-key": "/root/.ssh/id_rsa"}, None,
         "users[deployer].user.client-certificate reads a file"),
        ({"tokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token"}, None,
         "users[deployer].user.tokenFile reads a file"),
        ({"token": "t"}, {"server": "https://x", "certificate-authority": "/etc/ssl/ca.pem"},
         "clusters[remote].cluster.certificate-authority reads a file"),
    ],
)  # fmt: skip
def test_what_would_run_a_program_or_read_a_file_of_the_operator_is_refused(
    user: dict[str, object], cluster: dict[str, object] | None, named: str
) -> None:
    with pytest.raises(PermanentError) as caught:
        check_kubeconfig(kubeconfig(user, cluster), SOURCE)
    assert caught.value.reason == "KubeconfigInvalid"
    assert caught.value.message.startswith(f"{SOURCE}: {named}") and "--flatten" in caught.value.message


@pytest.mark.parametrize("text", ["", "- a list", "{not: yaml", "apiVersion: v1\nkind: Config\n"])
def test_what_is_not_a_usable_kubeconfig_is_named_without_quoting_it(text: str) -> None:
    with pytest.raises(PermanentError) as caught:
        api_client_from_kubeconfig(text, SOURCE)
    assert caught.value.reason == "KubeconfigInvalid" and caught.value.message.startswith(SOURCE)
    assert text.strip() == "" or text not in caught.value.message
