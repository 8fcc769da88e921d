"""The Project's status: conditions, allocations, endpoints, infrastructure, rollout and deploy history.

Typed like the spec, so the operator writes only what the CRD declares and ``kubectl get
projects`` prints it."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from schemas.base import (
    CodebModel,
)
from schemas.common import Phase


class ConditionStatus(StrEnum):
    true = "True"
    false = "False"
    unknown = "Unknown"


class Condition(CodebModel):
    type: str = Field(description="Condition type, e.g. Ready, Synced, DatabaseReady.", max_length=64)
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason for the last transition.", max_length=128)
    message: str = Field("", description="Human-readable detail.", max_length=4096)
    last_transition_time: datetime = Field(description="When status last changed.")
    observed_generation: int | None = Field(None, description="Generation the condition was computed for.")


class Allocations(CodebModel):
    port: int | None = Field(None, description="Host port allocated to the application (its blue colour).")
    alternate_port: int | None = Field(
        None, description="Port of the green colour (runtime local): where a new release starts beside the blue."
    )
    database: str | None = Field(None, description="PostgreSQL database name.")
    database_role: str | None = Field(None, description="PostgreSQL role owning the database.")
    redis_prefix: str | None = Field(None, description="Key prefix the project's Redis user may touch.")
    redis_user: str | None = Field(None, description="Redis ACL user.")
    bucket: str | None = Field(None, description="S3 bucket name.")
    connection_secret: str | None = Field(None, description="Secret holding the project's connection settings.")


class Endpoints(CodebModel):
    url: str | None = Field(None, description="Public URL of the application.")
    internal: list[str] = Field(
        default_factory=list, description="Upstream addresses (host:port) serving the application."
    )


class HostReport(CodebModel):
    address: str = Field(description="The host, as servers.hosts names it.")
    usable: bool = Field(description="Reachable over SSH, with podman and its quadlet generator.")
    podman: str | None = Field(None, description="podman's version on the host.")
    reason: str | None = Field(None, description="Why the host cannot be used, e.g. HostUnreachable or PodmanMissing.")
    message: str | None = Field(None, description="What was found, in words.")


class InfrastructureOutputs(CodebModel):
    public_addresses: list[str] = Field(default_factory=list, description="Public IP of each host.", max_length=100)
    private_addresses: list[str] = Field(
        default_factory=list, description="Private IP of each host, where the provider gives one.", max_length=100
    )
    load_balancer_address: str | None = Field(None, description="The load balancer's address, when there is one.")
    cluster_endpoint: str | None = Field(
        None, description="A VKE cluster's API server (its kubeconfig stays in the Terraform state).", max_length=253
    )


class ResourceChange(CodebModel):
    address: str = Field(description="Terraform resource address, e.g. vultr_instance.hosts[1].")
    action: str = Field(description="create, update, delete or replace.")


class PlanSummary(CodebModel):
    id: str = Field(description="Names exactly these changes: set spec.servers.approvedPlan to it to apply them.")
    add: int = Field(0, description="Resources to create.")
    change: int = Field(0, description="Resources to update in place.")
    destroy: int = Field(0, description="Resources to destroy (a replacement counts here and in add).")
    resources: list[ResourceChange] = Field(
        default_factory=list, description="Every change, by resource.", max_length=500
    )
    config_hash: str = Field(description="The module and inputs the plan was made from.")
    planned_at: datetime = Field(description="When the plan was made.")


class TerraformRun(CodebModel):
    operation: str = Field(description="plan, apply or destroy.")
    result: str = Field(description="Running, Succeeded or Failed.")
    started_at: datetime = Field(description="When the run started.")
    finished_at: datetime | None = Field(None, description="When it ended.")
    message: str = Field("", description="What Terraform said, when it failed.", max_length=4096)


class AutoscalingStatus(CodebModel):
    hosts: int = Field(description="Hosts the autoscaler decided on (between servers.min and max).", ge=1, le=100)
    decided_at: datetime | None = Field(None, description="When that number last changed.")
    requests_per_second: float | None = Field(
        None, description="The load it last read: requests per second to the Project's domains, over the last minute."
    )
    message: str | None = Field(None, description="Why the number is what it is, with the figure.", max_length=1024)


class InfrastructureStatus(CodebModel):
    applied_hash: str | None = Field(
        None, description="Hash of the module and inputs last applied: unchanged, no Terraform runs."
    )
    applied_at: datetime | None = Field(None, description="When they were applied.")
    outputs: InfrastructureOutputs = Field(
        default_factory=InfrastructureOutputs, description="What the last apply made: addresses of hosts and LB."
    )
    plan: PlanSummary | None = Field(
        None, description="The last plan with changes not applied (apply approve or observe), by resource."
    )
    last_run: TerraformRun | None = Field(None, description="The last Terraform run, or the one in progress.")


class Colour(StrEnum):
    blue = "blue"
    green = "green"

    @property
    def other(self) -> Colour:
        return Colour.green if self is Colour.blue else Colour.blue


class RolloutStep(StrEnum):
    checking = "Checking"  # the new colour runs; counting consecutive healthy checks
    hooks = "Hooks"  # the gate passed; post-deploy hooks run against the new colour
    switching = "Switching"  # the route is being pointed at the new colour
    draining = "Draining"  # the new colour serves; the old one finishes its requests
    succeeded = "Succeeded"
    failed = "Failed"
    superseded = "Superseded"  # the spec changed again before the switch


class HookRun(CodebModel):
    name: str = Field(description="The hook (features.postDeployHooks) or app (app-<name>).")
    result: str = Field(description="Running, Succeeded or Failed.")
    run_id: str | None = Field(
        None,
        description=(
            "Names this run where it runs. Recorded before the run starts: after a restart the operator finds "
            "the run again by it and never starts a hook twice."
        ),
        pattern="^[0-9a-f]{12}$",
    )
    started_at: datetime | None = Field(None, description="When the run was recorded (its timeout counts from here).")
    finished_at: datetime | None = Field(None, description="When it ended (none while it runs).")
    message: str = Field("", description="Its last output lines (secrets redacted).", max_length=2048)


class RolloutStatus(CodebModel):
    release: str = Field(description="Digest of everything the new colour runs with (revision, image, settings).")
    revision: str | None = Field(None, description="project.revision being rolled out.")
    image: str | None = Field(None, description="Image being rolled out (quadlet).")
    colour: Colour | None = Field(
        None, description="The colour the new release runs as (none on runtime kubernetes: one Deployment rolls)."
    )
    previous: Colour | None = Field(None, description="The colour that served before (None on a first deploy).")
    step: RolloutStep = Field(description="Where the rollout is.")
    started_at: datetime = Field(description="When it started.")
    checked_at: datetime | None = Field(None, description="When the new colour was last checked.")
    switched_at: datetime | None = Field(None, description="When traffic moved to the new colour.")
    finished_at: datetime | None = Field(None, description="When it succeeded or failed.")
    healthy_checks: int = Field(0, description="Consecutive healthy checks so far.")
    unhealthy_checks: int = Field(0, description="Consecutive failed checks since the first answer.")
    answered: bool = Field(False, description="Whether the new colour has answered a check at all.")
    hooks: list[HookRun] = Field(default_factory=list, description="Hooks run for this release.", max_length=80)
    retry: str | None = Field(None, description="The codeb.dev/retry-rollout value this attempt answers.")
    message: str = Field("", description="The last check's result, or why it failed.", max_length=4096)

    @property
    def new_colour(self) -> Colour:
        """The colour a blue-green rollout starts (runtimes local and quadlet always name one)."""
        if self.colour is None:
            raise ValueError("a rollout of runtime kubernetes has no colour")
        return self.colour


class ServingStatus(CodebModel):
    colour: Colour | None = Field(
        None, description="The colour the route sends traffic to (none on runtime kubernetes)."
    )
    replica_set: str | None = Field(None, description="Runtime kubernetes: the ReplicaSet whose Pods serve.")
    release: str = Field(description="Digest of what that colour runs.")
    revision: str | None = Field(None, description="Its project.revision.")
    since: datetime = Field(description="When it started serving.")
    warm: Colour | None = Field(None, description="The previous colour, still running for an instant rollback.")
    warm_release: str | None = Field(None, description="Digest of what the warm colour runs.")
    warm_revision: str | None = Field(None, description="Its project.revision.")
    warm_until: datetime | None = Field(None, description="When the warm colour is stopped.")


class DeploymentRecord(CodebModel):
    revision: str | None = Field(None, description="Revision deployed.")
    image: str | None = Field(None, description="Image deployed.")
    release: str = Field(description="Digest of everything the release runs with.")
    colour: Colour | None = Field(None, description="The colour it ran as (none on runtime kubernetes).")
    started_at: datetime = Field(description="When the deploy started.")
    switched_at: datetime | None = Field(None, description="When it took the traffic.")
    finished_at: datetime | None = Field(None, description="When it finished.")
    result: str = Field(description="Progressing, Succeeded, Failed or Superseded.")
    reason: str = Field("", description="Why it failed (RolloutFailed, HookFailed…) or what changed.")
    message: str = Field("", description="Detail.", max_length=2048)


class BackupFailure(CodebModel):
    name: str = Field(description="The Backup that failed.", max_length=253)
    at: datetime = Field(description="When it started.")
    message: str = Field("", description="Why it failed.", max_length=1024)


class WalArchiveStatus(CodebModel):
    """The Platform's WAL archive, as PostgreSQL (pg_stat_archiver) and the archive itself report it."""

    last_archived_wal: str | None = Field(None, description="The newest WAL file archived.", max_length=64)
    last_archived_at: datetime | None = Field(None, description="When it was archived.")
    last_failed_wal: str | None = Field(None, description="The newest WAL file that failed to archive.",
                                        max_length=64)  # fmt: skip
    last_failed_at: datetime | None = Field(None, description="When it failed.")
    base_backups: int | None = Field(None, description="Base backups in the archive.")
    oldest_base_backup_at: datetime | None = Field(
        None, description="When the oldest base backup ended: the earliest time the cluster can be recovered to."
    )


