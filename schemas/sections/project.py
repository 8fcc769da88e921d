"""Section ``project``: what the application is, where its code comes from, and how a release rolls out."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from schemas.base import (
    CONTAINER_IMAGE,
    CONTAINER_IMAGE_MAX_LENGTH,
    DNS_LABEL,
    ENV_VAR_NAME,
    PRINTABLE,
    RELATIVE_PATH,
    REVISION,
    CodebModel,
    Rule,
    immutable,
    matches,
)
from schemas.common import RENAME_WHY, SLUG_MAX_LENGTH, Template


class GitSource(CodebModel):
    rules = (
        Rule(
            cel="!has(self.buildArgs) || self.buildArgs.all(k, k.matches('" + ENV_VAR_NAME + "'))",
            message="build argument names must match [A-Za-z_][A-Za-z0-9_]* (letters, digits, underscore)",
            field_path=".buildArgs",
            check=lambda g: all(matches(ENV_VAR_NAME, k) for k in g.build_args),
        ),
        Rule(
            cel="!(self.url.startsWith('ssh://') || self.url.startsWith('git@')) || has(self.credentialsSecretRef)",
            message=(
                "an ssh:// or git@ url needs credentialsSecretRef: a Secret with privateKey (a deploy key) and "
                "knownHosts (the Git host's keys)"
            ),
            field_path=".credentialsSecretRef",
            check=lambda g: not g.url.startswith(("ssh://", "git@")) or g.credentials_secret_ref is not None,
        ),
    )

    url: str = Field(
        description="Git repository to build from, https:// or ssh (git@host:org/repo.git).",
        pattern=r"^(https://|ssh://|git@)[^\s\x00-\x1f\x7f]+$",
        max_length=512,
    )
    ref: str = Field(
        "main",
        description=(
            "Branch or tag to build. With a commit as project.revision (7 to 40 hex digits), that commit of "
            "this branch is built; otherwise the branch's head when the build starts."
        ),
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9._/-]*$",
        max_length=255,
    )
    context: str = Field(
        ".",
        description="Directory of the repository to build in (relative; '..' is refused).",
        pattern=RELATIVE_PATH,
        max_length=255,
    )
    containerfile: str = Field(
        "Containerfile",
        description="The Containerfile (or Dockerfile), relative to context; it must be a file in the repository.",
        pattern=RELATIVE_PATH,
        max_length=255,
    )
    build_args: dict[str, Annotated[str, Field(pattern=PRINTABLE, max_length=1024)]] = Field(
        default_factory=dict,
        description="--build-arg values (not secret: they are recorded in the image's history).",
        max_length=32,
    )  # fmt: skip
    timeout_seconds: int = Field(
        1800, description="Seconds a build may run (the clone and every host's build) before it fails.", ge=30,
        le=4 * 3600,
    )  # fmt: skip
    base_image: str | None = Field(
        None,
        description=(
            "With template nodejs, nextjs, python or static and no Containerfile in the repository: the image "
            "the template's Containerfile starts FROM (default: Docker Hub's node:22-slim or python:3.12-slim)."
        ),
        pattern=CONTAINER_IMAGE,
        max_length=CONTAINER_IMAGE_MAX_LENGTH,
    )
    credentials_secret_ref: str | None = Field(
        None,
        description=(
            "Secret in the Project's namespace that reads a private repository. For https: key `token` (a "
            "personal or deploy token; key `username` optional, default x-access-token). For ssh (required): "
            "keys `privateKey` (a deploy key) and `knownHosts` (the Git host's public keys; any other host key "
            "is refused). It reaches the build's git only, never the Containerfile's steps."
        ),
        pattern=DNS_LABEL,
        max_length=253,
    )
    webhook_secret_ref: str | None = Field(
        None,
        description=(
            "Secret (key `secret`) shared with the Git host's push webhook, sent to "
            "/push/<namespace>/<name> on the operator's inbound listener: GitHub signs with it (HMAC-SHA256), "
            "GitLab sends it as its token. A push to ref then sets project.revision to the pushed commit."
        ),
        pattern=DNS_LABEL,
        max_length=253,
    )


class Source(CodebModel):
    rules = (
        Rule(
            cel="[has(self.image), has(self.git), has(self.command)].filter(x, x).size() == 1",
            message="set exactly one of source.image, source.git or source.command",
            field_path="",
            check=lambda s: [s.image is not None, s.git is not None, s.command is not None].count(True) == 1,
        ),
        Rule(
            cel="!has(self.workingDir) || has(self.command)",
            message="workingDir goes with command (the directory the command runs in)",
            field_path=".workingDir",
            check=lambda s: s.working_dir is None or s.command is not None,
        ),
    )

    image: str | None = Field(
        None,
        description="Container image to run, e.g. ghcr.io/acme/shop:1.4.2 (runtimes quadlet and kubernetes).",
        pattern=CONTAINER_IMAGE,
        max_length=CONTAINER_IMAGE_MAX_LENGTH,
    )
    git: GitSource | None = Field(None, description="Git source to build. Exclusive with image and command.")
    command: list[Annotated[str, Field(pattern=PRINTABLE, min_length=1, max_length=1024)]] | None = Field(
        None,
        description=(
            "Program and arguments run as a supervised process on the operator's machine (runtime local), "
            "e.g. [python3, app.py]. It receives the connection Secret as environment and PORT to listen on."
        ),
        min_length=1,
        max_length=64,
    )
    working_dir: str | None = Field(
        None,
        description=(
            "Directory the command runs in; a relative path is taken from the operator's local root "
            "(CODEB_LOCAL_ROOT, by default the directory the operator started in)."
        ),
        pattern=PRINTABLE,
        min_length=1,
        max_length=1024,
    )


class HealthGate(CodebModel):
    rules = (
        Rule(
            cel="self.timeoutSeconds <= self.intervalSeconds",
            message="timeoutSeconds must not be longer than intervalSeconds",
            field_path=".timeoutSeconds",
            check=lambda h: h.timeout_seconds <= h.interval_seconds,
        ),
    )

    # A check a second, three healthy in a row: a healthy release takes traffic about three seconds after its
    # port opens (kamal-proxy checks every second; the seeds ask for three successes), while a failing one
    # never does.
    interval_seconds: float = Field(1, description="Seconds between health checks of a new colour.", ge=0.1, le=300)
    timeout_seconds: float = Field(1, description="Seconds before a check counts as failed.", ge=0.1, le=120)
    healthy_threshold: int = Field(
        3, description="Consecutive healthy checks before the new colour takes traffic.", ge=1, le=20
    )
    unhealthy_threshold: int = Field(
        3, description="Consecutive failed checks (after the first answer) that fail the deploy.", ge=1, le=20
    )


class Rollout(CodebModel):
    health_check: HealthGate = Field(
        default_factory=HealthGate,
        description="The gate a new colour passes before the switch; it probes monitoring.healthPath.",
    )
    start_timeout_seconds: float = Field(
        300, description="Seconds the new colour has to pass the gate before the deploy fails.", ge=1, le=3600
    )
    drain_seconds: float = Field(
        30, description="Seconds the old colour keeps running after the switch, for requests in flight.", ge=0,
        le=3600,
    )  # fmt: skip
    keep_warm_seconds: float = Field(
        3600,
        description=(
            "Seconds the old colour stays running after the switch (at least drainSeconds): setting revision "
            "back within them switches back without a new start. 0 stops it once drained."
        ),
        ge=0,
        le=7 * 24 * 3600,
    )


class ProjectInfo(CodebModel):
    rules = (immutable("slug", RENAME_WHY),)

    slug: str = Field(
        description=(
            "Short DNS-label name of the application (lowercase letters, digits, '-'). "
            "PostgreSQL, Redis and bucket names are derived from it, "
            f"so it is at most {SLUG_MAX_LENGTH} characters."
        ),
        pattern=DNS_LABEL,
        min_length=2,
        max_length=SLUG_MAX_LENGTH,
    )
    display_name: str | None = Field(None, description="Human-readable name.", pattern=PRINTABLE, max_length=128)
    team: str | None = Field(
        None, description="Owning team (DNS label), for grouping and alerts.", pattern=DNS_LABEL, max_length=63
    )
    template: Template = Field(Template.container, description="How the application is built and run.")
    source: Source = Field(description="Where the application comes from: a container image or a git repository.")
    revision: str | None = Field(
        None,
        description=(
            "Revision to deploy (image tag, commit or release name: letters, digits, '.', '_', '-'); "
            "changing it starts a new deploy."
        ),
        pattern=REVISION,
        max_length=128,
    )
    rollout: Rollout = Field(
        default_factory=Rollout,
        description=(
            "How a new revision replaces the running one (runtimes local and quadlet; kubernetes rolls its Pods "
            "under the same health gate): it starts as the other colour on its own port, on every host, passes "
            "the health gate and the post-deploy hooks, then takes the traffic."
        ),
    )
