"""`codeb backup`, `codeb backups` and `codeb restore`: Backup and Restore objects, made and followed.

The commands only write and read objects; the operator does the work (it alone reaches the
backup store). A restore overwrites live data, so it asks first (or takes ``--yes``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

import kubernetes.client

from controller.cli.common import (
    EXIT_DIFFERS,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    api_errors,
    projects_api,
    read_project,
    table,
)
from controller.loop.backups import record_name
from controller.loop.naming import ProjectKey
from controller.specs.backups import record_body, restore_body
from schemas.backups import BACKUP_PLURAL, PROJECT_LABEL, RESTORE_PLURAL, BackupTrigger
from schemas.project import API_GROUP, API_VERSION, BackupTarget

POLL_SECONDS = 1.0
FINISHED = ("Succeeded", "Failed")

Api = kubernetes.client.CustomObjectsApi


def _key(api: Api, namespace: str, name: str) -> ProjectKey:
    body = read_project(api, namespace, name)
    return ProjectKey(namespace, name, str(body["metadata"]["uid"]))


def list_backups(api: Api, namespace: str, project: str) -> list[dict[str, Any]]:
    """The Project's Backups, newest first."""
    with api_errors(f"backups of {namespace}/{project}"):
        found = api.list_namespaced_custom_object(API_GROUP, API_VERSION, namespace, BACKUP_PLURAL,
                                                  label_selector=f"{PROJECT_LABEL}={project}")  # fmt: skip
    items = [i for i in cast(dict[str, Any], found)["items"] if (i.get("spec") or {}).get("project") == project]
    return sorted(items, key=_taken, reverse=True)


def _taken(item: dict[str, Any]) -> str:
    return str((item.get("status") or {}).get("startedAt") or item["metadata"].get("creationTimestamp") or "")


def _row(item: dict[str, Any]) -> dict[str, Any]:
    status, spec = item.get("status") or {}, item.get("spec") or {}
    return {"name": item["metadata"]["name"], "target": spec.get("target"), "trigger": spec.get("trigger"),
            "phase": status.get("phase", "Pending"), "sizeBytes": status.get("sizeBytes"),
            "startedAt": status.get("startedAt"), "seconds": status.get("durationSeconds"),
            "message": status.get("message")}  # fmt: skip


def _follow(read: Callable[[], dict[str, Any]], show: Callable[[dict[str, Any]], str], timeout: float,
            quiet: bool) -> dict[str, Any]:  # fmt: skip
    """Poll a run until it finishes, printing each new line ``show`` makes of its status."""
    deadline, said = time.monotonic() + timeout, ""
    while True:
        status = read().get("status") or {}
        line = show(status)
        if line != said and not quiet:
            print(line, flush=True)
            said = line
        if status.get("phase") in FINISHED:
            return status
        if time.monotonic() > deadline:
            raise CommandError(f"not finished within {timeout:g} s (it goes on; `codeb backups` follows it)",
                               EXIT_DIFFERS)  # fmt: skip
        time.sleep(POLL_SECONDS)


def cmd_backup(args: argparse.Namespace) -> int:
    """Back up a Project's database now: a Backup the operator runs at once; waits for it unless --no-wait."""
    api = projects_api()
    key = _key(api, args.namespace, args.project)
    name = record_name(key.name, BackupTarget.database, None, BackupTrigger.Manual, datetime.now(UTC))
    body = record_body(key, name, BackupTarget.database, BackupTrigger.Manual, None)
    with api_errors(f"backup {args.namespace}/{name}"):
        api.create_namespaced_custom_object(API_GROUP, API_VERSION, args.namespace, BACKUP_PLURAL, body)
    result: dict[str, Any] = {"backup": name, "phase": "Pending"}
    if not args.no_wait:

        def read() -> dict[str, Any]:
            with api_errors(f"backup {args.namespace}/{name}"):
                found = api.get_namespaced_custom_object(API_GROUP, API_VERSION, args.namespace, BACKUP_PLURAL, name)
            return cast(dict[str, Any], found)

        status = _follow(read, lambda s: f"{name}: {s.get('phase', 'Pending')}", args.timeout, args.output == "json")
        result = {"backup": name, **_row({"metadata": {"name": name}, "spec": body["spec"], "status": status})}
    print(json.dumps(result) if args.output == "json" else _said(result))
    return EXIT_DIFFERS if result.get("phase") == "Failed" else EXIT_OK


