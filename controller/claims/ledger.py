"""What an allocation ledger decides, on plain data (no API server here).

A `Ledger` maps each allocated value (a port, a database name, a Redis user, a bucket,
a domain) to the Project holding it. A request (`NumberRequest`, `PortPairRequest`,
`NameRequest`, `NameSetRequest`, `ReleaseRequest`, ...) turns a ledger into changes, and
`decide_batch` decides a group in order. `controller.claims.store` stores ledgers on the API
server and writes what these decide.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from controller.errors import AllocationConflict, CodebError, RetryableError
from controller.loop import domains, naming
from controller.loop.interface import Refusal
from controller.loop.rollouts.bluegreen import blue_green
from schemas.project import (
    PORT_RANGES,
    Allocations,
    EnvironmentType,
    ProjectSpec,
)


@dataclass(frozen=True)
class Holder:
    uid: str
    owner: str  # namespace/name, for messages

    def encode(self) -> str:
        return f"{self.uid} {self.owner}"

    @classmethod
    def decode(cls, raw: str) -> Holder:
        uid, _, owner = raw.partition(" ")
        return cls(uid, owner or "another project")


@dataclass(frozen=True)
class Claim:
    pool: str
    value: str


Changes = dict[str, Holder | None]  # value -> new holder, or None to release it


@dataclass
class Ledger:
    """One pool's entries, indexed by holder uid.

    The per-uid sets are never changed in place, only replaced, so `copy` is two
    shallow dict copies: a commit decides on a copy and keeps it only once written.
    """

    entries: dict[str, Holder] = field(default_factory=dict)
    by_uid: dict[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def from_data(cls, data: Mapping[str, str]) -> Ledger:
        ledger = cls()
        ledger.apply({value: Holder.decode(raw) for value, raw in data.items()})
        return ledger

    def to_data(self) -> dict[str, str]:
        return {value: holder.encode() for value, holder in self.entries.items()}

    def held_by(self, uid: str) -> frozenset[str]:
        return self.by_uid.get(uid, frozenset())

    def holder(self, value: str) -> Holder | None:
        return self.entries.get(value)

    def apply(self, changes: Changes) -> None:
        for value, holder in changes.items():
            old = self.entries.pop(value, None)
            if old is not None:
                self.by_uid[old.uid] = self.held_by(old.uid) - {value}
            if holder is not None:
                self.entries[value] = holder
                self.by_uid[holder.uid] = self.held_by(holder.uid) | {value}

    def copy(self) -> Ledger:
        return Ledger(dict(self.entries), dict(self.by_uid))


# What a request decides: a name, a number, a pair of ports, or nothing.
Value = str | int | tuple[int, ...] | Refusal | None


class Request(Protocol):
    def decide(self, ledger: Ledger) -> tuple[Value, Changes]:
        """The value this request ends up with and the changes that takes; raises AllocationConflict."""
        ...


@dataclass(frozen=True)
class NumberRequest:
    """Exactly one number from a range for this holder (a port, a Redis database index)."""

    holder: Holder
    pool: str
    candidates: tuple[int, ...]  # the usable numbers, in preference order
    pinned: int | None = None
    keep: int | None = None  # the number in use now: never switched silently
    range_text: str = ""
    pinned_field: str = "resources.port"
    # Whether a number nobody holds may be handed out (e.g. no other process listens on the port).
    usable: Callable[[int], bool] | None = None
    # Who holds the number in another ledger this one must agree with (another host of the
    # Project, the ledger from before ports were per host), if anyone.
    elsewhere: Callable[[int], Holder | None] | None = None

    def taken(self, ledger: Ledger, number: int) -> Holder | None:
        """Who other than this holder has ``number``, here or elsewhere."""
        found = (ledger.holder(str(number)), self.elsewhere(number) if self.elsewhere else None)
        return next((h for h in found if h is not None and h.uid != self.holder.uid), None)

    def decide(self, ledger: Ledger) -> tuple[int, Changes]:
        mine = sorted(int(v) for v in ledger.held_by(self.holder.uid))
        chosen = self.pinned if self.pinned is not None else self._free_or_held(ledger, mine)
        if self.pinned is not None:
            taken = self.taken(ledger, self.pinned)
            if taken is not None:
                raise AllocationConflict(
                    f"{self.pinned_field} {self.pinned} is already used by {taken.owner}; choose another "
                    f"{self.pool} in {self.range_text} or omit {self.pinned_field} to have one allocated"
                )
        changes: Changes = {str(n): None for n in mine if n != chosen}
        if chosen not in mine:
            changes[str(chosen)] = self.holder
        return chosen, changes

    def _free_or_held(self, ledger: Ledger, mine: list[int]) -> int:
        held = [n for n in mine if n in self.candidates]
        if held:
            return self.keep if self.keep in held else held[0]
        if self.keep is not None and self.keep in self.candidates and self.taken(ledger, self.keep) is None:
            return self.keep  # in use but not recorded (a lost ledger): keep the app where it is
        usable = self.usable or (lambda _: True)
        free = next((n for n in self.candidates if self.taken(ledger, n) is None and usable(n)), None)
        if free is None:
            raise AllocationConflict(f"no free {self.pool} left; free one or widen the range", reason="Exhausted")
        return free


@dataclass(frozen=True)
class PortPairRequest:
    """The application's port and a second one beside it: the other colour of a blue-green deploy.

    The primary is decided exactly as a lone port is (`NumberRequest`); the alternate is
    the other number this holder already has, else a free one. Both stay held while the
    runtime runs two colours, so no other Project can take the port a deploy starts on.
    """

    primary: NumberRequest
    keep_alternate: int | None = None

    def decide(self, ledger: Ledger) -> tuple[tuple[int, int], Changes]:
        holder = self.primary.holder
        mine = sorted(int(v) for v in ledger.held_by(holder.uid))
        port, changes = self.primary.decide(ledger)
        alternate = self._alternate(ledger, mine, port)
        changes.pop(str(alternate), None)
        if alternate not in mine:
            changes[str(alternate)] = holder
        return (port, alternate), changes

    def _alternate(self, ledger: Ledger, mine: list[int], port: int) -> int:
        candidates = self.primary.candidates
        held = [n for n in mine if n != port and n in candidates]
        if held:
            return self.keep_alternate if self.keep_alternate in held else held[0]
        keep, taken = self.keep_alternate, self.primary.taken
        if keep is not None and keep != port and keep in candidates and taken(ledger, keep) is None:
            return keep
        usable = self.primary.usable or (lambda _: True)
        free = next((n for n in candidates if n != port and taken(ledger, n) is None and usable(n)), None)
        if free is None:
            raise AllocationConflict(
                f"no free port left for a second colour in {self.primary.range_text}; free one or widen the range",
                reason="Exhausted",
            )
        return free


@dataclass(frozen=True)
class NameRequest:
    """A derived name for this holder; ``name=None`` means the feature is off.

    Names no longer wanted are released when the feature was renamed, or when the
    data goes with the Project (``drop_unwanted``). A disabled feature's name stays
    held while its data is retained, so no other Project can take over a database or
    bucket that still holds this one's data.
    """

    holder: Holder
    pool: str
    name: str | None
    field_path: str
    drop_unwanted: bool = False
    # False: only claim (what goes is released later, by `KeepOnlyRequest`, once everything is granted).
    release: bool = True

    def decide(self, ledger: Ledger) -> tuple[str | None, Changes]:
        mine = ledger.held_by(self.holder.uid)
        changes: Changes = {}
        if self.name is not None:
            taken = ledger.holder(self.name)
            if taken is not None and taken.uid != self.holder.uid:
                raise AllocationConflict(
                    f"{self.pool} name {self.name!r} is already used by {taken.owner}; "
                    f"change {self.field_path} (or the environment) so the derived name is unique"
                )
            if self.name not in mine:
                changes[self.name] = self.holder
        if self.release and (self.name is not None or self.drop_unwanted):
            changes.update({value: None for value in mine if value != self.name})
        return self.name, changes


@dataclass(frozen=True)
class NameSetRequest:
    """All of these names for this holder, or none new; releases the ones no longer listed.

    A refusal does not raise: the value is a message naming the holder, for the one
    component that needs the names (a route serves all its domains or is not touched).
    """

    holder: Holder
    pool: str
    names: tuple[str, ...]
    release: bool = True  # as `NameRequest.release`

    def decide(self, ledger: Ledger) -> tuple[Refusal | None, Changes]:
        not_allowed = [why for n in self.names if (why := domains.refusal(decode_domain(n)))]
        if not_allowed:
            return Refusal("DomainNotAllowed", "; ".join(not_allowed)), {}
        taken = [_taken_message(n, other, h) for n in self.names for other, h in _overlapping(ledger, n)
                 if h.uid != self.holder.uid]  # fmt: skip
        if taken:
            return Refusal("DomainTaken", "; ".join(taken)), {}
        mine = ledger.held_by(self.holder.uid)
        changes: Changes = {n: self.holder for n in self.names if n not in mine}
        if self.release:
            changes.update({value: None for value in mine if value not in self.names})
        return None, changes


def _overlapping(ledger: Ledger, key: str) -> list[tuple[str, Holder]]:
    """The held domains whose routes could match a request for ``key`` (ledger keys, with their holders)."""
    name = decode_domain(key)
    candidates = [key]
    if (wildcard := domains.wildcard_over(name)) is not None:
        candidates.append(encode_domain(wildcard))
    if name.startswith("*."):
        # Names one label below a wildcard: a scan, but only for wildcards, which are few.
        candidates += [held for held in ledger.entries if domains.covers(name, decode_domain(held))]
    return [(other, holder) for other in candidates if (holder := ledger.holder(other)) is not None]


def _taken_message(key: str, other: str, holder: Holder) -> str:
    if key == other:
        return f"{decode_domain(key)} is already routed by {holder.owner}"
    return f"{decode_domain(key)} overlaps {decode_domain(other)}, routed by {holder.owner}"


@dataclass(frozen=True)
class KeepOnlyRequest:
    """Release what this holder took beyond ``keep`` (undoing half of a failed allocation)."""

    uid: str
    keep: frozenset[str]

    def decide(self, ledger: Ledger) -> tuple[None, Changes]:
        return None, {value: None for value in ledger.held_by(self.uid) if value not in self.keep}


def encode_domain(domain: str) -> str:
    # ConfigMap keys allow [-._a-zA-Z0-9]; "_" never occurs in a domain, so "*" maps to it.
    return domain.replace("*", "_")


def decode_domain(key: str) -> str:
    return key.replace("_", "*")


@dataclass(frozen=True)
class ReleaseRequest:
    uid: str

    def decide(self, ledger: Ledger) -> tuple[int, Changes]:
        mine = ledger.held_by(self.uid)
        return len(mine), dict.fromkeys(mine)


def port_candidates(spec: ProjectSpec, reserved: Iterable[int]) -> tuple[int, ...]:
    return _port_range(spec.environment.type, frozenset(reserved))


@functools.cache
def _port_range(environment: EnvironmentType, reserved: frozenset[int]) -> tuple[int, ...]:
    # Every reconcile asks, drift ticks included; the answer only depends on these two.
    low, high = PORT_RANGES[environment]
    return tuple(p for p in range(low, high + 1) if p not in reserved)


@dataclass(frozen=True)
class ExactRequest:
    """Exactly these numbers for this holder (its port on its second and later hosts); none else."""

    holder: Holder
    numbers: tuple[int, ...]
    scope: str

    def decide(self, ledger: Ledger) -> tuple[tuple[int, ...], Changes]:
        for number in self.numbers:
            taken = ledger.holder(str(number))
            if taken is not None and taken.uid != self.holder.uid:
                raise RetryableError(f"port {number} on {self.scope} was just taken by {taken.owner}; "
                                     "deciding again", reason="PortTaken")  # fmt: skip
        mine = ledger.held_by(self.holder.uid)
        changes: Changes = {value: None for value in mine if int(value) not in self.numbers}
        changes.update({str(n): self.holder for n in self.numbers if str(n) not in mine})
        return self.numbers, changes


def allocations_for(spec: ProjectSpec, port: int | None, alternate_port: int | None = None) -> Allocations:
    """The full set of allocated names for a spec, given its claimed numbers (pure)."""
    features = spec.features
    database = features.database is not None and features.database.enabled
    cache = features.redis is not None and features.redis.enabled
    storage = features.storage is not None and features.storage.enabled
    return Allocations(
        port=port,
        alternate_port=alternate_port if blue_green(spec) else None,
        database=naming.database_name(spec) if database else None,
        database_role=naming.database_role(spec) if database else None,
        redis_user=naming.redis_user(spec) if cache else None,
        redis_prefix=naming.redis_prefix(spec) if cache else None,
        bucket=naming.bucket_name(spec) if storage else None,
        connection_secret=naming.connection_secret_name(spec),
    )


Outcome = Value | CodebError


def decide_batch(ledger: Ledger, requests: list[Request]) -> tuple[Ledger, list[Outcome]]:
    """Decide requests in order, each seeing the ones before it; a refused one changes nothing."""
    work = ledger.copy()
    outcomes: list[Outcome] = []
    for request in requests:
        try:
            result, changes = request.decide(work)
        except CodebError as exc:  # refused (AllocationConflict), or to be decided again (RetryableError)
            outcomes.append(exc)
            continue
        work.apply(changes)
        outcomes.append(result)
    return work, outcomes
