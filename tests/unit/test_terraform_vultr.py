"""The Vultr module, checked against the provider's own schema (vultr/vultr 2.32.0).

The provider cannot be installed here, so `terraform validate` cannot run; its schema
(`terraform providers schema -json`, kept beside the module as `vultr-2.32.0-schema.json`)
is read instead by `tests.terraform_schema`.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from typing import Any

import pytest
import yaml

from controller.loop.naming import ProjectKey
from controller.specs.terraform import (
    CLUSTER_MODULE,
    MODULES,
    InputError,
    cluster_inputs,
    kubeconfig_in_state,
    module_dir,
    module_inputs,
    resource_name,
)
from schemas.project import ProjectSpec, Provider
from tests.factories import project_spec
from tests.terraform_schema import ModuleChecker, conforms, parse_type
from tests.terraform_tools import terraform_binary

SCHEMA = module_dir(Provider.vultr) / "vultr-2.32.0-schema.json"
KEY = ProjectKey("apps", "shop", "uid-1")
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ6Xq4dpzJ8FHKP3bPpk0rPcvXn7mxbl0YjXHzr2fX9c codeb-operator"


@pytest.fixture(scope="module")
def provider_schema() -> dict[str, Any]:
    schemas: dict[str, Any] = json.loads(SCHEMA.read_text())["provider_schemas"]
    return schemas["registry.terraform.io/vultr/vultr"]


def module() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((module_dir(Provider.vultr) / "main.tf.json").read_text())
    return loaded


def spec(**servers: Any) -> ProjectSpec:
    on_vultr = {"provider": "vultr", "region": "icn", "runtime": "quadlet", "count": 2} | servers
    return ProjectSpec.model_validate(project_spec(servers=on_vultr))


def test_every_resource_of_the_module_matches_the_provider_schema(provider_schema: dict[str, Any]) -> None:
    assert ModuleChecker(provider_schema, module()).check() == []
    kinds = set(module()["resource"])
    assert kinds == {"vultr_ssh_key", "vultr_firewall_group", "vultr_firewall_rule", "vultr_instance",
                     "vultr_load_balancer"}  # fmt: skip


def test_the_checker_finds_what_the_seeds_hand_written_balancer_gets_wrong(provider_schema: dict[str, Any]) -> None:
    """The seeds' load balancer (003) names `instances` and gives a port as text; the checker must say so."""
    seeds = {
        "variable": {"app_server_count": {"type": "number"}},
        "resource": {
            "vultr_instance": {"app_server": {"count": "${var.app_server_count}", "region": "icn",
                                              "os_id": 387, "label": "codeb-app-${count.index}"}},
            "vultr_load_balancer": {"main": {
                "region": "icn", "label": "codeb-lb",
                "forwarding_rules": {"frontend_protocol": "https", "frontend_port": 443, "backend_protocol": "http",
                                     "backend_port": 80},
                "health_check": {"protocol": "http", "port": "eighty", "path": "/api/health"},
                "instances": "${vultr_instance.app_server[*].id}",
                "ipv4": "203.0.113.9",
            }},
        },
    }  # fmt: skip
    problems = ModuleChecker(provider_schema, seeds).check()
    assert problems == [
        "vultr_instance.app_server.plan: required, not set",
        "vultr_load_balancer.main.instances: no such attribute or block",
        "vultr_load_balancer.main.ipv4: computed by the provider, cannot be set",
        "vultr_load_balancer.main.health_check[0].port: is string, the provider wants number",
    ]


def test_the_inputs_fill_every_variable_with_its_declared_type() -> None:
    declared = {name: parse_type(v["type"]) for name, v in module()["variable"].items()}
    for servers in ({}, {"count": None, "min": 1, "max": 3, "loadBalancer": {"enabled": True}},
                    {"firewall": {"ports": [22, 443], "allowedCidrs": ["10.0.0.0/8", "2001:db8::/32"]}}):  # fmt: skip
        inputs = module_inputs(KEY, spec(**servers).servers, 4512, PUBLIC_KEY)
        assert inputs.keys() == declared.keys()
        wrong = [name for name, value in inputs.items() if not conforms(value, declared[name])]
        assert wrong == []


