"""A kubeconfig a Project supplies (a Secret naming the cluster its workload runs in), made a client.

Its author is a tenant: nothing in it may act on the operator's machine (`check_kubeconfig`), and
the client connects to the address the operator checked (`controller.clients.targets.resolve_target`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import kubernetes.client
import kubernetes.config
import yaml

from controller.errors import PermanentError


def api_client_from_kubeconfig(text: str, source: str, pool_size: int = 8, connect_to: str | None = None
                               ) -> kubernetes.client.ApiClient:  # fmt: skip
    """A client for a cluster named by a kubeconfig that a Project supplied (`check_kubeconfig`).

    ``connect_to``: the address to connect to instead of the server's name (`resolve_target`,
    which checked it); TLS still sends and verifies the name.
    """
    configuration = kubeconfig_configuration(text, source)
    server = urlsplit(str(configuration.host))
    if connect_to is not None and connect_to != server.hostname:
        literal = f"[{connect_to}]" if ":" in connect_to else connect_to
        configuration.host = urlunsplit(server._replace(netloc=f"{literal}:{server.port or 443}"))
        configuration.tls_server_name = server.hostname
    configuration.connection_pool_maxsize = pool_size
    return kubernetes.client.ApiClient(configuration)


def kubeconfig_configuration(text: str, source: str) -> kubernetes.client.Configuration:
    """The client configuration of a Project's kubeconfig (`check_kubeconfig`); its ``host`` is the server."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_kube_config_from_dict(  # type: ignore[no-untyped-call]
            check_kubeconfig(text, source), client_configuration=configuration, persist_config=False
        )
    except (kubernetes.config.ConfigException, ValueError, TypeError, KeyError, AttributeError):
        # The loader's messages can quote the document; name the problem without it.
        raise PermanentError(
            f"{source}: the kubeconfig has no usable current context (a cluster with a server, and a user)",
            reason="KubeconfigInvalid",
        ) from None
    return configuration


# Keys that make the client run a program or read a file of the operator's machine.
FORBIDDEN_KUBECONFIG_KEYS = {
    "exec": "runs a program",
    "auth-provider": "runs a provider plugin",
    "certificate-authority": "reads a file",
    "client-certificate": "reads a file",
    "client-key": "reads a file",
    "tokenFile": "reads a file",
}


def check_kubeconfig(text: str, source: str) -> dict[str, Any]:
    """The kubeconfig as a document, refusing what would act on the operator's own machine.

    It comes from a Project author's Secret: an exec plugin would run their command in
    the operator, a file path would read the operator's files as credentials.
    """
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        doc = None
    if not isinstance(doc, dict):
        raise PermanentError(f"{source}: key kubeconfig is not a kubeconfig document", reason="KubeconfigInvalid")
    found = [
        f"{section}[{item.get('name', '?')}].{entry}.{key} {FORBIDDEN_KUBECONFIG_KEYS[key]}"
        for section, entry in (("users", "user"), ("clusters", "cluster"))
        for item in doc.get(section) or []
        if isinstance(item, dict) and isinstance(item.get(entry), dict)
        for key in sorted(set(item[entry]) & set(FORBIDDEN_KUBECONFIG_KEYS))
    ]
    if found:
        raise PermanentError(
            f"{source}: {found[0]} on the operator's machine; give the credentials inline "
            "(kubectl config view --raw --flatten --minify)",
            reason="KubeconfigInvalid",
        )
    return doc
