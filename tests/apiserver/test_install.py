"""The operator installed with kustomize into a real API server (RBAC on), and run as its own
ServiceAccount: what its ClusterRole grants is exactly the golden list, and it is enough for the real
operator to take a Project through its life (status, events, ledgers, finalizer, deletion). The team
roles grant what they say and no more. No kubelet runs here, so the Deployment's Pod never starts:
the operator runs as a process with the ServiceAccount's token instead (`test_operator_on_node.py`
runs the installation's Pod on a real node).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.local.cluster import LocalCluster, find_binary, openssl
from tests.conftest import start_cluster
from tests.factories import project
from tests.helpers import OperatorProcess, get_json, wait_for

pytestmark = pytest.mark.apiserver

ROOT = Path(__file__).parents[2]
GOLDEN = ROOT / "deploy" / "operator" / "can-i.txt"
OPERATOR = "system:serviceaccount:codeb-system:codeb-operator"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # With the controller manager: its clusterrole-aggregation controller fills Kubernetes' own
    # admin / edit / view from the roles labelled for them.
    local = start_cluster(tmp_path_factory.mktemp("install"), controllers=True)
    try:
        local.kubectl("apply", "--server-side", "-k", str(ROOT / "deploy" / "operator"))
        yield local
    finally:
        local.stop()


# What every authenticated user may do (discovery, health, reviews of oneself): not the operator's grant.
EVERYONE = ("[/", "selfsubjectaccessreviews.", "selfsubjectreviews.", "selfsubjectrulesreviews.")


def can_i(cluster: LocalCluster, namespace: str, who: str = OPERATOR) -> list[str]:
    """``kubectl auth can-i --list`` for ``who`` in ``namespace``: a line per resource, sorted, without the
    header and without what every authenticated user may do."""
    listed = cluster.kubectl("auth", "can-i", "--list", f"--as={who}", "-n", namespace).stdout.splitlines()
    rows = (" ".join(line.split()) for line in listed[1:])
    return sorted(row for row in rows if not row.startswith(EVERYONE))


def test_the_operators_permissions_are_exactly_the_golden_list(installed: LocalCluster) -> None:
    installed.kubectl("create", "namespace", "tenant")
    found = [f"[tenant] {line}" for line in can_i(installed, "tenant")]
    found += [f"[codeb-system] {line}" for line in can_i(installed, "codeb-system")]
    golden = [line for line in GOLDEN.read_text().splitlines() if line and not line.startswith("#")]
    assert found == golden, "\n".join(["permissions changed; if on purpose, update " + str(GOLDEN), *found])
    assert not any("*" in line for line in found), "a wildcard"


def token_kubeconfig(cluster: LocalCluster, path: Path) -> Path:
    """The cluster's kubeconfig with the operator ServiceAccount's token as its only credential."""
    token = cluster.kubectl("create", "token", "codeb-operator", "-n", "codeb-system", "--duration=2h").stdout.strip()
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["users"] = [{"name": "operator", "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = "operator"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_operator_does_its_work_with_no_more_than_its_role(installed: LocalCluster, tmp_path: Path) -> None:
    installed.kubectl("create", "namespace", "shop")
    operator = OperatorProcess(installed, tmp_path / "operator.log")
    operator.env["KUBECONFIG"] = str(token_kubeconfig(installed, tmp_path / "operator.kubeconfig"))
    operator.start()
    try:
        doc = project("web", "shop", features={"database": {}})
        installed.kubectl("apply", "-f", "-", input_text=json.dumps(doc))

        def reconciled() -> dict[str, object] | None:
            status = get_json(installed, "project", "web", "-n", "shop").get("status") or {}
            return status if status.get("observedGeneration") == 1 and status.get("conditions") else None

        status = wait_for(reconciled, timeout=60, what="the Project reconciled by the operator as its ServiceAccount")
        assert status["allocations"]["port"]  # a ledger written in codeb-system
        installed.kubectl("delete", "project", "web", "-n", "shop", "--timeout=60s")  # the finalizer removed
        events = get_json(installed, "events", "-n", "shop")["items"]
        assert any(e["involvedObject"]["name"] == "web" for e in events)
    finally:
        operator.stop()
    log = operator.log()
    assert "forbidden" not in log.lower() and " 403" not in log, log[-3000:]


def test_team_roles_grant_what_they_say(installed: LocalCluster) -> None:
    installed.kubectl("create", "namespace", "team")
    for role in ("viewer", "developer"):
        installed.kubectl("create", "rolebinding", role, "-n", "team", f"--clusterrole=codeb-{role}", f"--user={role}")
    installed.kubectl("create", "clusterrolebinding", "platform-admin", "--clusterrole=codeb-admin", "--user=boss")

    def may(who: str, verb: str, resource: str, namespace: str = "team") -> bool:
        done = installed.kubectl("auth", "can-i", verb, resource, f"--as={who}", "-n", namespace, check=False)
        return done.stdout.strip() == "yes"

    assert may("viewer", "get", "projects") and may("viewer", "get", "projects/status")
    assert not may("viewer", "patch", "projects") and not may("viewer", "get", "secrets")
    assert may("developer", "patch", "projects") and may("developer", "create", "backups")
    assert may("developer", "create", "restores") and not may("developer", "get", "secrets")
    assert not may("developer", "patch", "platforms") and not may("developer", "get", "projects", "other")
    assert may("boss", "patch", "platforms") and not may("boss", "get", "secrets")
    # Aggregated into Kubernetes' own roles: a namespace's editors may change Projects.
    installed.kubectl("create", "rolebinding", "editor", "-n", "team", "--clusterrole=edit", "--user=editor")
    wait_for(lambda: may("editor", "patch", "projects"), timeout=30, what="codeb-developer aggregated into edit")
    assert not may("editor", "patch", "platforms")


def user_kubeconfig(cluster: LocalCluster, user: str) -> Path:
    """A kubeconfig for ``user`` with a client certificate from the cluster's CA, as a team member gets one."""
    pki, home = cluster.root / "pki", cluster.root / "users" / user
    home.mkdir(parents=True, exist_ok=True)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={user}", "-keyout", "user.key", "-out", "user.csr",
            cwd=home)  # fmt: skip
    signed_by = ["-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"), "-CAcreateserial"]
    openssl("x509", "-req", "-in", "user.csr", *signed_by, "-days", "1", "-extfile", str(pki / "client.ext"),
            "-out", "user.crt", cwd=home)  # fmt: skip
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    admin["users"] = [{"name": user, "user": {"client-certificate": str(home / "user.crt"),
                                              "client-key": str(home / "user.key")}}]  # fmt: skip
    admin["contexts"] = [{"name": user, "context": {"cluster": admin["clusters"][0]["name"], "user": user}}]
    admin["current-context"] = user
    path = home / "kubeconfig"
    path.write_text(yaml.safe_dump(admin))
    return path


