"""The build a host runs for source.git: a fixed script, every value from the manifest an argument.

It runs on the Project's own hosts (runtime quadlet), where its image is used, detached like a
post-deploy hook (`controller.jobs.hookruns`): the repository is hostile input, and its
Containerfile's steps run only where the Project's own containers run, never on the operator's
machine. Nothing in it is evaluated: the URL, ref, paths and build arguments are positional
arguments of ``sh -c BUILD``; git may use only https and ssh (no ``ext::``, no local files), and
the context and Containerfile must resolve inside the checkout (a symlink out is refused).
"""

from __future__ import annotations

import shlex

from controller.errors import PermanentError, RetryableError
from schemas.project import GitSource, Template

# The clone every build starts with (on a host, or on the operator's machine for runtime local): $1 url, $2 ref,
# $3 commit ('' for the ref's head), $4 context, $5 the directory of the run's git credentials ('' for none:
# `credential_files`). It leaves $sha (the commit checked out), $src (the checkout) and $dir (the context in it).
CLONE = r"""
set -eu
url=$1 ref=$2 commit=$3 context=$4 creds=$5; shift 5
work=$(mktemp -d /var/tmp/codeb-build.XXXXXX) auth=
trap 'rm -rf "$work" ${creds:+"$creds"} ${auth:+"$auth"}' EXIT
# The registry's credential (a build that pushes) stays beside the git ones, on the same tmpfs, until the push.
if [ -n "$creds" ] && [ -f "$creds/registryAuth" ]; then auth=$creds.auth; mv "$creds/registryAuth" "$auth"; fi
export GIT_ALLOW_PROTOCOL=https:ssh GIT_TERMINAL_PROMPT=0 GIT_CONFIG_NOSYSTEM=1 HOME="$work"
# ssh reads no config and no key of the host's (its root's own keys are the operator's, not the Project's):
# only the Project's deploy key, only to a host its knownHosts names.
known=/dev/null key=/dev/null askpass=/bin/false redirects=initial
if [ -n "$creds" ]; then
  [ -f "$creds/privateKey" ] && key=$creds/privateKey known=$creds/knownHosts
  if [ -f "$creds/token" ]; then
    # The token answers the URL's host only: redirects elsewhere are not followed.
    askpass=$work/askpass redirects=false
    printf '#!/bin/sh\ncase "$1" in Username*) cat %s/username;; *) cat %s/token;; esac\n' "$creds" "$creds" >"$askpass"
    chmod 700 "$askpass"
  fi
fi
ssh="ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityFile=$key -o StrictHostKeyChecking=yes"
ssh="$ssh -o UserKnownHostsFile=$known -o GlobalKnownHostsFile=/dev/null -o ConnectTimeout=30"
depth=; [ -z "$commit" ] && depth=--depth=1
git -c protocol.file.allow=never -c core.askPass="$askpass" -c core.sshCommand="$ssh" \
  -c http.followRedirects=$redirects \
  clone --quiet --no-tags --single-branch $depth --branch="$ref" -- "$url" "$work/src"
if [ -n "$commit" ]; then git -C "$work/src" checkout --quiet --detach "$commit^{commit}"; fi
# The credentials go before anything of the repository's runs.
[ -z "$creds" ] || rm -rf "$creds" "$work/askpass"
sha=$(git -C "$work/src" rev-parse HEAD)
echo "checked out $sha"
src=$(realpath "$work/src")
dir=$(realpath -e "$src/$context") || { echo "context $context is not in the repository" >&2; exit 2; }
case "$dir/" in "$src"/*) ;; *) echo "context $context leaves the repository" >&2; exit 2;; esac
"""