def _said(row: dict[str, Any]) -> str:
    if row["phase"] == "Pending":
        return f"{row['backup']}: recorded; the operator starts it now (`codeb backups` follows it)"
    if row["phase"] == "Failed":
        return f"{row['backup']}: failed: {row.get('message') or 'no reason recorded'}"
    return f"{row['backup']}: {row['phase']}, {_size(row.get('sizeBytes'))} in {row.get('seconds')} s"


def _size(count: object) -> str:
    return "-" if count is None else f"{int(cast(int, count)) / 1e6:.1f} MB"


def cmd_backups(args: argparse.Namespace) -> int:
    """A Project's backups, newest first, and where its backups stand (the last good one, the next)."""
    api = projects_api()
    summary = (read_project(api, args.namespace, args.project).get("status") or {}).get("backup") or {}
    rows = [_row(item) for item in list_backups(api, args.namespace, args.project)]
    if args.output == "json":
        print(json.dumps({"summary": summary, "backups": rows}, indent=2))
        return EXIT_OK
    last = f"{summary.get('lastSuccessful') or '-'} ({summary.get('lastSuccessfulAt') or 'never'})"
    print(f"last successful: {last}")
    print(f"recoverable from: {summary.get('firstRecoverabilityPoint') or '-'}   "
          f"next: {summary.get('nextScheduledAt') or '-'}")  # fmt: skip
    archive = summary.get("walArchive")
    if archive:  # as `kubectl cnpg status` shows continuous archiving
        last_wal, at = archive.get("lastArchivedWal") or "-", archive.get("lastArchivedAt") or "never"
        print(f"WAL archive: last archived {last_wal} ({at}); base backups {archive.get('baseBackups', '-')}")
        if archive.get("lastFailedWal"):
            print(f"last archive failure: {archive['lastFailedWal']} ({archive.get('lastFailedAt') or '-'})")
    failure = summary.get("lastFailure")
    if failure:
        print(f"last failure: {failure['name']}: {failure.get('message') or '-'}")
    headers = ("NAME", "TARGET", "TRIGGER", "PHASE", "SIZE", "STARTED", "SECONDS")
    cells = [[r["name"], r["target"], r["trigger"], r["phase"], _size(r["sizeBytes"]), r["startedAt"], r["seconds"]]
             for r in rows]  # fmt: skip
    print("\n" + table(headers, cells) if rows else "no backups yet")
    return EXIT_OK


def pick_backup(backups: list[dict[str, Any]], to: str) -> dict[str, Any]:
    """The backup ``--to`` names (any target), or the newest successful database backup taken at or before a time."""
    done = [b for b in backups if (b.get("status") or {}).get("phase") == "Succeeded"]
    succeeded = [b for b in done if (b.get("spec") or {}).get("target", "database") == "database"]
    named = next((b for b in backups if b["metadata"]["name"] == to), None)
    if named is not None:
        if named not in done:
            raise CommandError(f"backup {to} did not succeed; pick another (`codeb backups`)", EXIT_USAGE)
        return named
    moment = parse_moment(to)
    before = [b for b in succeeded if datetime.fromisoformat(_taken(b).replace("Z", "+00:00")) <= moment]
    if not before:
        raise CommandError(f"no successful backup was taken at or before {to}", EXIT_USAGE)
    return before[0]


def parse_moment(to: str) -> datetime:
    """``--to`` as a moment (UTC unless it says otherwise)."""
    try:
        moment = datetime.fromisoformat(to.replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"--to {to}: neither a Backup of this Project nor a time such as 2026-12-03T10:00:00Z",
                           EXIT_USAGE) from None  # fmt: skip
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _point_in_time(args: argparse.Namespace, spec: dict[str, Any], backups: list[dict[str, Any]]) -> datetime | None:
    """The moment to recover the database to from the WAL archive: --to names a time, the Project restores into
    itself, and it has walArchiving. None: a Backup is restored (the one named, or the newest taken by then)."""
    if not (spec.get("backup") or {}).get("walArchiving") or (args.into or args.project) != args.project:
        return None
    if any(b["metadata"]["name"] == args.to for b in backups):
        return None
    return parse_moment(args.to)


