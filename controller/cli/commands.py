"""The `codeb` commands that read and explain Projects: status, diff, logs, init.

Each prints text for people or, with ``--output json``, one JSON document for scripts,
and ends with one of the exit codes below. Errors name what went wrong and what to do.
Without ``KUBECONFIG`` or ``~/.kube/config`` they talk to the cluster `codeb up` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import kubernetes.client
import yaml
from pydantic import ValidationError

from controller.cli.common import (
    EXIT_DIFFERS,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    list_projects,
    local_home,
    operator_config,
    operator_kube,
    projects_api,
    read_project,
    table,
)
from controller.cli.traffic import project_traffic, traffic_line
from controller.loop.status import format_validation_error, load_status
from controller.specs.ci import github_workflow
from schemas.project import API_GROUP, API_VERSION, KIND, ProjectSpec, ProjectStatus

# ------------------------------------------------------------------ status


def _ready(status: ProjectStatus) -> tuple[str, str]:
    found = next((c for c in status.conditions if c.type == "Ready"), None)
    return (found.status.value, found.reason) if found else ("Unknown", "NotReconciled")


def summary(body: dict[str, Any], status: ProjectStatus | None = None) -> dict[str, Any]:
    """One Project in a line: what `codeb status` lists."""
    status = status or load_status(body.get("status"))
    ready, reason = _ready(status)
    serving = status.serving
    return {
        "namespace": body["metadata"]["namespace"],
        "name": body["metadata"]["name"],
        "ready": ready,
        "reason": reason,
        "phase": status.phase.value,
        "revision": ((body.get("spec") or {}).get("project") or {}).get("revision"),
        "serving": f"{serving.colour or serving.replica_set} {serving.revision or ''}".strip() if serving else None,
        "url": status.endpoints.url,
    }


def detail(body: dict[str, Any]) -> dict[str, Any]:
    """Everything `codeb status NAME` shows about one Project."""
    status = load_status(body.get("status"))
    dumped = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    previous = next((d for d in status.deployments[1:] if d.result == "Succeeded"), None)
    infrastructure = status.infrastructure
    return {
        **summary(body, status),
        "generation": body["metadata"].get("generation"),
        "observedGeneration": status.observed_generation,
        "conditions": dumped.get("conditions", []),
        "allocations": dumped.get("allocations", {}),
        "endpoints": dumped.get("endpoints", {}),
        "hosts": dumped.get("hosts", []),
        "previousRevision": previous.revision if previous else None,
        "rollout": dumped.get("rollout"),
        "deployments": dumped.get("deployments", []),
        "backup": dumped.get("backup"),
        "build": dumped.get("build"),
        "pendingPlan": (
            infrastructure.plan.model_dump(mode="json", by_alias=True, exclude_none=True)
            if infrastructure is not None and infrastructure.plan is not None
            else None
        ),
        "lastError": status.last_error,
    }


def cmd_status(args: argparse.Namespace) -> int:
    """A table across Projects, or everything about one (with --prometheus, its last hour of traffic too)."""
    api = projects_api()
    if args.project:
        body = read_project(api, args.namespace, args.project)
        shown = detail(body)
        prometheus = args.prometheus or os.environ.get("CODEB_PROMETHEUS_URL")  # codeb up's, once targeted
        if prometheus:
            shown["traffic"] = project_traffic(prometheus, body, shown["url"])
        print(json.dumps(shown, indent=2) if args.output == "json" else render_detail(shown))
        return EXIT_OK
    rows = [summary(body) for body in list_projects(api, None if args.all_namespaces else args.namespace)]
    if args.output == "json":
        print(json.dumps({"projects": rows}, indent=2))
    elif not rows:
        print("no projects" + ("" if args.all_namespaces else f" in namespace {args.namespace} (-A: all)"))
    else:
        headers = ("NAMESPACE", "NAME", "READY", "REASON", "PHASE", "REVISION", "SERVING", "URL")
        keys = ("namespace", "name", "ready", "reason", "phase", "revision", "serving", "url")
        print(table(headers, [[row[k] for k in keys] for row in rows]))
    return EXIT_OK


def _backup_lines(backup: dict[str, Any] | None) -> list[str]:
    """The backup block, as `kubectl cnpg status` shows one: the last good one, how far back, the next."""
    if backup is None:
        return ["  backups:   off, or not looked at yet"]
    last = f"{backup.get('lastSuccessful') or 'none yet'} ({backup.get('lastSuccessfulAt') or '-'})"
    since, upcoming = backup.get("firstRecoverabilityPoint") or "-", backup.get("nextScheduledAt") or "-"
    lines = [f"  backups:   last {last}, recoverable from {since}, next {upcoming}"]
    if backup.get("running"):
        lines.append(f"             running: {backup['running']}")
    archive = backup.get("walArchive")
    if archive:
        wal, at = archive.get("lastArchivedWal") or "none", archive.get("lastArchivedAt") or "-"
        failed = (f", last failed {archive['lastFailedWal']} ({archive.get('lastFailedAt') or '-'})"
                  if archive.get("lastFailedWal") else "")  # fmt: skip
        lines.append(f"             WAL archive: last archived {wal} ({at}){failed}")
    failure = backup.get("lastFailure")
    if failure:
        lines.append(f"             last failure: {failure['name']}: {failure.get('message') or '-'}")
    return lines


def render_detail(shown: dict[str, Any]) -> str:
    lines = [
        f"{shown['namespace']}/{shown['name']}: {shown['phase']}, Ready={shown['ready']} ({shown['reason']})",
        f"  generation {shown['generation']}, observed {shown['observedGeneration']}",
        f"  url:       {shown['url'] or '-'}",
        f"  revision:  {shown['revision'] or '-'}  serving: {shown['serving'] or '-'}"
        f"  previous: {shown['previousRevision'] or '-'}",
    ]
    allocations = ", ".join(f"{k} {v}" for k, v in shown["allocations"].items())
    lines.append(f"  allocated: {allocations or '-'}")
    internal = ", ".join(shown["endpoints"].get("internal", []))
    lines.append(f"  upstreams: {internal or '-'}")
    plan = shown["pendingPlan"]
    lines.append(f"  terraform: {json.dumps(plan) if plan else 'no pending plan'}")
    lines += _backup_lines(shown["backup"])
    if shown.get("build"):
        build = shown["build"]
        last = (build.get("lastSucceeded") or {}).get("revision") or "none yet"
        lines.append(f"  build:     {build.get('revision') or '-'} {build['result']} ({build['image']}), "
                     f"last good {last}")  # fmt: skip
    if "traffic" in shown:
        lines.append(traffic_line(shown["traffic"]))
    if shown["lastError"]:
        lines.append(f"  last error: {shown['lastError']}")
    rows = [[c["type"], c["status"], c["reason"], c.get("message", "")] for c in shown["conditions"]]
    lines += ["", table(("CONDITION", "STATUS", "REASON", "MESSAGE"), rows)]
    if shown["deployments"]:
        deployed = [[d.get("revision"), d.get("colour", "-"), d.get("result"), d.get("startedAt"), d.get("reason")]
                    for d in shown["deployments"][:5]]  # fmt: skip
        lines += ["", table(("REVISION", "COLOUR", "RESULT", "STARTED", "REASON"), deployed)]
    return "\n".join(lines)


# ------------------------------------------------------------------ init


def scaffold(args: argparse.Namespace) -> dict[str, Any]:
    """A Project manifest from the flags (pure); validated like every other manifest."""
    runtime = args.runtime
    provider = args.provider or ("local" if runtime == "local" else "existing")
    source: dict[str, Any] = {"image": args.image} if args.image else {"command": args.command or ["python3", "app.py"]}
    if getattr(args, "git", None):
        source = {"git": {"url": args.git, "ref": args.ref}}
        if getattr(args, "git_credentials", None):
            source["git"]["credentialsSecretRef"] = args.git_credentials
    if args.working_dir and "command" in source:
        source["workingDir"] = args.working_dir
    servers: dict[str, Any] = {"provider": provider, "runtime": runtime}
    if args.host:
        servers["hosts"] = args.host
    if args.ssh_secret:
        servers["ssh"] = {"secretRef": args.ssh_secret}
    if args.platform:
        servers["platform"] = args.platform
    spec: dict[str, Any] = {
        "project": {
            "slug": args.name,
            "source": source,
            **({"revision": args.revision} if args.revision else {}),
            **({"template": args.template} if getattr(args, "template", None) else {}),
        },
        "environment": {"type": args.type, "domains": args.domain or [f"{args.name}.localhost"]},
        "servers": servers,
        "features": {feature: {} for feature in ("database", "redis", "storage") if getattr(args, feature)},
    }
    metadata = {"name": args.name, **({"namespace": args.namespace} if args.namespace else {})}
    return {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "metadata": metadata, "spec": spec}


def cmd_init(args: argparse.Namespace) -> int:
    """Write a new, valid Project manifest (to stdout, or to --file)."""
    if args.name is None:
        if not sys.stdin.isatty():
            raise CommandError("a name is needed: codeb init NAME (or run it in a terminal to be asked)", EXIT_USAGE)
        args.name = input("Project name (lowercase letters, digits, dashes): ").strip()
        args.domain = args.domain or [input(f"Domain [{args.name}.localhost]: ").strip() or f"{args.name}.localhost"]
    manifest = scaffold(args)
    try:
        ProjectSpec.model_validate(manifest["spec"])
    except ValidationError as exc:
        raise CommandError(f"that would not be a valid Project: {format_validation_error(exc)}", EXIT_USAGE) from None
    text = json.dumps(manifest, indent=2) + "\n" if args.output == "json" else yaml.safe_dump(manifest, sort_keys=False)
    if args.file is None:
        if getattr(args, "ci", None):
            raise CommandError("--ci writes files: give the manifest's --file too", EXIT_USAGE)
        print(text, end="")
        return EXIT_OK
    _write(Path(args.file), text, args.force, f"kubectl apply -f {args.file}")
    if getattr(args, "ci", None) == "github":
        try:
            workflow = github_workflow(manifest, args.namespace or "default")
        except ValueError as exc:
            raise CommandError(str(exc), EXIT_USAGE) from None
        _write(Path(args.ci_file), workflow, args.force, "commit it, and set the secrets it names")
    return EXIT_OK


def _write(path: Path, text: str, force: bool, next_step: str) -> None:
    if path.exists() and not force:
        raise CommandError(f"{path} exists: choose another path, or --force to replace it", EXIT_USAGE)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}: {next_step}", file=sys.stderr)


# ------------------------------------------------------------------ diff


def _wanted(args: argparse.Namespace, api: kubernetes.client.CustomObjectsApi) -> list[tuple[dict[str, Any], bool]]:
    """(the Project as it should be, whether it exists) for each Project a file or a name designates."""
    if args.file is None:
        return [(read_project(api, args.namespace, args.project), True)]
    try:
        documents = [d for d in yaml.safe_load_all(Path(args.file).read_text()) if isinstance(d, dict)]
    except (OSError, yaml.YAMLError) as exc:
        raise CommandError(f"cannot read {args.file}: {exc}", EXIT_USAGE) from None
    wanted = []
    for doc in (d for d in documents if d.get("kind") == KIND):
        namespace = (doc.get("metadata") or {}).get("namespace") or args.namespace
        name = (doc.get("metadata") or {}).get("name", "")
        try:
            live = read_project(api, namespace, name)
        except CommandError as exc:
            if exc.code != EXIT_NOT_FOUND:
                raise
            live = {"metadata": {"namespace": namespace, "name": name, "uid": f"new-{namespace}-{name}"}}
            wanted.append(({**live, "spec": doc.get("spec") or {}}, False))
            continue
        wanted.append(({**live, "spec": doc.get("spec") or {}}, True))
    if not wanted:
        raise CommandError(f"{args.file} holds no {KIND}", EXIT_USAGE)
    return wanted


def cmd_diff(args: argparse.Namespace) -> int:
    """What the operator would change, per component: the real drivers look, the operator's planner decides."""
    if (args.file is None) == (args.project is None):
        raise CommandError("give a Project name or -f FILE (one of them)", EXIT_USAGE)
    api = projects_api()
    with tempfile.TemporaryDirectory(prefix="codeb-diff-") as scratch:
        results = asyncio.run(_preview_all(_wanted(args, api), Path(scratch)))
    if args.output == "json":
        print(json.dumps({"projects": results}, indent=2))
    else:
        print("\n\n".join(render_diff(r) for r in results))
    return EXIT_DIFFERS if any(r["changes"] for r in results) else EXIT_OK


