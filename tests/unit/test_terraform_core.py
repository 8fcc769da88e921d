"""What Terraform is given and what is read back from it, with plain data (`controller.specs.terraform`)."""

from __future__ import annotations

import base64
import gzip
import json
from datetime import UTC, datetime
from typing import Any

import asyncssh
import pytest

from controller.clients.ssh import Login
from controller.drivers.terraform import _public_key
from controller.loop.naming import ProjectKey
from controller.specs.terraform import (
    NAME_LIMIT,
    STATE_LIMIT,
    backend_settings,
    config_hash,
    diagnostics,
    input_values,
    legacy_resource_name,
    lock_info,
    name_in_state,
    read_outputs,
    resource_name,
    root_module,
    state_suffix,
    stored_state,
    summarize_plan,
)

AT = datetime(2026, 11, 24, tzinfo=UTC)


def change(address: str, *actions: str, after: Any = None) -> dict[str, Any]:
    return {"address": address, "change": {"actions": list(actions), "before": None, "after": after}}


def test_a_plan_is_counted_by_resource_and_its_id_names_exactly_its_changes() -> None:
    shown = {"resource_changes": [
        change("vultr_instance.hosts[2]", "create", after={"label": "c"}),
        change("vultr_instance.hosts[0]", "no-op"),
        change("vultr_firewall_rule.allowed[\"443\"]", "update"),
        change("vultr_load_balancer.front[0]", "delete", "create"),
        change("vultr_instance.hosts[3]", "delete"),
        change("data.vultr_os.ubuntu", "read"),
    ]}  # fmt: skip
    summary = summarize_plan(shown, "h1", AT)
    assert (summary.add, summary.change, summary.destroy) == (2, 1, 2)
    assert [(c.address, c.action) for c in summary.resources] == [
        ('vultr_firewall_rule.allowed["443"]', "update"), ("vultr_instance.hosts[2]", "create"),
        ("vultr_instance.hosts[3]", "delete"), ("vultr_load_balancer.front[0]", "replace"),
    ]  # fmt: skip
    # The same changes in another order are the same plan; another value, or other inputs, another.
    reordered = {"resource_changes": list(reversed(shown["resource_changes"]))}
    assert summarize_plan(reordered, "h1", AT).id == summary.id
    other = json.loads(json.dumps(shown).replace('"label": "c"', '"label": "d"'))
    assert summarize_plan(other, "h1", AT).id != summary.id and summarize_plan(shown, "h2", AT).id != summary.id
    assert len(summary.id) == 12 and summarize_plan({"resource_changes": []}, "h1", AT).resources == []


def test_errors_are_read_from_terraforms_json_stream_one_line_each() -> None:
    lines = [
        json.dumps({"@level": "info", "@message": "Terraform 1.11.4"}),
        "not json at all",
        json.dumps({"@level": "error", "@message": "Error: Invalid region", "diagnostic": {
            "severity": "error", "summary": "invalid region", "detail": "ap-nowhere-1 is\n  not   valid",
            "address": "module.project.aws_lightsail_instance.hosts[0]"}}),
        json.dumps({"@level": "error", "@message": "Error: x", "diagnostic": {
            "summary": "Call to unknown function", "range": {"filename": "module/main.tf", "start": {"line": 22}}}}),
    ]  # fmt: skip
    assert diagnostics(lines) == (
        "invalid region: ap-nowhere-1 is not valid (at module.project.aws_lightsail_instance.hosts[0]); "
        "Call to unknown function (at module/main.tf:22)"
    )
    assert diagnostics(lines * 3) == diagnostics(lines)  # repeated diagnostics are said once
    assert diagnostics(lines[:2]) == ""


def test_a_lease_reads_as_its_lock_or_as_free() -> None:
    info = {"ID": "6ae0b1e0", "Operation": "OperationTypeApply", "Who": "root@vm", "Created": "2026-11-24T01:26:57Z"}
    held = {"metadata": {"annotations": {"app.terraform.io/lock-info": json.dumps(info)}},
            "spec": {"holderIdentity": "6ae0b1e0"}}  # fmt: skip
    lock = lock_info(held)
    assert lock is not None and (lock.id, lock.operation, lock.who, lock.created) == (
        "6ae0b1e0", "apply", "root@vm", "2026-11-24T01:26:57Z")  # fmt: skip
    assert lock_info({"metadata": {}, "spec": {}}) is None and lock_info(None) is None
    garbled = {"metadata": {"annotations": {"app.terraform.io/lock-info": "{"}}, "spec": {"holderIdentity": "x"}}
    assert lock_info(garbled) == type(lock)("x", "unknown", "unknown", "")