def test_team_roles_hold_for_real_users_with_their_own_certificates(installed: LocalCluster) -> None:
    """Each allow and each deny of the team roles, as requests of users who authenticate with their own client
    certificates (not impersonation): the API server's authentication and authorization as in production."""
    installed.kubectl("create", "namespace", "crew")
    installed.kubectl("create", "namespace", "elsewhere")
    for role in ("viewer", "developer"):
        installed.kubectl("create", "rolebinding", role, "-n", "crew", f"--clusterrole=codeb-{role}", f"--user={role}")
    installed.kubectl("create", "clusterrolebinding", "crew-admin", "--clusterrole=codeb-admin", "--user=chief")
    for namespace in ("crew", "elsewhere"):
        installed.kubectl("apply", "-f", "-", input_text=json.dumps(project("shop", namespace)))
    installed.kubectl("create", "secret", "generic", "cloud", "-n", "crew", "--from-literal=apiKey=x")
    platform = {"apiVersion": "codeb.dev/v1alpha1", "kind": "Platform", "metadata": {"name": "crew-platform"},
                "spec": {"namespaces": {"names": ["crew"]}}}  # fmt: skip
    installed.kubectl("apply", "-f", "-", input_text=json.dumps(platform))
    configs = {user: user_kubeconfig(installed, user) for user in ("viewer", "developer", "chief", "stranger")}

    def allowed(user: str, *args: str, body: dict[str, Any] | None = None) -> bool:
        command = [find_binary("kubectl"), f"--kubeconfig={configs[user]}", *args]
        done = subprocess.run(command, input=json.dumps(body) if body else None, capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
        assert done.returncode == 0 or "Forbidden" in done.stderr or "forbidden" in done.stderr, done.stderr
        return done.returncode == 0

    deploy = ["patch", "project", "shop", "--type=merge", "-p", '{"spec":{"project":{"revision":"v2"}}}']
    backup = {"apiVersion": "codeb.dev/v1alpha1", "kind": "Backup", "metadata": {"name": "now", "namespace": "crew"},
              "spec": {"project": "shop"}}  # fmt: skip
    # The viewer reads Projects and their status, nothing else, and only in its namespace.
    assert allowed("viewer", "get", "projects", "-n", "crew")
    assert allowed("viewer", "get", "--raw", "/apis/codeb.dev/v1alpha1/namespaces/crew/projects/shop/status")
    assert not allowed("viewer", *deploy, "-n", "crew")
    assert not allowed("viewer", "get", "secret", "cloud", "-n", "crew")
    assert not allowed("viewer", "get", "projects", "-n", "elsewhere")
    # The developer deploys and starts backups there, but reads no Secret and changes no Platform.
    assert allowed("developer", *deploy, "-n", "crew")
    assert allowed("developer", "create", "-f", "-", body=backup)
    assert not allowed("developer", "get", "secret", "cloud", "-n", "crew")
    assert not allowed("developer", "patch", "platform", "crew-platform", "--type=merge", "-p", '{"spec":{}}')
    assert not allowed("developer", *deploy, "-n", "elsewhere")
    # The admin manages Platforms everywhere, and still reads no Secret: that is not codeb's to give.
    assert allowed("chief", "patch", "platform", "crew-platform", "--type=merge",
                   "-p", '{"spec":{"namespaces":{"names":["crew","elsewhere"]}}}')  # fmt: skip
    assert allowed("chief", *deploy, "-n", "elsewhere")
    assert not allowed("chief", "get", "secret", "cloud", "-n", "crew")
    # Someone the cluster's CA vouches for but nobody bound: nothing of codeb's.
    assert not allowed("stranger", "get", "projects", "-n", "crew")


def test_the_kubectl_here_renders_the_installation() -> None:
    """`kubectl kustomize` (kustomize built into kubectl) renders every object, the image set by the overlay."""
    import subprocess

    rendered = subprocess.run([find_binary("kubectl"), "kustomize", str(ROOT / "deploy" / "operator")],
                              capture_output=True, text=True, check=True, timeout=60).stdout  # fmt: skip
    objects = [o for o in yaml.safe_load_all(rendered) if o]
    kinds = sorted({o["kind"] for o in objects})
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Deployment", "Namespace",
                     "PodDisruptionBudget", "Role", "RoleBinding", "Service", "ServiceAccount"], kinds  # fmt: skip
    [deployment] = [o for o in objects if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] and pod["securityContext"]["runAsNonRoot"]
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