# On a host (runtime quadlet, or a Platform's builder), after `CLONE`'s five: $6 Containerfile, $7 tag, $8 the
# template's Containerfile for a repository without one ('' for none), $9 'push' to push the image to the tag's
# registry (tagged by the run, and by the commit) with the credential delivered as registryAuth ('' to keep it
# here), $10 the directory of the image storage to build in ('' for podman's own: a Platform's builder keeps each
# namespace's apart, so no tenant's FROM finds another's image), then build args (KEY=VALUE). Its last lines, on
# success: "pushed <digest>" when it pushed, then "built <tag> from commit <sha>" (`controller.loop.builds`).
BUILD = (
    CLONE
    + r"""
file=$1 tag=$2 preset=$3 push=$4 store=$5; shift 5
if [ -n "$store" ]; then  # as `storage_options` says
  podman() { command podman --root "$store" --runroot "/run/codeb-builds/${store##*/}" "$@"; }
fi
if [ -n "$push" ] && [ -z "$auth" ]; then echo "no credential for the registry was delivered" >&2; exit 2; fi
if [ -n "$preset" ] && [ ! -e "$dir/$file" ] && [ ! -L "$dir/$file" ]; then
  echo "no $context/$file in the repository: the template's is built"
  printf '%s' "$preset" >"$work/Containerfile.template"; file=$work/Containerfile.template
else
  [ -f "$dir/$file" ] && [ ! -L "$dir/$file" ] || { echo "$context/$file is not a file in the repository" >&2; exit 2; }
fi
n=$#; for arg in "$@"; do set -- "$@" --build-arg "$arg"; done; shift "$n"
cd "$dir"
podman build --layers --file "$file" --tag "$tag" "$@" .
# The Project's older builds go, but for the two newest before this one (a warm colour's, a rollback's);
# podman refuses to remove one a container still uses. Only the repository's own names count (podman lists every
# name of an image that matches, a base image's too), and each is removed by the podman above (xargs would run
# another, outside the storage it was built in).
podman images --sort created --format '{{.Repository}}:{{.Tag}}' --filter "reference=${tag%:*}" \
  | while IFS= read -r name; do case "$name" in "${tag%:*}":*) echo "$name";; esac; done | tail -n +4 \
  | while IFS= read -r old; do podman rmi "$old" >/dev/null 2>&1 || true; done
if [ -n "$push" ]; then
  podman push --quiet --authfile "$auth" --digestfile "$work/digest" -- "$tag"
  # Tagged by its commit too, for people looking at the registry (not kept here; what deploys is the digest).
  podman tag "$tag" "${tag%:*}:$sha" && podman push --quiet --authfile "$auth" -- "${tag%:*}:$sha" \
    || echo "warning: the commit's tag was not pushed; the build's own tag was" >&2
  # The commit's tag goes (`podman untag IMAGE NAME` removes NAME alone); the run's stays, so the pruning above
  # keeps the newest three and the next build removes older ones (untagged, they would stay for ever).
  podman untag "$tag" "${tag%:*}:$sha" 2>/dev/null || true
  rm -f "$auth"
  echo "pushed $(cat "$work/digest")"
fi
echo "built $tag from commit $sha"
"""
)


# What a template builds when the repository has no Containerfile: its base image (source.git.baseImage
# replaces it) and the steps. The application listens on $PORT, as every runtime tells it to.
NODE, PYTHON = "docker.io/library/node:22-slim", "docker.io/library/python:3.12-slim"
NODE_STEPS = """WORKDIR /app
COPY . .
RUN if [ -f package-lock.json ]; then npm ci; elif [ -f package.json ]; then npm install; fi
{build}ENV NODE_ENV=production
CMD ["npm", "start"]
"""
PRESETS: dict[Template, tuple[str, str]] = {
    Template.nodejs: (NODE, NODE_STEPS.format(build="")),
    Template.node: (NODE, NODE_STEPS.format(build="")),
    Template.nextjs: (NODE, NODE_STEPS.format(build="RUN npm run build\n")),
    Template.python: (
        PYTHON,
        """WORKDIR /app
COPY . .
RUN if [ -f requirements.txt ]; then pip install --no-cache-dir -r requirements.txt; fi
CMD ["python3", "app.py"]
""",
    ),
    Template.static: (
        PYTHON,
        """COPY . /srv
CMD ["sh", "-c", "exec python3 -m http.server ${PORT:-8080} --directory /srv"]
""",
    ),
}