def test_inputs_follow_the_spec() -> None:
    servers = {"plan": "vc2-2c-4gb", "loadBalancer": {"enabled": True, "healthCheck": {"path": "/up"}},
               "firewall": {"ports": [443], "allowedCidrs": ["10.0.0.0/8", "2001:db8::/32"]}}  # fmt: skip
    inputs = module_inputs(KEY, spec(**servers).servers, 4512, PUBLIC_KEY)
    assert {k: inputs[k] for k in ("name", "region", "plan", "host_count", "load_balancer_count", "app_port")} == {
        "name": resource_name(KEY), "region": "icn", "plan": "vc2-2c-4gb", "host_count": 2,
        "load_balancer_count": 1, "app_port": 4512,
    }  # fmt: skip
    assert inputs["firewall_rules"] == {
        "443-10-0-0-0-8": {"port": "443", "ip_type": "v4", "subnet": "10.0.0.0", "subnet_size": 8},
        "443-2001-db8---32": {"port": "443", "ip_type": "v6", "subnet": "2001:db8::", "subnet_size": 32},
    }
    assert inputs["health_check"] == {"path": "/up", "interval": 15, "timeout": 5, "healthy": 2, "unhealthy": 3}
    assert f"      - {json.dumps(PUBLIC_KEY)}\n" in inputs["user_data"] and "  - podman\n" in inputs["user_data"]
    assert module_inputs(KEY, spec().servers, 4512, PUBLIC_KEY)["load_balancer_count"] == 0
    # cloud-init reads the key back whole, even with characters YAML would otherwise take as syntax.
    odd = PUBLIC_KEY + " ops #1: key"
    config = yaml.safe_load(module_inputs(KEY, spec().servers, 4512, odd)["user_data"])
    assert config["users"] == [{"name": "root", "ssh_authorized_keys": [odd]}] and config["packages"] == [
        "podman",
        "git",
    ]


def test_a_public_key_that_spans_lines_never_reaches_cloud_init() -> None:
    with pytest.raises(ValueError, match="spans lines"):
        module_inputs(KEY, spec().servers, 4512, PUBLIC_KEY + "\nruncmd: [reboot]")


@pytest.mark.parametrize(
    ("servers", "field", "reason"),
    [
        ({"region": "seoul"}, "spec.servers.region", "InvalidRegion"),
        ({"plan": "medium_3_0"}, "spec.servers.plan", "InvalidPlan"),
    ],
)
def test_a_region_or_size_the_provider_lacks_is_refused_naming_the_field(
    servers: dict[str, Any], field: str, reason: str
) -> None:
    with pytest.raises(InputError, match=f"^{field}: ") as caught:
        module_inputs(KEY, spec(**servers).servers, 4512, PUBLIC_KEY)
    assert caught.value.reason == reason
    assert "icn" in str(caught.value) if reason == "InvalidRegion" else "vc2-1c-2gb" in str(caught.value)


def cluster_module() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((MODULES / CLUSTER_MODULE / "main.tf.json").read_text())
    return loaded


def on_vke(**servers: Any) -> ProjectSpec:
    made = {"provider": "vultr", "region": "icn", "runtime": "kubernetes", "credentialsSecretRef": "vultr",
            "vke": {"version": "v1.33.0+1", "nodes": 3}} | servers  # fmt: skip
    return ProjectSpec.model_validate(project_spec(servers=made))


def test_the_vke_module_matches_the_provider_schema_and_keeps_its_kubeconfig_out_of_sight(
    provider_schema: dict[str, Any],
) -> None:
    assert ModuleChecker(provider_schema, cluster_module()).check() == []
    assert set(cluster_module()["resource"]) == {"vultr_kubernetes"}
    outputs = cluster_module()["output"]
    # Terraform prints it nowhere; the operator reads it from the state, and status holds only the endpoint.
    assert outputs["kube_config"]["sensitive"] is True and "sensitive" not in outputs["endpoint"]
    schema = provider_schema["resource_schemas"]["vultr_kubernetes"]["block"]["attributes"]
    assert schema["kube_config"]["sensitive"] is True


def test_the_vke_inputs_fill_every_variable_with_its_declared_type() -> None:
    declared = {name: parse_type(v["type"]) for name, v in cluster_module()["variable"].items()}
    inputs = cluster_inputs(KEY, on_vke(plan="vc2-2c-4gb").servers)
    assert inputs == {"name": resource_name(KEY), "region": "icn", "kubernetes_version": "v1.33.0+1",
                      "plan": "vc2-2c-4gb", "node_count": 3}  # fmt: skip
    assert inputs.keys() == declared.keys()
    assert [name for name, value in inputs.items() if not conforms(value, declared[name])] == []
    with pytest.raises(InputError, match=r"^spec\.servers\.region: "):
        cluster_inputs(KEY, on_vke(region="seoul").servers)


def test_the_kubeconfig_is_read_from_the_state_as_vultr_gives_it() -> None:
    kubeconfig = "apiVersion: v1\nkind: Config\n"
    state = {"outputs": {"kube_config": {"value": base64.b64encode(kubeconfig.encode()).decode(), "sensitive": True}}}
    assert kubeconfig_in_state(state) == kubeconfig
    assert kubeconfig_in_state({"outputs": {"kube_config": {"value": "not base64!"}}}) is None
    assert kubeconfig_in_state({"outputs": {}}) is None and kubeconfig_in_state(None) is None


@pytest.mark.parametrize("module", ["vultr", CLUSTER_MODULE])
def test_terraform_itself_loads_the_module(module: str, tmp_path: Any) -> None:
    """What the schema cannot say (a reserved variable name, a bad reference): Terraform reads the
    configuration offline (`terraform providers` needs no provider installed)."""
    (tmp_path / "main.tf.json").write_bytes((MODULES / module / "main.tf.json").read_bytes())
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1"}
    done = subprocess.run([terraform_binary(), "providers"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "registry.terraform.io/vultr/vultr" in done.stdout