class BackupSummary(CodebModel):
    last_successful: str | None = Field(None, description="The newest Backup that succeeded.", max_length=253)
    last_successful_at: datetime | None = Field(None, description="When it was taken.")
    last_successful_size_bytes: int | None = Field(None, description="Bytes it stored.")
    last_successful_duration_seconds: float | None = Field(None, description="How long it took.")
    first_recoverability_point: datetime | None = Field(
        None, description="The oldest moment the data can be restored to (the oldest backup kept)."
    )
    next_scheduled_at: datetime | None = Field(None, description="When the next scheduled run starts.")
    last_failure: BackupFailure | None = Field(
        None, description="The newest finished run, when it failed (cleared by the next success)."
    )
    running: str | None = Field(None, description="The run in progress, if any.", max_length=253)
    wal_archive: WalArchiveStatus | None = Field(
        None, description="With walArchiving: where the Platform's WAL archive stands (point-in-time recovery)."
    )


class BuiltImage(CodebModel):
    revision: str | None = Field(None, description="project.revision it was built for.", max_length=128)
    image: str = Field(description="The image every host runs: tagged by its build, or by digest in the registry it "
                       "was pushed to.", max_length=512)  # fmt: skip
    commit: str | None = Field(None, description="The commit it was built from.", pattern="^[0-9a-f]{40}$")


