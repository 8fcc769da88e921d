"""The Lightsail module with the real AWS provider (5.100.0, from the machine's filesystem mirror):
`terraform init`, `validate` and `plan`, offline.

No cloud is reachable, so the plan is made with the provider told not to validate
credentials or look up the account; what it would create is read from the plan itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from controller.loop.naming import ProjectKey
from controller.specs.terraform import (
    INPUT_VALUES_FILE,
    input_values,
    module_dir,
    module_inputs,
    resource_name,
    root_module,
)
from schemas.project import ProjectSpec, Provider
from tests.factories import project_spec
from tests.terraform_tools import offline_environment, planned, terraform

KEY = ProjectKey("apps", "o4o", "uid-1")
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ6Xq4dpzJ8FHKP3bPpk0rPcvXn7mxbl0YjXHzr2fX9c codeb-operator"
OFFLINE = {"skip_credentials_validation": True, "skip_requesting_account_id": True,
           "skip_metadata_api_check": True, "skip_region_validation": True}  # fmt: skip


def workspace(root: Path, inputs_over: dict[str, Any] | None = None, **servers: Any) -> tuple[Path, dict[str, str]]:
    on_lightsail = {"provider": "lightsail", "region": "ap-northeast-2", "runtime": "quadlet"} | servers
    spec = ProjectSpec.model_validate(project_spec(slug="o4o", servers=on_lightsail))
    inputs = module_inputs(KEY, spec.servers, 4100, PUBLIC_KEY) | (inputs_over or {})
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(module_dir(Provider.lightsail), root / "module")
    # Planning offline only (a real run validates its credentials): Terraform's override file merges into the
    # module's own provider block.
    (root / "module" / "offline_override.tf.json").write_text(json.dumps({"provider": {"aws": OFFLINE}}))
    (root / "main.tf.json").write_text(json.dumps(root_module(inputs, backend=None), indent=2))
    (root / INPUT_VALUES_FILE).write_bytes(input_values(inputs))
    env = offline_environment(root)
    terraform(root, "init", "-input=false", "-backend=false", env=env)
    return root, env


def creates(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        change["address"].removeprefix("module.project."): change["change"]["after"]
        for change in plan["resource_changes"]
        if change["change"]["actions"] == ["create"]
    }


@pytest.fixture(scope="module")
def one_host(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    return workspace(tmp_path_factory.mktemp("lightsail") / "one", count=1, loadBalancer={"enabled": True})


def test_the_module_validates_and_plans_hosts_ports_and_a_balancer(one_host: tuple[Path, dict[str, str]]) -> None:
    root, env = one_host
    assert json.loads(terraform(root, "validate", "-json", env=env).stdout)["valid"] is True
    made = creates(planned(root, env))
    assert sorted(made) == [
        "aws_lightsail_instance.hosts[0]", "aws_lightsail_instance_public_ports.hosts[0]",
        "aws_lightsail_key_pair.operator", "aws_lightsail_lb.front[0]", "aws_lightsail_lb_attachment.hosts[0]",
        "aws_lightsail_static_ip.hosts[0]", "aws_lightsail_static_ip_attachment.hosts[0]",
    ]  # fmt: skip
    instance = made["aws_lightsail_instance.hosts[0]"]
    assert (instance["name"], instance["availability_zone"], instance["blueprint_id"], instance["bundle_id"]) == (
        f"{resource_name(KEY)}-0", "ap-northeast-2a", "ubuntu_24_04", "small_3_0")  # fmt: skip
    assert PUBLIC_KEY in instance["user_data"] and instance["tags"] == {"codeb.dev/project": "apps/o4o"}
    ports = made["aws_lightsail_instance_public_ports.hosts[0]"]["port_info"]
    anywhere = ("0.0.0.0/0",)
    assert sorted((p["from_port"], p["to_port"], p["protocol"], tuple(p["cidrs"])) for p in ports) == [
        (22, 22, "tcp", anywhere), (80, 80, "tcp", anywhere), (443, 443, "tcp", anywhere)]  # fmt: skip
    balancer = made["aws_lightsail_lb.front[0]"]
    assert (balancer["instance_port"], balancer["health_check_path"]) == (4100, "/api/health")


def test_three_hosts_plan_exactly_two_more_instances_and_attachments(
    one_host: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, env = one_host
    three, env3 = workspace(tmp_path / "three", count=3, loadBalancer={"enabled": True})
    added = sorted(set(creates(planned(three, env3))) - set(creates(planned(root, env))))
    assert added == [
        f"{kind}[{i}]" for kind in ("aws_lightsail_instance.hosts", "aws_lightsail_instance_public_ports.hosts",
                                    "aws_lightsail_lb_attachment.hosts", "aws_lightsail_static_ip.hosts",
                                    "aws_lightsail_static_ip_attachment.hosts") for i in (1, 2)
    ]  # fmt: skip


def test_without_a_balancer_nothing_of_one_is_planned(tmp_path: Path) -> None:
    root, env = workspace(tmp_path / "plain", count=2)
    assert not [address for address in creates(planned(root, env)) if "_lb" in address]


# What a tenant's strings could carry if Terraform evaluated them: a template reading the operator's files,
# a template directive, quotes, a newline and an escaped template.
PAYLOADS = ['${file("/etc/hostname")}', '%{ for x in ["a"] }${x}%{ endfor }', 'say "hi"\nand \\ more', "$${x}"]


def test_no_input_is_evaluated_by_the_real_terraform(tmp_path: Path) -> None:
    """Every string reaches the plan exactly as given: Terraform reads tfvars values, it does not evaluate them."""
    over = {"ssh_public_key": f"{PUBLIC_KEY} {PAYLOADS[0]}", "user_data": "\n".join(PAYLOADS),
            "tags": {f"k{i}": payload for i, payload in enumerate(PAYLOADS)}}  # fmt: skip
    root, env = workspace(tmp_path / "hostile", over, count=1)
    made = creates(planned(root, env))
    assert made["aws_lightsail_key_pair.operator"]["public_key"] == over["ssh_public_key"]
    instance = made["aws_lightsail_instance.hosts[0]"]
    assert instance["user_data"] == over["user_data"] and instance["tags"] == over["tags"]
