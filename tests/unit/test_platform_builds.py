"""Runtime kubernetes builds on its Platform's builder: where, with which key, in which storage, or why not."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from controller.clients.ssh import HostAccess, Result
from controller.drivers.clusters import TargetClusters
from controller.drivers.kubernetes import KubernetesWorkload
from controller.drivers.platform_builds import PlatformBuilds, build_storage
from controller.errors import PermanentError, RetryableError
from controller.loop.build_step import build_step
from controller.loop.interface import BuildSource, DriverContext
from controller.loop.naming import ProjectKey
from controller.loop.passes import Pass, ProjectInput
from controller.loop.planner import Component, plan
from controller.loop.summary import summarize
from controller.specs.builds import build_argv
from schemas.platform import PlatformSpec
from schemas.project import Allocations, BuildStatus, GitSource, HookRun, ProjectSpec, ProjectStatus, Template
from tests.factories import project_spec

KEY = ProjectKey("team-a", "shop", "uid-1")
BUILDER = {"host": "10.0.0.9", "user": "builder", "sshSecretRef": {"namespace": "codeb-system", "name": "builder"}}
REGISTRY = {"host": "registry.example.com:5000"}
KEY_PEM = "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----\n"


class Platforms:
    def __init__(self, spec: dict[str, Any] | None, secret: dict[str, str] | None = None) -> None:
        self.spec, self.secret, self.secrets_read = spec, secret, []

    async def read_platform(self, name: str) -> dict[str, Any] | None:
        return {"spec": self.spec} if name == "shared" and self.spec is not None else None

    async def read_secret(self, namespace: str, name: str, project: str | None = None) -> dict[str, str] | None:
        self.secrets_read.append((namespace, name, project))
        return self.secret


class Repository:
    async def repository(self, ctx: DriverContext) -> str:
        return f"{REGISTRY['host']}/codeb/{ctx.key.namespace}/{ctx.key.name}"

    async def credential(self, ctx: DriverContext, image: str) -> tuple[str, str, str]:
        return REGISTRY["host"], f"{ctx.key.namespace}/{ctx.key.name}", "the-projects-registry-password"


class Ssh:
    def __init__(self, fails: bool = False) -> None:
        self.ran: list[tuple[HostAccess, str]] = []
        self.stdin: list[str | None] = []
        self.fails = fails

    async def run(self, access: HostAccess, command: str, stdin: str | None = None, **_: Any) -> Result:
        if self.fails:
            raise RetryableError("10.0.0.9: connection refused")
        self.ran.append((access, command))
        self.stdin.append(stdin)
        return Result(0, "", "")


class Builds(PlatformBuilds):
    def __init__(self, platforms: Platforms | None, ssh: Ssh | None = None) -> None:
        self._platforms, self._pulls, self._ssh = platforms, Repository(), ssh or Ssh()  # type: ignore[assignment]


def spec(platform: str | None = "shared") -> ProjectSpec:
    servers: dict[str, Any] = {"provider": "existing", "runtime": "kubernetes"}
    if platform:
        servers["platform"] = platform
    git = {"url": "https://git.example.com/shop.git", "ref": "main"}
    return ProjectSpec.model_validate(project_spec(project={"slug": "shop", "source": {"git": git}}, servers=servers))


def context(platform: str | None = "shared") -> DriverContext:
    return DriverContext(KEY, Allocations(port=4000), servers=spec(platform).servers)


async def test_the_platforms_builder_is_where_builds_run_logged_in_with_the_platforms_key() -> None:
    platforms = Platforms({"builder": BUILDER, "registry": REGISTRY}, {"privateKey": KEY_PEM})
    builds = Builds(platforms)
    assert await builds.build_places(context()) == ["10.0.0.9"]
    login = await builds._login(context())
    assert (login.user, login.port, login.private_key) == ("builder", 22, KEY_PEM)
    # The Platform's Secret, read as the admin's (no Project is checked against it), named to the Project
    # without its namespace and name.
    assert platforms.secrets_read == [("codeb-system", "builder", None)]
    assert login.key_source == "Platform shared's builder key (spec.builder.sshSecretRef)"
    platforms.secret = None
    with pytest.raises(RetryableError, match=r"Platform shared's builder key .* has no key privateKey") as missing:
        await builds._login(context())
    assert missing.value.reason == "SSHKeyMissing" and "codeb-system" not in missing.value.message


@pytest.mark.parametrize(
    ("platform", "platform_spec", "names"),
    [
        (None, None, "spec.servers.platform names none"),
        ("shared", {"registry": REGISTRY}, "Platform shared names no builder and registry"),
    ],
)
async def test_without_a_builder_source_git_is_refused_naming_both_ways_that_work(
    platform: str | None, platform_spec: dict[str, Any] | None, names: str
) -> None:
    with pytest.raises(PermanentError) as refused:
        await Builds(Platforms(platform_spec)).build_places(context(platform))
    assert refused.value.reason == "SourceNotBuildable"
    assert names in refused.value.message and "(spec.builder, spec.registry)" in refused.value.message
    assert "build the image in CI, push it" in refused.value.message
    if platform_spec is not None:  # its repository, where a team's CI pushes with the Project's credential
        assert f"push it to {REGISTRY['host']}/codeb/team-a/shop:<tag>" in refused.value.message


async def test_a_missing_platform_is_waited_for_and_an_invalid_builder_is_the_admins_to_fix() -> None:
    with pytest.raises(RetryableError, match=r"Platform shared .* does not exist"):
        await Builds(Platforms(None)).build_places(context())
    bad = {"builder": {**BUILDER, "host": "10.0.0.9; rm -rf /"}, "registry": REGISTRY}
    with pytest.raises(PermanentError, match=r"Platform shared's spec\.builder is invalid") as invalid:
        await Builds(Platforms(bad)).build_places(context())
    assert invalid.value.reason == "PlatformInvalid"


async def test_a_project_that_cannot_build_is_not_ready_with_the_reason_and_nothing_is_recorded() -> None:
    work = Pass(observed={})
    project = ProjectInput(KEY, 3, spec(None), ProjectStatus())
    built = await build_step(project, Builds(Platforms(None)), context(None), work, True, datetime.now(UTC))
    assert built is None and work.build_failed is not None
    assert work.build_failed[0] == "SourceNotBuildable" and "names none" in work.build_failed[1]
    # The Project is not Ready, and Stalled: waiting will not help, its spec or its Platform must change.
    status = summarize(project, Allocations(port=4000), {}, plan({}, {}), work, True)
    ready = next(c for c in status.conditions if c.type == "Ready")
    stalled = next(c for c in status.conditions if c.type == "Stalled")
    assert (ready.status, ready.reason, stalled.reason) == ("False", "SourceNotBuildable", "SourceNotBuildable")
    assert "names none" in ready.message
    # A Platform that cannot be read now: waited on, not failed.
    work = Pass(observed={})
    project = ProjectInput(KEY, 3, spec(), ProjectStatus())
    assert await build_step(project, Builds(Platforms(None)), context(), work, True, datetime.now(UTC)) is None
    assert work.build_failed is None and "does not exist" in work.waiting[Component.build]


async def test_a_build_there_pushes_from_its_namespaces_own_storage_and_deleting_forgets_it_there() -> None:
    git = GitSource(url="https://git.example.com/shop.git", ref="main")
    argv = build_argv(git, "", "registry.example.com:5000/codeb/team-a/shop:r1", push=True,
                      store=build_storage(KEY.namespace))  # fmt: skip
    assert argv[-2:] == ["push", "/var/lib/containers/codeb-builds/team-a"]  # $9, $10: before any build arg
    ssh = Ssh()
    builds = Builds(Platforms({"builder": BUILDER, "registry": REGISTRY}, {"privateKey": KEY_PEM}), ssh)
    await builds.forget_platform_builds(context())
    [(access, line)] = ssh.ran
    assert access.address == "10.0.0.9" and access.user == "builder"
    root = "--root /var/lib/containers/codeb-builds/team-a --runroot /run/codeb-builds/team-a"
    assert f"podman {root} images -q --filter reference=localhost/codeb/team-a/shop" in line
    assert f"reference=registry.example.com:5000/codeb/team-a/shop | xargs -r podman {root} rmi" in line
    assert "/var/lib/codeb/builds/team-a.shop" in line
    # A builder that cannot be reached never holds the deletion: a Warning says what stays.
    told: list[tuple[str, str]] = []
    down = Builds(Platforms({"builder": BUILDER, "registry": REGISTRY}, {"privateKey": KEY_PEM}), Ssh(fails=True))
    ctx = DriverContext(KEY, Allocations(port=4000), servers=spec().servers, notify=lambda *said: told.append(said))
    await down.forget_platform_builds(ctx)
    assert told and told[0][0] == "BuildsNotRemoved" and "connection refused" in told[0][1]
    # No builder: nothing was built there, nothing is said.
    await Builds(Platforms({"registry": REGISTRY})).forget_platform_builds(ctx)
    assert len(told) == 1


def test_a_builder_needs_the_registry_its_builds_are_pushed_to() -> None:
    with pytest.raises(ValidationError, match="builder needs registry"):
        PlatformSpec.model_validate({"builder": BUILDER})
    assert PlatformSpec.model_validate({"builder": BUILDER, "registry": REGISTRY}).builder is not None


async def test_the_kubernetes_driver_starts_a_build_on_the_builder_with_the_projects_own_credentials() -> None:
    """Through the runtime's own driver, as wired: logged in with the Platform's key, the private repository's
    token read from the Project's namespace (as the Project may read it) and the registry's credential, both
    on the command's stdin only, the build in the namespace's storage."""
    token = "the-projects-git-token"
    read: list[tuple[str, str, str | None]] = []

    async def project_secrets(namespace: str, name: str, project: str | None = None) -> dict[str, str] | None:
        read.append((namespace, name, project))
        return {"token": token}

    ssh = Ssh()
    platforms = Platforms({"builder": BUILDER, "registry": REGISTRY}, {"privateKey": KEY_PEM})
    clusters = TargetClusters(None, read_secret=project_secrets)  # type: ignore[arg-type]  # no cluster is read
    driver = KubernetesWorkload(clusters, Repository(), ssh, platforms, read_secret=project_secrets)  # type: ignore[arg-type]
    git = GitSource(url="https://git.example.com/shop.git", ref="main", credentialsSecretRef="git-token")
    repository = await Repository().repository(context())
    build = BuildStatus(
        inputs="x",
        run_id="0123456789ab",
        image=f"{repository}:0123456789ab",
        pushed_to=repository,
        result="Running",
        hosts=[HookRun(name="10.0.0.9", result="Running", run_id="0123456789ab")],
    )
    await driver.follow_build(context(), BuildSource(git, "", Template.container), build)
    assert read == [("team-a", "git-token", "shop")]
    [(access, line)] = ssh.ran
    assert (access.address, access.user, access.private_key) == ("10.0.0.9", "builder", KEY_PEM)
    assert "/var/lib/containers/codeb-builds/team-a" in line and "/run/codeb/git/team-a.shop." in line
    assert token not in line and "the-projects-registry-password" not in line  # never in a command line
    delivered = dict(entry.split(" ") for entry in (ssh.stdin[0] or "").splitlines())
    decoded = {name: base64.b64decode(value).decode() for name, value in delivered.items()}
    assert decoded["token"] == token  # the git credential, and the Project's own for its repository alone
    auth = json.loads(decoded["registryAuth"])["auths"][REGISTRY["host"]]["auth"]
    assert base64.b64decode(auth).decode() == "team-a/shop:the-projects-registry-password"