class BuildStatus(CodebModel):
    """The newest build of source.git, and the last one that succeeded (what the workload runs)."""

    inputs: str = Field(description="Digest of what is built from (repository, ref, revision, paths, template).",
                        max_length=64)  # fmt: skip
    revision: str | None = Field(None, description="project.revision being built.", max_length=128)
    run_id: str = Field(
        description="Names the run on every host; recorded before it starts, so a restart finds it, never "
        "starting it twice.",
        pattern="^[0-9a-f]{12}$",
    )
    image: str = Field(description="The tag the build makes.", max_length=512)
    pushed_to: str | None = Field(None, description="The Project's repository in its Platform's registry: one host "
                                  "builds and pushes there, every host pulls by digest. None: each host builds.",
                                  max_length=512)  # fmt: skip
    result: str = Field(description="Running, Succeeded or Failed.", max_length=16)
    commit: str | None = Field(None, description="The commit built, once known.", pattern="^[0-9a-f]{40}$")
    hosts: list[HookRun] = Field(
        default_factory=list, description="Each host's run (name: its address), with its last output lines.",
        max_length=100,
    )  # fmt: skip
    started_at: datetime | None = Field(None, description="When the build was recorded (its timeout counts from here).")
    finished_at: datetime | None = Field(None, description="When it ended.")
    message: str = Field("", description="Why it failed, or where it stands.", max_length=2048)
    last_succeeded: BuiltImage | None = Field(
        None, description="The last build that succeeded: what the workload runs (a failed one never replaces it)."
    )


class ProjectStatus(CodebModel):
    model_config = CodebModel.model_config | {"extra": "ignore"}

    phase: Phase = Field(Phase.Pending, description="Lifecycle phase.")
    observed_generation: int | None = Field(None, description="metadata.generation the status describes.")
    conditions: list[Condition] = Field(default_factory=list, description="Ready, Synced and one per component.")
    allocations: Allocations = Field(
        default_factory=Allocations, description="Names and numbers allocated to the project."
    )
    endpoints: Endpoints = Field(default_factory=Endpoints, description="Where the application answers.")
    hosts: list[HostReport] = Field(
        default_factory=list, description="Each host the workload runs on, as last checked.", max_length=100
    )
    infrastructure: InfrastructureStatus | None = Field(
        None, description="Hosts made by Terraform (vultr, lightsail): what was applied, the pending plan, runs."
    )
    autoscaling: AutoscalingStatus | None = Field(
        None, description="With servers.min/max on hosts a cloud makes: how many the load asks for, and why."
    )
    rollout: RolloutStatus | None = Field(None, description="The last rollout, or the one in progress.")
    serving: ServingStatus | None = Field(None, description="Which colour takes the traffic, and which is warm.")
    deployments: list[DeploymentRecord] = Field(
        default_factory=list, description="Recent deploys, newest first.", max_length=20
    )
    backup: BackupSummary | None = Field(None, description="Backups: the last good one, the next, the oldest kept.")
    build: BuildStatus | None = Field(None, description="With source.git: the newest build and the last good one.")
    last_error: str | None = Field(None, description="The last error, when the last reconcile failed.")