def test_outputs_become_the_status_addresses() -> None:
    shown = {"public_addresses": {"value": ["203.0.113.5", "203.0.113.6"]},
             "private_addresses": {"value": ["10.0.0.5", ""]}, "load_balancer_address": {"value": None}}  # fmt: skip
    outputs = read_outputs(shown)
    assert outputs.public_addresses == ["203.0.113.5", "203.0.113.6"] and outputs.private_addresses == ["10.0.0.5"]
    assert outputs.load_balancer_address is None and read_outputs({}).public_addresses == []


def test_the_root_keeps_state_in_the_cluster_and_passes_the_inputs_only() -> None:
    key = ProjectKey("shop-team", "web", "u")
    backend = backend_settings("codeb-system", state_suffix(key), None)
    root = root_module({"host_count": 2}, backend)
    assert root["terraform"]["backend"]["kubernetes"] == {
        "secret_suffix": "shop-team.web", "namespace": "codeb-system", "in_cluster_config": True}  # fmt: skip
    # The module gets the root's variables, never the values (Terraform JSON evaluates its strings).
    assert root["module"]["project"] == {"source": "./module", "host_count": "${var.host_count}"}
    assert root["variable"] == {"host_count": {}}
    assert json.loads(input_values({"host_count": 2})) == {"host_count": 2}
    assert root["output"]["public_addresses"] == {"value": "${module.project.public_addresses}"}
    assert "provider" not in root  # the module configures its provider; credentials come from the environment
    assert backend_settings("ns", "s", "/k")["config_path"] == "/k"


def test_the_hash_changes_with_any_file_and_with_nothing_else() -> None:
    files = {"main.tf.json": b'{"a": 1}', "module/main.tf": b"resource"}
    assert config_hash(files) == config_hash(dict(reversed(list(files.items()))))
    assert config_hash(files) != config_hash(files | {"module/main.tf": b"resource2"})
    # Names and contents cannot be shifted into each other.
    assert config_hash({"ab": b"c"}) != config_hash({"a": b"bc"})


def test_the_hosts_key_carries_no_comment_of_the_key_files_author() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519", comment='${file("/var/run/secrets/token")}')
    login = Login("root", 22, key.export_private_key().decode(), "", "Secret team/deploy-key")
    public = _public_key(login)
    assert public.split() == key.export_public_key().decode().split()[:2] and "$" not in public


def test_resource_names_tell_every_project_apart_within_the_limit() -> None:
    long = "n" * 63
    pairs = [
        (ProjectKey("a-b", "c", ""), ProjectKey("a", "b-c", "")),  # the readable parts meet
        (ProjectKey(long, long + "x", ""), ProjectKey(long, long + "y", "")),  # the same after the cut
        (ProjectKey("shop", "web.eu", ""), ProjectKey("shop", "web-eu", "")),  # a dot reads as a dash
    ]
    for one, other in pairs:
        assert resource_name(one) != resource_name(other)
        # The earlier prefix, for contrast: exactly the meetings the digest ends.
        assert legacy_resource_name(one) == legacy_resource_name(other)
    for key in (key for pair in pairs for key in pair):
        name = resource_name(key)
        assert len(name) <= NAME_LIMIT and name[0].isalpha() and name.replace("-", "").isalnum() and "--" not in name
    assert resource_name(ProjectKey("shop", "web", "uid-1")) == resource_name(ProjectKey("shop", "web", "uid-2"))


def test_a_state_keeps_the_prefix_its_resources_were_made_with() -> None:
    key = ProjectKey("shop", "web", "uid-1")
    legacy, injective = legacy_resource_name(key), resource_name(key)

    def state(name: str | None) -> dict[str, Any]:
        instances = [] if name is None else [{"attributes": {"name": f"{name}-0", "id": "i-1"}}]
        return {"version": 4, "resources": [{"type": "aws_lightsail_instance", "instances": instances}]}

    assert name_in_state(key, None) == injective  # no state: a new Project
    assert name_in_state(key, state(None)) == injective  # resources declared, none made
    assert name_in_state(key, state(injective)) == injective
    assert name_in_state(key, state(legacy)) == legacy  # made by an earlier release: never renamed


def test_the_state_secret_is_read_whole_or_refused() -> None:
    state = {"version": 4, "resources": []}
    packed = base64.b64encode(gzip.compress(json.dumps(state).encode())).decode()
    assert stored_state({"data": {"tfstate": packed}}) == state
    assert stored_state(None) is None and stored_state({"data": {}}) is None
    cut = base64.b64encode(gzip.compress(json.dumps(state).encode())[:-12]).decode()
    bomb = base64.b64encode(gzip.compress(b" " * (STATE_LIMIT + 10))).decode()  # 64 MiB of blanks: 64 KiB here
    for bad in (cut, bomb, "not base64!", base64.b64encode(b"plain").decode()):
        with pytest.raises(ValueError, match="does not hold a whole gzip-compressed JSON state"):
            stored_state({"data": {"tfstate": bad}})
