"""Building blocks shared by every CodeB model.

The models in this package are the single definition of the manifest: the CRD's
OpenAPI schema (`schemas.crd`) and `docs/manifest.md` (`schemas.docs`) are generated
from them. Two consequences shape this module:

* every field carries a ``description`` (``kubectl explain`` prints it);
* a cross-field rule is declared once as a `Rule`, which yields both the CEL
  ``x-kubernetes-validations`` entry the API server enforces and the Python check
  the operator runs, so the two cannot silently disagree about what a rule means.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A hostname with at least two labels; a leading "*." allows wildcard routes.
DOMAIN = r"^(\*\.)?([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"
# A domain names are made under (a Platform's): no wildcard, and one label will do (localhost).
BASE_DOMAIN = r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)*[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"
ENV_VAR_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
# Kubernetes resource quantities as users write them for cpu and memory.
CPU_QUANTITY = r"^([0-9]+m|[0-9]+(\.[0-9]{1,3})?)$"
MEMORY_QUANTITY = r"^[0-9]+(Ki|Mi|Gi|Ti|K|M|G|T)?$"
HTTP_PATH = r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$"
CONTAINER_IMAGE = r"^[a-z0-9]+([._/:@-][A-Za-z0-9_.-]+)*$"
# Docker's own limit on a whole reference.
CONTAINER_IMAGE_MAX_LENGTH = 255
# A host name (RFC 1123 labels) or an IPv4 / IPv6 address: what a route's upstream,
# an SSH target or a Terraform input can take without quoting.
HOST = (
    r"^(([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*"
    r"|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*)$"
)
# A revision or version: an image tag, a commit, a release name (Docker's tag shape).
REVISION = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$"
# A path inside a checkout: relative, no '..' segment, no empty one.
RELATIVE_PATH = r"^(\.|([A-Za-z0-9_][A-Za-z0-9._-]*)(/[A-Za-z0-9_][A-Za-z0-9._-]*)*)$"
# A PostgreSQL extension as the manifest names it.
EXTENSION_NAME = r"^[a-z0-9_]+$"
# Text that ends up in a file on a host (environment files, units): no control
# characters, so no value can start a new line or smuggle a terminal escape.
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
# What `codeb restart` writes: a timestamp (RFC 3339), or any short token a GitOps commit prefers.
RESTART_TOKEN = r"^[A-Za-z0-9][A-Za-z0-9:.+_-]{0,63}$"

# What a pattern means, for error messages people read instead of the expression.
PATTERN_HINTS = {
    PRINTABLE: "must not contain control characters (newline, tab, escape)",
    HOST: "must be a host name (letters, digits, '-', dot-separated) or an IP address",
    REVISION: "must be letters, digits, '.', '_' or '-' (at most 128), starting with a letter, digit or '_'",
    CONTAINER_IMAGE: "must be an image reference such as registry.example.com/team/app:1.2.3",
    DNS_LABEL: "must be a DNS label: lowercase letters, digits and '-', starting and ending alphanumeric",
    DOMAIN: "must be a lowercase domain name with at least two labels, e.g. shop.example.com",
    BASE_DOMAIN: "must be a lowercase domain name without a wildcard, e.g. apps.example.com",
}


def _cron_field(number: str) -> str:
    item = rf"(\*|{number}(-{number})?)(/[0-9]+)?"
    return rf"{item}(,{item})*"


def _cron_pattern() -> str:
    # One regular expression, used both by pydantic and as the CRD pattern, so the
    # API server and the operator agree on which schedules are valid.
    fields = [
        r"[0-5]?[0-9]",  # minute
        r"(1[0-9]|2[0-3]|0?[0-9])",  # hour
        r"(3[01]|[12][0-9]|0?[1-9])",  # day of month
        r"(1[0-2]|0?[1-9])",  # month
        r"[0-7]",  # day of week
    ]
    body = r"\s+".join(_cron_field(f) for f in fields)
    macros = "@(yearly|annually|monthly|weekly|daily|hourly)"
    return rf"^({macros}|{body})$"


CRON = _cron_pattern()


@dataclass(frozen=True)
class Rule:
    """A cross-field rule, enforced by the API server (CEL) and by the operator."""

    cel: str
    message: str
    field_path: str
    check: Callable[[Any], bool]

    def to_crd(self) -> dict[str, str]:
        entry = {"rule": self.cel, "message": self.message}
        if self.field_path:
            entry["fieldPath"] = self.field_path
        return entry


def immutable(field: str, why: str) -> Rule:
    """A transition rule: ``field`` may not change once set (or be set or unset later).

    Only the API server can enforce it, on update, where ``oldSelf`` exists; the
    operator's own check always passes, as a spec alone has no past.
    """
    cel = f"has(self.{field}) == has(oldSelf.{field}) && (!has(self.{field}) || self.{field} == oldSelf.{field})"
    return Rule(cel=cel, message=f"{field} is immutable: {why}", field_path=f".{field}", check=lambda _: True)


class RuleViolation(ValueError):
    """A cross-field rule failed; carries the offending field's path within its model."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(message)
        self.field_path = field_path
        self.message = message


class CodebModel(BaseModel):
    """Base for manifest models: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=False,
        validate_default=True,
    )

    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> CodebModel:
        for rule in self.rules:
            if not rule.check(self):
                raise RuleViolation(rule.field_path, rule.message)
        return self

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema: dict[str, Any] = handler(core_schema)
        if cls.rules:
            target = handler.resolve_ref_schema(schema)
            target["x-kubernetes-validations"] = [r.to_crd() for r in cls.rules]
        return schema


def matches(pattern: str, value: str) -> bool:
    return re.fullmatch(pattern.strip("^$"), value) is not None
