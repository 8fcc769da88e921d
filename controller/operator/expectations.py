"""Expectations: status a pass wrote that the bodies kopf hands over may not show yet."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


class Pending(Protocol):
    """Where a process keeps its expectations (the operator's `Runtime`), by Project uid."""

    expected: dict[str, Expected]


# A write not seen in a body after this long failed or was overtaken: the body is believed again.
EXPECTATION_SECONDS = 60.0


@dataclass
class Expected:
    """Status a pass wrote that the bodies kopf hands over may not show yet.

    Kubernetes' own controllers keep "expectations" for the same reason: a body is a
    snapshot from the watch, and a handler that waited on the Project's lock while another
    pass wrote status holds one from before that write (as does a retry that reads the
    object before kopf has applied the last handler's patch). A pass that read it would
    act on a superseded record, e.g. restart a colour the last pass stopped when its
    rollout failed. Until a body shows the write, the write is what status is.
    """

    changes: dict[str, Any]  # top-level status keys as written (None: removed)
    until: float

    @staticmethod
    def status(runtime: Pending, uid: str, stored: dict[str, Any], now: float) -> dict[str, Any]:
        """``stored`` with this Project's writes that it does not show yet."""
        expected = runtime.expected.get(uid)
        if expected is None:
            return stored
        if now > expected.until or all(stored.get(k) == v for k, v in expected.changes.items()):
            del runtime.expected[uid]  # caught up (or given up on): the body is the truth again
            return stored
        merged = {**stored, **expected.changes}
        return {k: v for k, v in merged.items() if v is not None}

    @staticmethod
    def wrote(runtime: Pending, uid: str, changes: dict[str, Any], now: float) -> None:
        pending = runtime.expected.get(uid)
        earlier = pending.changes if pending is not None else {}
        runtime.expected[uid] = Expected({**earlier, **changes}, now + EXPECTATION_SECONDS)