async def _preview_all(wanted: list[tuple[dict[str, Any], bool]], scratch: Path) -> list[dict[str, Any]]:
    from controller.claims.store import ClaimPreview, local_port_free
    from controller.loop.naming import ProjectKey
    from controller.loop.passes import ProjectInput
    from controller.loop.reconciler import Reconciler
    from controller.operator.wiring import operator_drivers

    config = operator_config()
    # Terraform looks in a directory of its own: an operator's runs on this machine are never touched.
    config = config.model_copy(update={"terraform_dir": scratch})
    kube = operator_kube(config)
    claims = ClaimPreview(kube, config.claims_namespace, config.reserved_ports, local_port_free)
    reconciler = Reconciler(operator_drivers(kube, config), claims)
    results = []
    for body, exists in wanted:
        meta = body["metadata"]
        where = f"{meta['namespace']}/{meta['name']}"
        try:
            spec = ProjectSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            raise CommandError(f"{where}: {format_validation_error(exc)}", EXIT_USAGE) from None
        key = ProjectKey(meta["namespace"], meta["name"], meta.get("uid", ""))
        project = ProjectInput(key, meta.get("generation", 1), spec, load_status(body.get("status")), paused=True)
        outcome = await reconciler.reconcile(project, trigger="diff")
        results.append(_diff_result(where, exists, outcome.drift, outcome.status))
    return results


