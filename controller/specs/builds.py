"""The build a host runs for source.git: a fixed script, every value from the manifest an argument.

It runs on the Project's own hosts (runtime quadlet), where its image is used, detached like a
post-deploy hook (`controller.jobs.hookruns`): the repository is hostile input, and its
Containerfile's steps run only where the Project's own containers run, never on the operator's
machine. Nothing in it is evaluated: the URL, ref, paths and build arguments are positional
arguments of ``sh -c BUILD``; git may use only https and ssh (no ``ext::``, no local files), and
the context and Containerfile must resolve inside the checkout (a symlink out is refused).
"""

from __future__ import annotations

from schemas.project import GitSource, Template

# $1 url, $2 ref, $3 commit ('' for the ref's head), $4 context, $5 Containerfile, $6 tag, $7 the template's
# Containerfile for a repository without one ('' for none), then build args (KEY=VALUE). Its last line, on
# success: "built <tag> from commit <sha>" (`controller.loop.builds`).
BUILD = r"""
set -eu
url=$1 ref=$2 commit=$3 context=$4 file=$5 tag=$6 preset=$7; shift 7
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
# podman refuses to remove one a container still uses.
podman images --sort created --format '{{.Repository}}:{{.Tag}}' --filter "reference=${tag%:*}" | tail -n +4 \
  | xargs -r podman rmi >/dev/null 2>&1 || true
echo "built $tag from commit $sha"
"""


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


def preset(template: Template, git: GitSource) -> str:
    """The Containerfile ``template`` builds for a repository without one ('' for template container)."""
    if template not in PRESETS:
        return ""
    base, steps = PRESETS[template]
    return f"FROM {git.base_image or base}\n{steps}"


def build_argv(git: GitSource, commit: str, tag: str, template: Template = Template.container) -> list[str]:
    """The command a host runs (under `hookruns.FOLLOW`): ``sh -c BUILD`` and its arguments."""
    args = [f"{name}={value}" for name, value in sorted(git.build_args.items())]
    return ["sh", "-c", BUILD, "codeb-build", git.url, git.ref, commit, git.context, git.containerfile, tag,
            preset(template, git), *args]  # fmt: skip
