"""A pass reads the status the last pass wrote, even from a body that predates the write."""

from __future__ import annotations

from controller.loop.reconciler import Reconciler
from controller.operator.config import OperatorConfig
from controller.operator.expectations import EXPECTATION_SECONDS, Expected
from controller.operator.handlers import Runtime
from controller.operator.metrics import Metrics

UID = "uid-1"
BEFORE = {"phase": "Progressing", "rollout": {"step": "Checking", "revision": "bad"}, "endpoints": {"a": 1}}
FAILED = {"rollout": {"step": "Failed", "revision": "bad"}, "endpoints": None}


def runtime() -> Runtime:
    return Runtime(OperatorConfig(), Reconciler({}, None), Metrics())  # type: ignore[arg-type]


def test_a_body_from_before_the_last_write_reads_as_that_write() -> None:
    operator = runtime()
    Expected.wrote(operator, UID, FAILED, now=10.0)
    stale = Expected.status(operator, UID, dict(BEFORE), now=11.0)
    assert stale == {"phase": "Progressing", "rollout": {"step": "Failed", "revision": "bad"}}
    # Once a body shows the write, the body is the truth again (and the expectation is gone).
    caught_up = {"phase": "Progressing", "rollout": {"step": "Failed", "revision": "bad"}}
    assert Expected.status(operator, UID, caught_up, now=12.0) == caught_up
    assert UID not in operator.expected
    assert Expected.status(operator, UID, dict(BEFORE), now=13.0) == BEFORE


def test_writes_accumulate_until_seen_and_expire() -> None:
    operator = runtime()
    Expected.wrote(operator, UID, {"phase": "Ready"}, now=0.0)
    Expected.wrote(operator, UID, FAILED, now=1.0)
    assert Expected.status(operator, UID, dict(BEFORE), now=2.0)["phase"] == "Ready"
    # A write never seen (it failed, or another replica has written since) is given up on.
    assert Expected.status(operator, UID, dict(BEFORE), now=1.0 + EXPECTATION_SECONDS + 1) == BEFORE
    assert UID not in operator.expected
