"""codeb: one Project manifest to a served application.

`codeb up` runs everything on this machine and ends with a URL; the other commands read,
explain and change the Projects of the current cluster (KUBECONFIG, else ~/.kube/config,
else the one `codeb up` runs). Each takes --output json for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from controller.cli.backups import cmd_backup, cmd_backups, cmd_restore
from controller.cli.chart import chart_files
from controller.cli.commands import cmd_diff, cmd_init, cmd_logs, cmd_status
from controller.cli.common import (
    CRD_PATH,
    EXIT_CODES,
    EXIT_DIFFERS,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    api_errors,
    projects_api,
    read_project,
    run,
)
from controller.cli.lifecycle import cmd_restart, cmd_start, cmd_stop
from controller.cli.up import cmd_down, cmd_up
from controller.local.cluster import REPO_ROOT
from controller.loop.rollouts.records import rollback_target
from controller.loop.status import format_validation_error, load_status
from schemas.crd import backup_crd, platform_crd, project_crd, render_yaml, restore_crd
from schemas.docs import render_markdown
from schemas.project import API_GROUP, API_VERSION, KIND, PLURAL, ProjectSpec, Template

PLATFORM_CRD_PATH = REPO_ROOT / "manifests" / "crd" / "platforms.codeb.dev.yaml"
BACKUP_CRD_PATH = REPO_ROOT / "manifests" / "crd" / "backups.codeb.dev.yaml"
RESTORE_CRD_PATH = REPO_ROOT / "manifests" / "crd" / "restores.codeb.dev.yaml"
DOCS_PATH = REPO_ROOT / "docs" / "manifest.md"
CLI_DOCS = REPO_ROOT / "docs" / "cli"


def generated_files() -> dict[Path, str]:
    crds = {
        CRD_PATH: render_yaml(project_crd()),
        PLATFORM_CRD_PATH: render_yaml(platform_crd()),
        BACKUP_CRD_PATH: render_yaml(backup_crd()),
        RESTORE_CRD_PATH: render_yaml(restore_crd()),
    }
    return {**crds, DOCS_PATH: render_markdown(), **cli_docs(), **chart_files(crds)}


def cli_docs() -> dict[Path, str]:
    """A page per command, from the parser itself, and an index."""
    pages, root = {}, parser()
    index = ["# The `codeb` command", "", "Generated from the CLI (`codeb generate`); a test fails when it drifts.", "",
             "```", root.format_help().rstrip(), "```", "", "| command | what it does |", "|---|---|"]  # fmt: skip
    for name, (summary, sub) in _subcommands(root).items():
        pages[CLI_DOCS / f"{name}.md"] = f"# codeb {name}\n\n{summary}.\n\n```\n{sub.format_help().rstrip()}\n```\n"
        index.append(f"| [`codeb {name}`]({name}.md) | {summary} |")
    pages[CLI_DOCS / "README.md"] = "\n".join(index) + "\n"
    return pages


def _subcommands(root: argparse.ArgumentParser) -> dict[str, tuple[str, argparse.ArgumentParser]]:
    action = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {choice.dest: choice.help or "" for choice in action._choices_actions}
    return {name: (summaries[name], sub) for name, sub in action.choices.items()}


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def cmd_generate(args: argparse.Namespace) -> int:
    """Write the CRDs, the manifest reference and the CLI pages from their one source (--check: only compare)."""
    files = generated_files()
    stale = [path for path, text in files.items() if not path.exists() or path.read_text() != text]
    if not args.check:
        for path in stale:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(files[path])
    if args.output == "json":
        print(json.dumps({"checked": args.check, "stale" if args.check else "wrote": [_shown(p) for p in stale]}))
    for path in stale if args.output == "text" else []:
        print(f"{_shown(path)} is out of date: run `codeb generate`" if args.check else f"wrote {_shown(path)}",
              file=sys.stderr if args.check else sys.stdout)  # fmt: skip
    return EXIT_DIFFERS if args.check and stale else EXIT_OK


def validate_documents(text: str) -> list[str]:
    """Problems found in every Project document of a YAML stream."""
    problems = []
    for doc in yaml.safe_load_all(text):
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            continue
        name = (doc.get("metadata") or {}).get("name", "<unnamed>")
        try:
            ProjectSpec.model_validate(doc.get("spec") or {})
        except ValidationError as exc:
            problems.append(f"{name}: {format_validation_error(exc)}")
    return problems


def cmd_validate(args: argparse.Namespace) -> int:
    """Check every Project in the files as the API server and the operator would, without a cluster."""
    problems = []
    for name in args.files:
        try:
            text = Path(name).read_text()
        except OSError as exc:
            raise CommandError(f"cannot read {name}: {exc.strerror}", EXIT_USAGE) from None
        try:
            problems += [f"{name}: {p}" for p in validate_documents(text)]
        except yaml.YAMLError as exc:
            problems.append(f"{name}: not YAML: {str(exc).splitlines()[0]}")
    if args.output == "json":
        print(json.dumps({"valid": not problems, "problems": problems}))
    else:
        print("\n".join(problems) or "all manifests valid")
    return EXIT_DIFFERS if problems else EXIT_OK


def cmd_operator(args: argparse.Namespace) -> int:
    from controller.operator.wiring import operator_drivers, run_operator

    return run_operator(operator_drivers)


def cmd_rollback(args: argparse.Namespace) -> int:
    """Set a Project's revision back to one that succeeded before; the operator does the switch."""
    api = projects_api()
    body = read_project(api, args.namespace, args.project)
    status = load_status(body.get("status") or {})
    current = (body.get("spec") or {}).get("project", {}).get("revision")
    try:
        target = rollback_target(status.deployments, current, args.to)
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    project: dict[str, Any] = {"revision": target.revision}
    if target.image:
        project["source"] = {"image": target.image}
    with api_errors(f"project {args.namespace}/{args.project}"):
        api.patch_namespaced_custom_object(API_GROUP, API_VERSION, args.namespace, PLURAL, args.project,
                                           {"spec": {"project": project}})  # fmt: skip
    warm = status.serving is not None and status.serving.warm_release == target.release
    result = {"project": f"{args.namespace}/{args.project}", "from": current, "to": target.revision,
              "image": target.image, "warm": warm}  # fmt: skip
    if args.output == "json":
        print(json.dumps(result))
    else:
        how = "its colour is still warm: traffic switches back at once" if result["warm"] else "a new rollout starts"
        print(f"{result['project']}: revision {current} -> {target.revision} ({how})")
    return EXIT_OK


