"""The build a host runs for source.git: a fixed script, every value from the manifest an argument.

It runs on the Project's own hosts (runtime quadlet), where its image is used, detached like a
post-deploy hook (`controller.jobs.hookruns`): the repository is hostile input, and its
Containerfile's steps run only where the Project's own containers run, never on the operator's
machine. Nothing in it is evaluated: the URL, ref, paths and build arguments are positional
arguments of ``sh -c BUILD``; git may use only https and ssh (no ``ext::``, no local files), and
the context and Containerfile must resolve inside the checkout (a symlink out is refused).
"""

from __future__ import annotations

from schemas.project import GitSource

# $1 url, $2 ref, $3 commit ('' for the ref's head), $4 context, $5 Containerfile, $6 tag, then build args
# (KEY=VALUE). Its last line, on success: "built <tag> from commit <sha>" (`controller.loop.builds`).
BUILD = r"""
set -eu
url=$1 ref=$2 commit=$3 context=$4 file=$5 tag=$6; shift 6
work=$(mktemp -d /var/tmp/codeb-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
export GIT_ALLOW_PROTOCOL=https:ssh GIT_TERMINAL_PROMPT=0 GIT_CONFIG_NOSYSTEM=1 HOME="$work"
depth=; [ -z "$commit" ] && depth=--depth=1
git -c protocol.file.allow=never clone --quiet --no-tags --single-branch $depth --branch="$ref" -- "$url" "$work/src"
if [ -n "$commit" ]; then git -C "$work/src" checkout --quiet --detach "$commit^{commit}"; fi
sha=$(git -C "$work/src" rev-parse HEAD)
echo "checked out $sha"
src=$(realpath "$work/src")
dir=$(realpath -e "$src/$context") || { echo "context $context is not in the repository" >&2; exit 2; }
case "$dir/" in "$src"/*) ;; *) echo "context $context leaves the repository" >&2; exit 2;; esac
[ -f "$dir/$file" ] && [ ! -L "$dir/$file" ] || { echo "$context/$file is not a file in the repository" >&2; exit 2; }
n=$#; for arg in "$@"; do set -- "$@" --build-arg "$arg"; done; shift "$n"
cd "$dir"
podman build --layers --file "$file" --tag "$tag" "$@" .
# The Project's older builds go, but for the two newest before this one (a warm colour's, a rollback's);
# podman refuses to remove one a container still uses.
podman images --sort created --format '{{.Repository}}:{{.Tag}}' --filter "reference=${tag%:*}" | tail -n +4 \
  | xargs -r podman rmi >/dev/null 2>&1 || true
echo "built $tag from commit $sha"
"""


def build_argv(git: GitSource, commit: str, tag: str) -> list[str]:
    """The command a host runs (under `hookruns.FOLLOW`): ``sh -c BUILD`` and its arguments."""
    args = [f"{name}={value}" for name, value in sorted(git.build_args.items())]
    return ["sh", "-c", BUILD, "codeb-build", git.url, git.ref, commit, git.context, git.containerfile, tag, *args]
