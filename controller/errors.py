"""The operator's own errors, raised by drivers and clients at the edge.

Two kinds matter to the reconciler: a *retryable* error is worth trying again
later (an outage, a conflict, a timeout); a *permanent* error will not go away
until the user changes something, so it says what to change. They are mapped to
kopf in exactly one place (`controller.operator.handlers`).
"""

from __future__ import annotations


class CodebError(Exception):
    """Base of every error the operator raises on purpose."""

    reason: str = "Error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class RetryableError(CodebError):
    """A passing failure: retried with backoff."""

    reason = "Unavailable"

    def __init__(self, message: str, *, reason: str | None = None, delay: float = 10.0) -> None:
        super().__init__(message, reason=reason)
        self.delay = delay


class PermanentError(CodebError):
    """The spec asks for something that cannot be done; retrying will not help."""

    reason = "Rejected"


class AllocationConflict(PermanentError):
    """A pinned port or a derived name is already held by another Project."""

    reason = "AllocationConflict"