# Runtime local (trusted Projects only, `docs/security.md`): the checkout is the application's directory on the
# operator's machine. After `CLONE`'s five: $6 where the checkout goes, $7 how it is named in the last line, $8
# the template's steps (the operator's own text, `LOCAL_PRESETS`), run in the context. The two newest checkouts
# before this one stay (a warm colour's, a rollback's); older ones go.
LOCAL_BUILD = (
    CLONE
    + r"""
dest=$1 label=$2 steps=$3; shift 3
inside=${dir#"$src"}
mkdir -p "${dest%/*}" && rm -rf "$dest" && mv "$src" "$dest"
cd "$dest$inside"
sh -euc "$steps"
ls -1dt "${dest%/*}"/*/ 2>/dev/null | tail -n +4 | while IFS= read -r old; do rm -rf "$old"; done
echo "built $label from commit $sha"
"""
)
NODE_INSTALL = "if [ -f package-lock.json ]; then npm ci; elif [ -f package.json ]; then npm install; fi"
# Template: (steps after the checkout, the command the application then runs with, in the context's directory).
LOCAL_PRESETS: dict[Template, tuple[str, list[str]]] = {
    Template.nodejs: (NODE_INSTALL, ["npm", "start"]),
    Template.node: (NODE_INSTALL, ["npm", "start"]),
    Template.nextjs: (f"{NODE_INSTALL}; npm run build", ["npm", "start"]),
    Template.python: (
        "python3 -m venv .venv; if [ -f requirements.txt ]; then .venv/bin/pip install -q -r requirements.txt; fi",
        [".venv/bin/python3", "app.py"],
    ),
    Template.static: (":", ["sh", "-c", 'exec python3 -m http.server "$PORT" --bind 127.0.0.1']),
}


def local_build_argv(git: GitSource, commit: str, dest: str, label: str, template: Template,
                     credentials: str = "") -> list[str]:  # fmt: skip
    """The command runtime local runs (under `hookruns.FOLLOW`) to make ``dest`` the application's directory."""
    steps, _ = LOCAL_PRESETS[template]
    return ["sh", "-c", LOCAL_BUILD, "codeb-build", git.url, git.ref, commit, git.context, credentials, dest, label,
            steps]  # fmt: skip


def preset(template: Template, git: GitSource) -> str:
    """The Containerfile ``template`` builds for a repository without one ('' for template container)."""
    if template not in PRESETS:
        return ""
    base, steps = PRESETS[template]
    return f"FROM {git.base_image or base}\n{steps}"


def storage_options(store: str) -> str:
    """podman's options for the image storage in directory ``store``: its images there, its runtime state on
    the tmpfs (``/run/codeb-builds/<the directory's name>``), as `BUILD` uses them."""
    return f"--root {shlex.quote(store)} --runroot {shlex.quote('/run/codeb-builds/' + store.rsplit('/', 1)[-1])}"


def build_argv(git: GitSource, commit: str, tag: str, template: Template = Template.container,
               credentials: str = "", push: bool = False, store: str = "") -> list[str]:  # fmt: skip
    """The command a host runs (under `hookruns.FOLLOW`): ``sh -c BUILD`` and its arguments; ``credentials``
    the directory `credential_files` (and, with ``push``, the registry's ``registryAuth``) were written to
    (never their content: arguments are seen in ``ps``); ``store`` the image storage's directory ('' for the
    host's own)."""
    args = [f"{name}={value}" for name, value in sorted(git.build_args.items())]
    return ["sh", "-c", BUILD, "codeb-build", git.url, git.ref, commit, git.context, credentials, git.containerfile,
            tag, preset(template, git), "push" if push else "", store, *args]  # fmt: skip


def credential_files(git: GitSource, secret: dict[str, str] | None, source: str) -> dict[str, str]:
    """The files the build's git reads a private repository with (none without credentialsSecretRef), from
    the Secret ``source`` names: ``token`` (and ``username``) for https, ``privateKey`` and ``knownHosts`` for
    ssh. A Secret that lacks them is named with what to put in it; no value is ever in the message."""
    if git.credentials_secret_ref is None:
        return {}
    where = f"{source} (spec.project.source.git.credentialsSecretRef)"
    if secret is None:
        raise RetryableError(f"{where} does not exist: create it, and the build starts", reason="GitCredentials",
                             delay=30)  # fmt: skip
    if git.url.startswith("https://"):
        token, username = secret.get("token", ""), secret.get("username", "x-access-token")
        if not token or not _one_line(token) or not username or not _one_line(username):
            raise PermanentError(f"{where} needs key token (one line): the access token of an https repository",
                                 reason="GitCredentials")  # fmt: skip
        return {"username": username, "token": token}
    key, known = secret.get("privateKey", ""), secret.get("knownHosts", "")
    if "PRIVATE KEY" not in key or not known.strip():
        needs = "privateKey (a deploy key, PEM or OpenSSH) and knownHosts (the Git host's keys, as ssh-keyscan prints)"
        raise PermanentError(f"{where} needs keys {needs}", reason="GitCredentials")
    return {"privateKey": key.rstrip("\n") + "\n", "knownHosts": known.rstrip("\n") + "\n"}


def _one_line(value: str) -> bool:
    return value.isprintable() and value == value.strip()
