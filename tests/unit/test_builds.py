"""Builds from git, decided on plain data (`controller.loop.builds`): recorded first, superseded, and never
deployed before they succeed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from controller.errors import PermanentError, RetryableError
from controller.loop import builds
from controller.loop.naming import ProjectKey
from controller.loop.planner import Component, Observation, Verb, plan_deletion
from controller.specs.builds import PRESETS, credential_files, preset
from schemas.project import GitSource, HookRun, ProjectSpec, Template
from tests.factories import project_spec

KEY = ProjectKey("apps", "shop", "uid-1")
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
SHA = "0123456789abcdef0123456789abcdef01234567"
HOSTS = ["10.0.0.2", "10.0.0.1"]


def spec(revision: str = SHA, **git: Any) -> ProjectSpec:
    source = {"git": {"url": "https://git.example.com/acme/shop.git", **git}}
    servers = {"provider": "existing", "runtime": "quadlet", "hosts": HOSTS, "ssh": {"secretRef": "key"}}
    return ProjectSpec.model_validate(project_spec(project={"slug": "shop", "source": source, "revision": revision},
                                                   servers=servers))  # fmt: skip


def succeeded(run: HookRun, commit: str = SHA) -> HookRun:
    return run.model_copy(update={"result": "Succeeded", "message": f"STEP 2/2\nbuilt x from commit {commit}"})


def test_a_build_is_recorded_first_then_followed_and_only_a_success_is_deployed() -> None:
    first = builds.due(spec(), KEY, None, HOSTS, NOW)
    record = first.status
    assert record is not None and first.follow is None and first.stop is None  # recorded, not started
    assert record.result == "Running" and record.image == f"localhost/codeb/apps/shop:{record.run_id}"
    assert [h.name for h in record.hosts] == ["10.0.0.1", "10.0.0.2"]
    assert builds.deployable(spec(), record) is None  # nothing built yet: nothing to run
    again = builds.due(spec(), KEY, record, HOSTS, NOW)
    assert again.follow == record and again.status == record  # the same inputs: followed, not recorded anew
    half = builds.followed(record, [succeeded(record.hosts[0]), record.hosts[1]], NOW)
    assert half.result == "Running" and half.message == "building on 10.0.0.2"
    waiting = record.hosts[1].model_copy(update={"message": "Secret apps/git does not exist"})
    assert builds.followed(record, [record.hosts[0], waiting], NOW).message == (
        "building on 10.0.0.1, 10.0.0.2; 10.0.0.2: Secret apps/git does not exist"
    )
    done = builds.followed(record, [succeeded(h) for h in record.hosts], NOW)
    assert (done.result, done.commit) == ("Succeeded", SHA)
    # A step of the repository's that prints a lookalike line before the script's own changes nothing.
    lookalike = f"built x from commit {'f' * 40}\nSTEP 2/2\nbuilt x from commit {SHA}\n(exit code 0)"
    runs = [h.model_copy(update={"result": "Succeeded", "message": lookalike}) for h in record.hosts]
    assert builds.followed(record, runs, NOW).commit == SHA
    deployed = builds.deployable(spec(), done)
    assert deployed is not None and deployed.project.source.image == record.image
    assert deployed.project.source.git is None and deployed.project.revision == SHA
    assert builds.condition(done)[:2] == (True, "Built")


def test_a_failed_build_keeps_the_last_good_image_and_a_newer_revision_supersedes_a_running_one() -> None:
    good = builds.followed(builds.due(spec(), KEY, None, HOSTS, NOW).status,  # type: ignore[arg-type]
                           [succeeded(HookRun(name=h, result="Running")) for h in sorted(HOSTS)], NOW)  # fmt: skip
    newer = builds.due(spec("fedcba9"), KEY, good, HOSTS, NOW)
    assert newer.status is not None and newer.stop is None and newer.status.run_id != good.run_id
    assert newer.status.last_succeeded == good.last_succeeded
    broken = HookRun(name="10.0.0.1", result="Failed", message="Error: building at STEP 2: exit status 1")
    failed = builds.followed(newer.status, [broken, newer.status.hosts[1]], NOW)
    assert failed.result == "Failed" and "exit status 1" in failed.message
    kept = builds.deployable(spec("fedcba9"), failed)
    assert kept is not None and kept.project.source.image == good.image and kept.project.revision == SHA
    ok, reason, message = builds.condition(failed)
    assert (ok, reason) == (False, "BuildFailed") and f"{SHA} keeps serving" in message
    # A newer revision while one still builds: the running one is stopped first.
    running = builds.due(spec("abcdef1"), KEY, newer.status, HOSTS, NOW)
    assert running.stop == newer.status and running.status is not None and running.status.revision == "abcdef1"
    # A host that joins after a success is a new build (its units need the image); one that leaves, or does
    # not answer for a while, is not (the others keep theirs, and the same commit is not rolled out anew).
    assert builds.due(spec(), KEY, good, [*HOSTS, "10.0.0.3"], NOW).status != good
    assert builds.due(spec(), KEY, good, HOSTS[:1], NOW).status == good
    assert builds.due(spec(), KEY, None, [], NOW).status is None


def test_with_a_registry_one_host_builds_and_pushes_and_every_host_runs_the_digest_it_pushed() -> None:
    repository = "registry.example.com:5000/codeb/apps/shop"
    step = builds.due(spec(), KEY, None, HOSTS, NOW, repository=repository)
    record = step.status
    assert record is not None and record.pushed_to == repository
    assert record.image == f"{repository}:{record.run_id}" and [h.name for h in record.hosts] == ["10.0.0.1"]
    digest = "sha256:" + "ab" * 32
    pushed = HookRun(name="10.0.0.1", result="Succeeded",
                     message=f"pushed sha256:{'0' * 64}\npushed {digest}\nbuilt x from commit {SHA}")  # fmt: skip
    done = builds.followed(record, [pushed], NOW)
    assert done.result == "Succeeded" and done.last_succeeded is not None
    assert done.last_succeeded.image == f"{repository}@{digest}"  # the script's own line: the last one
    deployed = builds.deployable(spec(), done)
    assert deployed is not None and deployed.project.source.image == f"{repository}@{digest}"
    # A run that says it built but not what it pushed did not deliver anything the hosts can pull.
    silent = builds.followed(record, [succeeded(record.hosts[0])], NOW)
    assert silent.result == "Failed" and "did not report the digest" in silent.message
    assert silent.last_succeeded is None
    # A host that joins pulls the digest: no new build, no new rollout of the same commit.
    assert builds.due(spec(), KEY, done, [*HOSTS, "10.0.0.0"], NOW, repository=repository).status == done
    # One still running when the Platform's registry changes has nowhere to push: built anew, the old one stopped.
    moved = builds.due(spec(), KEY, record, HOSTS, NOW, repository="other.example.com/codeb/apps/shop")
    assert moved.stop == record and moved.status is not None and moved.status.run_id != record.run_id
    assert builds.due(spec(), KEY, record, HOSTS, NOW, repository=repository).follow == record


def test_the_commit_is_the_revision_only_when_it_is_one_and_paths_stay_inside() -> None:
    assert builds.wanted_commit(spec(SHA)) == SHA and builds.wanted_commit(spec("abc1234")) == "abc1234"
    assert builds.wanted_commit(spec("release-2")) == ""  # a name: the ref's head
    for bad in ({"context": "../up"}, {"context": "/etc"}, {"containerfile": "a/../../b"}, {"context": ".git"},
                {"ref": "--upload-pack=x"}, {"buildArgs": {"A B": "x"}},
                {"url": "http://plain.example.com/r.git"}):  # fmt: skip
        with pytest.raises(ValidationError):
            spec(**bad)


def test_every_templates_containerfile_runs_its_command_in_exec_form() -> None:
    """A CMD that is not a JSON array is run by a shell as one word (exit 127 in the container)."""
    for template in PRESETS:
        text = preset(template, GitSource(url="https://git.example.com/a/b.git", base_image="registry.local/base:1"))
        assert text.startswith("FROM registry.local/base:1\n"), template
        commands = [line.removeprefix("CMD ") for line in text.splitlines() if line.startswith("CMD ")]
        assert len(commands) == 1 and isinstance(json.loads(commands[0]), list), template
    assert preset(Template.container, GitSource(url="https://git.example.com/a/b.git")) == ""


KEY_TEXT = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n-----END OPENSSH PRIVATE KEY-----"


def test_git_credentials_come_from_the_named_secret_by_the_urls_kind_and_no_value_is_ever_said() -> None:
    with pytest.raises(ValidationError, match="credentialsSecretRef"):
        spec(url="git@git.example.com:acme/shop.git")  # ssh: a deploy key and the host's keys, or nothing
    https = spec(credentialsSecretRef="git").project.source.git
    ssh = spec(url="ssh://git@git.example.com/acme/shop.git", credentialsSecretRef="git").project.source.git
    assert https is not None and ssh is not None
    assert credential_files(GitSource(url="https://git.example.com/a.git"), None, "Secret apps/git") == {}
    assert credential_files(https, {"token": "t0k"}, "s") == {"username": "x-access-token", "token": "t0k"}
    files = credential_files(ssh, {"privateKey": KEY_TEXT, "knownHosts": "git.example.com ssh-ed25519 AAAA"}, "s")
    assert files == {"privateKey": KEY_TEXT + "\n", "knownHosts": "git.example.com ssh-ed25519 AAAA\n"}
    with pytest.raises(RetryableError, match=r"Secret apps/git \(spec.project.source.git.credentialsSecretRef\)"):
        credential_files(https, None, "Secret apps/git")
    for kind, secret in ((https, {"privateKey": KEY_TEXT}), (https, {"token": "two\nlines"}),
                         (ssh, {"token": "t0k"}), (ssh, {"privateKey": KEY_TEXT}),
                         (ssh, {"privateKey": "not-a-key", "knownHosts": "h k"})):  # fmt: skip
        with pytest.raises(PermanentError) as refused:
            credential_files(kind, secret, "Secret apps/git")
        assert all(value not in str(refused.value) for value in secret.values())


def test_a_project_that_built_has_its_workload_deleted_even_when_none_ever_ran() -> None:
    """Every build failed, so no unit or Deployment exists: teardown still calls the workload's delete, which
    removes the builds' runs and images where they ran; a Project that never built leaves it alone."""
    nothing = Observation()
    assert plan_deletion({Component.workload: nothing}, retain_data=True).actions == []
    left = builds.with_builds_left(nothing)
    assert [(a.component, a.verb) for a in plan_deletion({Component.workload: left}, True).actions] == [
        (Component.workload, Verb.delete)
    ]
    running = Observation(state={"image": "x"}, healthy=True)
    assert builds.with_builds_left(running).state == running.state  # what it saw stays as it was