def _confirm(args: argparse.Namespace, backup: dict[str, Any] | None, into: str,
             moment: datetime | None = None) -> None:  # fmt: skip
    if backup is None:
        what = (
            f"overwrite the database of {args.namespace}/{into} with its data as it was at {moment:%Y-%m-%dT%H:%M:%SZ}"
        )
    else:
        target = (backup.get("spec") or {}).get("target", "database")
        what = (f"overwrite the {target} of {args.namespace}/{into} with backup {backup['metadata']['name']} of "
                f"{args.project} (taken {_taken(backup)})")  # fmt: skip
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise CommandError(f"this would {what}; add --yes to do it without a prompt", EXIT_USAGE)
    safety = "" if args.no_safety_backup else " A safety backup of the data as it is is taken first."
    answer = input(f"This will {what}.{safety} Go on? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise CommandError("nothing restored", EXIT_USAGE)


def cmd_restore(args: argparse.Namespace) -> int:
    """Restore a Project's data from a backup (--to BACKUP: its database, bucket or Redis keys) or its database as
    it was at a time (--to TIME: with walArchiving, that very moment from the WAL archive; else the newest backup
    taken by then), into itself or another Project of the namespace
    (--into), after a safety backup of what is there; asks first unless --yes."""
    api = projects_api()
    into = args.into or args.project
    key = _key(api, args.namespace, into)
    spec = read_project(api, args.namespace, into).get("spec") or {}
    if (spec.get("backup") or {}).get("enabled") is False:
        raise CommandError(f"the operator restores through a Project's backups, which are off for {into}; set "
                           "spec.backup.enabled: true first", EXIT_USAGE)  # fmt: skip
    backups = list_backups(api, args.namespace, args.project)
    moment = _point_in_time(args, spec, backups)
    backup = pick_backup(backups, args.to) if moment is None else None
    _confirm(args, backup, into, moment)
    name = f"{key.name}-restore-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    source = args.project if into != args.project else None
    body = restore_body(key, name, backup["metadata"]["name"] if backup else None, not args.no_safety_backup, source,
                        moment)  # fmt: skip
    with api_errors(f"restore {args.namespace}/{name}"):
        api.create_namespaced_custom_object(API_GROUP, API_VERSION, args.namespace, RESTORE_PLURAL, body)

    def read() -> dict[str, Any]:
        with api_errors(f"restore {args.namespace}/{name}"):
            found = api.get_namespaced_custom_object(API_GROUP, API_VERSION, args.namespace, RESTORE_PLURAL, name)
        return cast(dict[str, Any], found)

    started = time.monotonic()
    status = _follow(read, lambda s: progress(s, time.monotonic() - started), args.timeout, args.output == "json")
    used = backup["metadata"]["name"] if backup else status.get("pointInTimeBackup")
    result = {"restore": name, "backup": used, "phase": status.get("phase"),
              "safetyBackup": status.get("safetyBackup"), "message": status.get("message")}  # fmt: skip
    print(json.dumps(result) if args.output == "json" else f"{name}: {result['phase']}: {result['message']}")
    return EXIT_OK if result["phase"] == "Succeeded" else EXIT_DIFFERS


def progress(status: dict[str, Any], elapsed: float) -> str:
    """One line of a restore's progress: bytes, percent and, once it can be told, the time left."""
    phase, done, total = status.get("phase", "Pending"), status.get("bytesRestored"), status.get("totalBytes")
    if phase != "Running" or not total or done is None:
        return f"restore: {phase}" + (f" (safety backup {status['safetyBackup']} taken)"
                                      if status.get("safetyBackup") else "")  # fmt: skip
    share = done / total
    left = f", about {elapsed * (1 - share) / share:.0f} s left" if 0 < share < 1 else ""
    return f"restore: {_size(done)} of {_size(total)} ({share:.0%}){left}"
