"""Section ``environment``: the environment type, variables and the Secrets the application reads."""

from __future__ import annotations

from pydantic import Field

from schemas.base import (
    DNS_LABEL,
    ENV_VAR_NAME,
    CodebModel,
    Rule,
    immutable,
    matches,
)
from schemas.common import PULL_REQUEST_MAX, RENAME_WHY, DomainName, EnvironmentType, FileText


class SecretReference(CodebModel):
    name: str = Field(description="Name of a Secret in the Project's namespace.", pattern=DNS_LABEL, max_length=253)
    optional: bool = Field(False, description="Deploy even when the Secret does not exist.")


class Environment(CodebModel):
    rules = (
        immutable("type", RENAME_WHY),
        immutable("pullRequest", RENAME_WHY),
        Rule(
            cel="self.type != 'preview' || has(self.pullRequest)",
            message="a preview environment needs pullRequest (the PR number it previews)",
            field_path=".pullRequest",
            check=lambda e: e.type != EnvironmentType.preview or e.pull_request is not None,
        ),
        Rule(
            cel="self.type == 'preview' || !has(self.pullRequest)",
            message="pullRequest is only allowed when type is preview",
            field_path=".pullRequest",
            check=lambda e: e.type == EnvironmentType.preview or e.pull_request is None,
        ),
        Rule(
            cel="!has(self.variables) || self.variables.all(k, k.matches('" + ENV_VAR_NAME + "'))",
            message="variable names must match [A-Za-z_][A-Za-z0-9_]* (letters, digits, underscore)",
            field_path=".variables",
            check=lambda e: all(matches(ENV_VAR_NAME, k) for k in e.variables),
        ),
    )

    type: EnvironmentType = Field(
        description=(
            "Environment kind; selects the port range (production 4000-4499, staging 4500-4999, preview 5000-5999)."
        )
    )
    domains: list[DomainName] = Field(
        default_factory=list,
        description="Public hostnames routed to the application (HTTPS certificates are issued automatically).",
        max_length=20,
    )
    redirect_www: bool = Field(
        False,
        description=(
            "Also route www.<domain> for each domain (not a wildcard, not already www.), answering a permanent "
            "redirect (308) to https://<domain> with the path and query kept; the www names are claimed like the "
            "others and get DNS records where the Platform writes them."
        ),
    )
    pull_request: int | None = Field(
        None, description="Pull request number; required for preview.", ge=1, le=PULL_REQUEST_MAX
    )
    variables: dict[str, FileText] = Field(
        default_factory=dict,
        description=(
            "Plain environment variables for the application (no control characters: they are written to an "
            "environment file). Put credentials in secretRefs instead."
        ),
        max_length=200,
    )
    secret_refs: list[SecretReference] = Field(
        default_factory=list,
        description="Secrets whose keys are exposed to the application as environment variables.",
        max_length=20,
    )
