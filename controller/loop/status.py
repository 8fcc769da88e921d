"""Pure helpers for the Project status: conditions, and "patch only what changed".

Conditions follow the Kubernetes convention: ``lastTransitionTime`` moves only when
``status`` flips, so re-asserting a condition with the same status is not a change
and does not cause a write.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from schemas.base import PATTERN_HINTS, RuleViolation
from schemas.project import Condition, ConditionStatus, ProjectStatus


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: bool | None,
    reason: str,
    message: str = "",
    generation: int | None = None,
    at: datetime | None = None,
) -> list[Condition]:
    """A new list with the condition of ``type_`` set; other conditions are kept."""
    value = {True: ConditionStatus.true, False: ConditionStatus.false, None: ConditionStatus.unknown}[status]
    previous = next((c for c in conditions if c.type == type_), None)
    changed = previous is None or previous.status != value
    when = (at or now()) if changed or previous is None else previous.last_transition_time
    updated = Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message[:4096],
        last_transition_time=when,
        observed_generation=generation,
    )
    rest = [c for c in conditions if c.type != type_]
    return sorted([*rest, updated], key=lambda c: c.type)


def condition(status: ProjectStatus, type_: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


def dump_status(status: ProjectStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def load_status(raw: dict[str, Any] | None) -> ProjectStatus:
    """The stored status, or an empty one if absent or written by an older version."""
    try:
        return ProjectStatus.model_validate(raw or {})
    except ValidationError:
        return ProjectStatus()


_STATUS_KEYS = {field.alias or name for name, field in ProjectStatus.model_fields.items()}


def status_patch(stored: dict[str, Any] | None, desired: ProjectStatus) -> dict[str, Any] | None:
    """A merge patch turning ``stored`` into ``desired``, or None when nothing changed."""
    old = stored or {}
    new = dump_status(desired)
    patch: dict[str, Any] = {k: v for k, v in new.items() if old.get(k) != v}
    # Merge patch removes a key by setting it to null.
    patch.update({k: None for k in old if k not in new and k in _STATUS_KEYS})
    return patch or None


def format_validation_error(exc: ValidationError, prefix: str = "spec") -> str:
    """One line per problem, each naming the field path as the user wrote it."""
    lines = []
    for err in exc.errors():
        path = prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        pattern = (err.get("ctx") or {}).get("pattern")
        if err["type"] == "string_pattern_mismatch" and pattern in PATTERN_HINTS:
            message = PATTERN_HINTS[pattern]
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, RuleViolation):
            path, message = path + cause.field_path, cause.message
        lines.append(f"{path}: {message}")
    return "; ".join(lines)