def _diff_result(where: str, exists: bool, drift: Sequence[Any], status: ProjectStatus) -> dict[str, Any]:
    changes = [{"component": a.component.value, "verb": a.verb.value, "reason": a.reason} for a in drift]
    changing = {c["component"] for c in changes}
    waiting = [
        {"component": c.type.removesuffix("Ready"), "reason": c.reason, "message": c.message}
        for c in status.conditions
        if c.type.endswith("Ready") and c.type != "Ready" and c.status.value != "True"
        and c.type.removesuffix("Ready") not in changing
    ]  # fmt: skip
    return {"project": where, "exists": exists, "changes": changes, "notReady": waiting}


def render_diff(result: dict[str, Any]) -> str:
    head = f"{result['project']}{'' if result['exists'] else ' (not created yet)'}"
    if not result["changes"] and not result["notReady"]:
        return f"{head}: in sync, nothing would change"
    rows = [[c["component"], c["verb"], c["reason"]] for c in result["changes"]]
    rows += [[w["component"], "(waits)", f"{w['reason']}: {w['message']}"] for w in result["notReady"]]
    return f"{head}:\n" + table(("COMPONENT", "ACTION", "WHY"), rows)


# ------------------------------------------------------------------ logs


def operator_lines(path: Path, namespace: str, name: str, tail: int) -> list[str]:
    """The operator's log lines about one Project: structlog's (bound namespace and project) and kopf's."""
    if not path.exists():
        raise CommandError(f"no operator log at {path}: give --operator-log, or `kubectl logs` the operator's Pod",
                           EXIT_USAGE)  # fmt: skip
    found = []
    for raw in path.read_text(errors="replace").splitlines():
        line = ANSI_ESCAPE.sub("", raw)
        words = set(line.split())
        console = {f"namespace={namespace}", f"project={name}"} <= words
        if console or f"[{namespace}/{name}]" in words or _json_about(line, namespace, name):
            found.append(line)
    return found[-tail:]


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def _json_about(line: str, namespace: str, name: str) -> bool:
    if not line.startswith("{"):
        return False
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and record.get("namespace") == namespace and record.get("project") == name