class _Help(argparse.RawDescriptionHelpFormatter):
    """One width everywhere, so the generated CLI pages do not depend on the terminal that made them."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=100)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="codeb", description=__doc__, epilog=_exit_codes(), formatter_class=_Help)
    sub = root.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], summary: str) -> argparse.ArgumentParser:
        doc = (func.__doc__ or summary).strip()
        found = sub.add_parser(name, help=summary, description=doc, epilog=_exit_codes(), formatter_class=_Help)
        found.set_defaults(func=func)
        return found

    def output(found: argparse.ArgumentParser) -> None:
        found.add_argument("-o", "--output", choices=("text", "json"), default="text", help="text, or JSON for scripts")

    def one_project(found: argparse.ArgumentParser, required: bool = True) -> None:
        found.add_argument("project", nargs=None if required else "?", help="the Project's name")
        found.add_argument("-n", "--namespace", default="default", help="its namespace (default: default)")

    output(command("up", cmd_up, "start the local control plane, Platform, operator and example; serve it at a URL"))
    output(command("down", cmd_down, "stop what `codeb up` started (its data stays for the next `up`)"))
    init = command("init", cmd_init, "write a new Project manifest, valid by construction")
    init.add_argument("name", nargs="?", help="the Project's name and slug (asked for in a terminal when left out)")
    init.add_argument("-n", "--namespace", help="metadata.namespace (default: none, kubectl's current)")
    init.add_argument("--type", default="staging", choices=("production", "staging", "preview", "development"),
                      help="environment.type (default: staging)")  # fmt: skip
    init.add_argument("--domain", action="append", help="a domain to route (repeatable; default: NAME.localhost)")
    init.add_argument("--runtime", default="local", choices=("local", "quadlet", "kubernetes"))
    init.add_argument("--provider", choices=("local", "existing", "vultr", "lightsail"),
                      help="default: local for runtime local, else existing")  # fmt: skip
    init.add_argument("--image", help="the image to run (runtimes quadlet and kubernetes)")
    init.add_argument("--git", help="source.git: a repository the operator builds (https:// or ssh://)")
    init.add_argument("--ref", default="main", help="source.git.ref: the branch to build and deploy (default main)")
    init.add_argument("--git-credentials", metavar="SECRET",
                      help="source.git.credentialsSecretRef: a Secret with token (https) or privateKey and knownHosts "
                      "(ssh) for a private repository")  # fmt: skip
    init.add_argument("--template", choices=[t.value for t in Template],
                      help="project.template: presets, and what a build from --git runs (runtime local: nodejs, "
                      "nextjs, python or static)")  # fmt: skip
    init.add_argument("--ci", choices=("github",), help="also write a CI workflow that deploys each push")
    init.add_argument("--ci-file", default=".github/workflows/codeb-deploy.yml", help="where --ci writes it")
    init.add_argument("--command", nargs="+", help="the command to run (runtime local; default: python3 app.py)")
    init.add_argument("--working-dir", help="where the command runs, relative to the operator's root")
    init.add_argument("--host", action="append", help="servers.hosts: an existing host (repeatable)")
    init.add_argument("--ssh-secret", help="servers.ssh.secretRef: the Secret whose privateKey logs in to the hosts")
    init.add_argument("--platform", help="servers.platform: the Platform whose services it uses")
    init.add_argument("--revision", help="project.revision")
    for feature in ("database", "redis", "storage"):
        init.add_argument(f"--{feature}", action="store_true", help=f"features.{feature}: on")
    init.add_argument("-f", "--file", help="write here instead of to stdout")
    init.add_argument("--force", action="store_true", help="replace --file if it exists")
    init.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml", help="manifest format")
    validate = command("validate", cmd_validate, "check manifests the way the operator does, offline")
    validate.add_argument("files", nargs="+", help="YAML files; every Project document in them is checked")
    output(validate)
    diff = command("diff", cmd_diff, "what the operator would change, per component")
    one_project(diff, required=False)
    diff.add_argument("-f", "--file", help="a manifest: compare its Projects (new or live) with the world")
    output(diff)
    status = command("status", cmd_status, "Projects in a table, or everything about one")
    one_project(status, required=False)
    status.add_argument("-A", "--all-namespaces", action="store_true", help="list every namespace's Projects")
    status.add_argument("--prometheus", default=os.environ.get("CODEB_PROMETHEUS_URL"),
                        help="a Prometheus that scrapes the Platform's Caddy (default: CODEB_PROMETHEUS_URL): one "
                        "Project's last hour of traffic, as its alerts see it")  # fmt: skip
    output(status)
    logs = command("logs", cmd_logs, "the operator's lines about a Project and the application's own output")
    one_project(logs)
    logs.add_argument("--operator", action="store_true", help="only the operator's lines")
    logs.add_argument("--workload", action="store_true", help="only the application's output")
    logs.add_argument("--build", action="store_true", help="the newest build's output on each host (source.git)")
    logs.add_argument("--operator-log", help="the operator's log file (default: the one `codeb up` writes)")
    logs.add_argument("--tail", type=int, default=100, help="lines of each (default: 100)")
    output(logs)
    rollback = command("rollback", cmd_rollback, "set a Project back to a revision that succeeded before")
    one_project(rollback)
    rollback.add_argument("--to", help="the revision (default: the newest success before the current one)")
    output(rollback)
    for name, func, summary in (
        ("stop", cmd_stop, "stop a Project without deleting it; its domains answer a maintenance page"),
        ("start", cmd_start, "start a stopped Project again"),
        ("restart", cmd_restart, "restart a Project's application without dropping a request"),
    ):
        lifecycle = command(name, func, summary)
        one_project(lifecycle)
        output(lifecycle)
    backup = command("backup", cmd_backup, "back up a Project's database now")
    one_project(backup)
    backup.add_argument("--no-wait", action="store_true", help="return once it is recorded")
    backup.add_argument("--timeout", type=float, default=3600, help="seconds to wait for it (default: 3600)")
    output(backup)
    backups = command("backups", cmd_backups, "a Project's backups, and where its backups stand")
    one_project(backups)
    output(backups)
    restore = command("restore", cmd_restore, "restore a Project's data from a backup, or as it was at a time")
    one_project(restore)
    restore.add_argument("--to", required=True, help="a Backup's name, or a time (2026-12-03T10:00:00Z): the newest "
                         "backup taken by then")  # fmt: skip
    restore.add_argument("--into", help="another Project of the namespace to restore into (default: PROJECT itself)")
    restore.add_argument("--yes", action="store_true", help="overwrite without asking")
    restore.add_argument("--no-safety-backup", action="store_true", help="skip the backup of the data as it is")
    restore.add_argument("--timeout", type=float, default=6 * 3600, help="seconds to wait for it (default: 21600)")
    output(restore)
    generate = command("generate", cmd_generate, "regenerate the CRDs and docs from the models and the CLI")
    generate.add_argument("--check", action="store_true", help="change nothing; exit 1 if a checked-in file differs")
    output(generate)
    command("operator", cmd_operator, "run the operator against the current kubeconfig (logs: CODEB_LOG_FORMAT)")
    return root


def _exit_codes() -> str:
    return "exit codes:\n" + "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
