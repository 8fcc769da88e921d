"""The CI workflow `codeb init --ci github` writes, rendered from the manifest (pure).

It deploys by changing the Project, as a person would with `kubectl patch`: with source.git the
operator builds the pushed commit itself, so the workflow sets only ``project.revision``; with an
image, the workflow builds and pushes ``<image>:<commit>`` first and sets the image too. Nothing of
the repository is evaluated by the operator; every value the workflow's steps use is an
environment variable, never spliced into the script.
"""

from __future__ import annotations

from typing import Any

from controller.specs.rendering import templates

# The deploy step's script: everything it needs comes from its environment (NAMESPACE, PROJECT, REVISION,
# IMAGE when CI builds it, CODEB_KUBECONFIG).
DEPLOY_SCRIPT = r"""set -eu
kubeconfig=$(mktemp); trap 'rm -f "$kubeconfig"' EXIT
printf '%s' "$CODEB_KUBECONFIG" >"$kubeconfig"
if [ -n "${IMAGE:-}" ]; then
  patch=$(printf '{"spec":{"project":{"revision":"%s","source":{"image":"%s:%s"}}}}' "$REVISION" "$IMAGE" "$REVISION")
else
  patch=$(printf '{"spec":{"project":{"revision":"%s"}}}' "$REVISION")
fi
kubectl --kubeconfig "$kubeconfig" -n "$NAMESPACE" patch project "$PROJECT" --type merge -p "$patch"
# Until the commit serves (built and rolled out); a build or rollout that fails ends the job at the timeout.
kubectl --kubeconfig "$kubeconfig" -n "$NAMESPACE" wait project "$PROJECT" --timeout="${WAIT:-15m}" \
  --for=jsonpath='{.status.serving.revision}'="$REVISION"
"""


def github_workflow(manifest: dict[str, Any], namespace: str) -> str:
    """The GitHub Actions workflow that deploys each push to the Project's branch."""
    project = manifest["spec"]["project"]
    git, image = project["source"].get("git"), project["source"].get("image")
    if git is None and image is None:
        raise ValueError("--ci github needs --git or --image: a command on the operator's machine is not built by CI")
    image_repository = _repository(image) if image else None
    return templates.get_template("github-deploy.yml.j2").render(
        namespace=namespace, name=manifest["metadata"]["name"], builds=git is not None,
        branch=(git or {}).get("ref", "main"), image=image_repository, deploy_script=DEPLOY_SCRIPT,
    )  # fmt: skip


def _repository(image: str) -> str:
    """An image reference without its tag or digest (a registry's port is not a tag)."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name.rsplit(":", 1)[0] if ":" in last else name