def cmd_logs(args: argparse.Namespace) -> int:
    """The operator's lines about a Project, and the workload's own output from its runtime."""
    api = projects_api()
    body = read_project(api, args.namespace, args.project)
    result: dict[str, Any] = {"project": f"{args.namespace}/{args.project}"}
    if args.operator or not (args.workload or args.build):
        log = Path(args.operator_log) if args.operator_log else local_home() / "operator.log"
        result["operator"] = operator_lines(log, args.namespace, args.project, args.tail)
    if args.build:
        result["build"] = asyncio.run(_workload_logs(body, args.tail, build=True))
    elif args.workload or not args.operator:
        result["workload"] = asyncio.run(_workload_logs(body, args.tail))
    if args.output == "json":
        print(json.dumps(result, indent=2))
        return EXIT_OK
    for line in result.get("operator", []):
        print(f"[operator] {line}")
    for source, lines in (result.get("workload") or result.get("build") or {}).items():
        for line in lines:
            print(f"[{source}] {line}")
    return EXIT_OK


async def _workload_logs(body: dict[str, Any], tail: int, build: bool = False) -> dict[str, list[str]]:
    """The application's own output, or (``build``) its newest build's, from where it runs."""
    from controller.loop.interface import Builder, DriverContext, Placement, WorkloadLogs
    from controller.loop.naming import ProjectKey
    from controller.loop.planner import Component
    from controller.operator.wiring import operator_drivers

    config = operator_config()
    meta = body["metadata"]
    try:
        spec = ProjectSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        raise CommandError(f"{meta['namespace']}/{meta['name']}: {format_validation_error(exc)}", EXIT_USAGE) from None
    status = load_status(body.get("status"))
    drivers = await operator_drivers(operator_kube(config), config)(Placement.of(spec, meta["namespace"]))
    driver = drivers.get(Component.workload)
    if not isinstance(driver, WorkloadLogs):
        raise CommandError(f"no workload driver for runtime {spec.servers.runtime.value} in this configuration "
                           "(runtime local needs CODEB_LOCAL_RUNTIME=1)", EXIT_USAGE)  # fmt: skip
    ctx = DriverContext(ProjectKey(meta["namespace"], meta["name"], meta["uid"]), status.allocations,
                        servers=spec.servers, recorded=status.infrastructure)  # fmt: skip
    if build:
        if status.build is None or not isinstance(driver, Builder):
            where = f"{meta['namespace']}/{meta['name']}"
            raise CommandError(f"{where} has no build (source.git, runtimes quadlet and local)", EXIT_NOT_FOUND)
        return await driver.build_log(ctx, status.build, tail)
    # Where the workload runs comes from the infrastructure, as in a reconcile.
    infrastructure = drivers.get(Component.infrastructure)
    observed = {Component.infrastructure: await infrastructure.observe(ctx)} if infrastructure is not None else {}
    return await driver.logs(ctx.given(observed), tail)
