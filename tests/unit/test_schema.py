"""The models are the one definition: CRD and docs derive from them, and the operator
refuses exactly what the API server refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from controller.cli.main import generated_files, validate_documents
from controller.loop.planner import Component, desired_state
from controller.loop.status import format_validation_error
from schemas.base import CRON, matches
from schemas.crd import SchemaTranslationError, project_crd, to_structural
from schemas.platform import PlatformSpec
from schemas.project import Allocations, ProjectSpec, ProjectStatus
from tests.bad_manifests import CORPUS, BadManifest
from tests.factories import project_spec

EXAMPLES = sorted((Path(__file__).parents[2] / "manifests" / "examples").glob("*.yaml"))


def _models(root: type[BaseModel]) -> set[type[BaseModel]]:
    found = {root}
    for field in root.model_fields.values():
        for arg in _walk_types(field.annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel) and arg not in found:
                found |= _models(arg)
    return found


def _walk_types(annotation: Any) -> list[Any]:
    args = getattr(annotation, "__args__", ())
    return [annotation, *[t for a in args for t in _walk_types(a)]]


ALL_MODELS = _models(ProjectSpec) | _models(ProjectStatus) | _models(PlatformSpec)


@pytest.mark.parametrize("model", sorted(ALL_MODELS, key=lambda m: m.__name__))
def test_every_field_has_a_description(model: type[BaseModel]) -> None:
    missing = [name for name, field in model.model_fields.items() if not field.description]
    assert missing == []


def test_checked_in_crd_and_docs_match_the_models() -> None:
    for path, text in generated_files().items():
        assert path.read_text() == text, f"{path} drifted from the models: run `codeb generate`"


def test_drift_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from controller.cli import main as cli

    stale = tmp_path / "crd.yaml"
    stale.write_text("old\n")
    monkeypatch.setattr(cli, "generated_files", lambda: {stale: "new\n"})
    assert cli.main(["generate", "--check"]) == 1


def test_crd_schema_is_structural() -> None:
    def walk(node: dict[str, Any], path: str) -> None:
        assert "type" in node, path
        assert not {"$ref", "anyOf", "oneOf", "title"} & set(node), path
        assert not ("properties" in node and "additionalProperties" in node), path
        for name, child in node.get("properties", {}).items():
            walk(child, f"{path}.{name}")
        if "items" in node:
            walk(node["items"], f"{path}[]")

    schema = project_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    walk(schema["properties"]["spec"], "spec")
    walk(schema["properties"]["status"], "status")


def test_untranslatable_schema_is_refused() -> None:
    with pytest.raises(SchemaTranslationError, match="union"):
        to_structural({"anyOf": [{"type": "string"}, {"type": "integer"}]}, {})


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_examples_are_valid(path: Path) -> None:
    assert validate_documents(path.read_text()) == []


@pytest.mark.parametrize("case", CORPUS, ids=lambda c: c.id)
def test_operator_refuses_bad_manifest_naming_the_field(case: BadManifest) -> None:
    with pytest.raises(ValidationError) as exc:
        ProjectSpec.model_validate(case.build()["spec"])
    assert case.field in format_validation_error(exc.value)


def test_defaults_follow_the_seeds() -> None:
    spec = ProjectSpec.model_validate(project_spec())
    health = spec.servers.load_balancer.health_check
    assert (health.path, health.interval_seconds, health.timeout_seconds) == ("/api/health", 15, 5)
    assert (health.healthy_threshold, health.unhealthy_threshold) == (2, 3)
    assert spec.deletion_policy.value == "Retain"


@pytest.mark.parametrize(
    ("schedule", "valid"),
    [
        ("0 3 * * *", True),
        ("*/15 * * * *", True),
        ("0 0-6/2 1,15 * 1-5", True),
        ("@daily", True),
        ("60 * * * *", False),
        ("0 24 * * *", False),
        ("0 0 0 * *", False),
        ("0 0 * 13 *", False),
        ("* * * *", False),
        ("@sometimes", False),
    ],
)
def test_cron_pattern(schedule: str, valid: bool) -> None:
    assert matches(CRON, schedule) is valid


def test_round_trip_uses_camel_case() -> None:
    spec = ProjectSpec.model_validate(yaml.safe_load(EXAMPLES[0].read_text())["spec"])
    dumped = spec.model_dump(by_alias=True, exclude_none=True)
    assert "pullRequest" in dumped["environment"] and "loadBalancer" in dumped["servers"]


@pytest.mark.parametrize(("template", "port", "health"), [
    ("nextjs", 3000, "/api/health"), ("nodejs", 3000, "/api/health"), ("node", 3000, "/api/health"),
    ("python", 8000, "/api/health"), ("static", 8080, "/"), ("container", 3000, "/api/health"),
])  # fmt: skip
def test_a_template_presets_what_the_manifest_leaves_out_and_what_it_states_wins(
    template: str, port: int, health: str
) -> None:
    raw = project_spec()
    raw["project"]["template"] = template
    preset = desired_state(ProjectSpec.model_validate(raw), Allocations(port=4500))[Component.workload]
    assert (preset["healthPath"], ProjectSpec.model_validate(raw).container_port) == (health, port)
    raw |= {"resources": {"containerPort": 9000}, "monitoring": {"healthPath": "/ready"}}
    stated = ProjectSpec.model_validate(raw)
    assert (stated.container_port, stated.health_path) == (9000, "/ready")
