"""`codeb stop`, `codeb start` and `codeb restart`: a Project's lifecycle, as changes to its spec.

Each sets one field and leaves the doing to the operator, like `kubectl rollout restart`:
``spec.suspended`` stops or starts the application (its data, ports and names stay), and
``spec.restartedAt`` restarts it as a new deploy of the same revision, which the health-gated
rollout carries out without dropping a request and records in ``status.deployments``.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from controller.cli.common import EXIT_OK, EXIT_USAGE, CommandError, api_errors, projects_api, read_project
from schemas.project import API_GROUP, API_VERSION, PLURAL


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop a Project without deleting it: its processes, units or Pods stop and its domains answer a
    maintenance page (503). Its database, cache, bucket, backups, ports and names are kept."""
    return _suspend(args, True)


def cmd_start(args: argparse.Namespace) -> int:
    """Start a stopped Project again, on the revision its spec names."""
    return _suspend(args, False)


def cmd_restart(args: argparse.Namespace) -> int:
    """Restart a Project's application as a new deploy of the same revision: the new instances start beside
    the old, pass the health gate and take the traffic, so no request is dropped; recorded in its history."""
    api = projects_api()
    spec = _spec(api, args)
    if spec.get("suspended"):
        raise CommandError(f"project {args.namespace}/{args.project} is stopped: `codeb start` starts it", EXIT_USAGE)
    token = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    _patch(api, args, {"restartedAt": token})
    return _said(args, {"restartedAt": token}, f"restart {token} requested: a new deploy of the same revision starts")


def _suspend(args: argparse.Namespace, suspended: bool) -> int:
    api = projects_api()
    before = bool(_spec(api, args).get("suspended"))
    if before != suspended:
        _patch(api, args, {"suspended": suspended})
    verb = "stop" if suspended else "start"
    how = f"already {verb}ed" if before == suspended else f"{verb} requested"
    return _said(args, {"suspended": suspended, "changed": before != suspended}, how)


def _spec(api: Any, args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = read_project(api, args.namespace, args.project).get("spec") or {}
    return spec


def _patch(api: Any, args: argparse.Namespace, change: dict[str, Any]) -> None:
    with api_errors(f"project {args.namespace}/{args.project}"):
        api.patch_namespaced_custom_object(API_GROUP, API_VERSION, args.namespace, PLURAL, args.project,
                                           {"spec": change})  # fmt: skip


def _said(args: argparse.Namespace, result: dict[str, Any], how: str) -> int:
    project = f"{args.namespace}/{args.project}"
    if args.output == "json":
        print(json.dumps({"project": project, **result}))
    else:
        print(f"{project}: {how} (`codeb status {args.project} -n {args.namespace}` follows it)")
    return EXIT_OK
