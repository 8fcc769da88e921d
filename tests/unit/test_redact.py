"""Secrets never reach status, Events or logs: every form of them, and no part left by a cut."""

from __future__ import annotations

import base64
from urllib.parse import quote

import pytest

from controller.loop.secrets import clip, redact

SECRET = "s3cr3t/p@ss+word=="
SECRETS = frozenset({SECRET})


FORMS = [SECRET, quote(SECRET, safe=""), base64.b64encode(SECRET.encode()).decode(),
         base64.urlsafe_b64encode(SECRET.encode()).decode().rstrip("=")]  # fmt: skip


@pytest.mark.parametrize("form", FORMS)
def test_every_form_of_a_secret_is_redacted(form: str) -> None:
    said = redact(f"connecting to postgresql://app:{form}@db:5432/app failed", SECRETS)
    assert form not in said and "***" in said


def test_a_cut_never_leaves_a_prefix_of_a_secret() -> None:
    """Before, output was cut first and redacted after: the cut-off half of a password survived."""
    output = "x" * 390 + f" password={SECRET} and more"
    for limit in range(395, 415):
        for tail in (False, True):
            kept = clip(output, SECRETS, limit, tail=tail)
            assert not any(SECRET[:n] in kept for n in range(4, len(SECRET) + 1)), (limit, tail, kept)


def test_a_read_that_stopped_mid_secret_is_redacted_at_both_edges() -> None:
    assert redact(f"log: {SECRET[:9]}", SECRETS, cut=True) == "log: ***"
    assert redact(f"{SECRET[-7:]} done", SECRETS, cut=True) == "*** done"
    assert redact("plain text", SECRETS, cut=True) == "plain text"
    # A whole line is no cut read: its edges are left as they are (only whole secrets go).
    line = f"{SECRET[-7:]} said s3cr"
    assert redact(line, SECRETS) == line and redact(f"x {SECRET} y", SECRETS) == "x *** y"
