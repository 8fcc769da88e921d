"""The jinja2 environment for the files hosts receive (`controller/specs/templates`)."""

from __future__ import annotations

from pathlib import Path

import jinja2

templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=False,  # systemd units, env files and cloud-init, not HTML
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    undefined=jinja2.StrictUndefined,
)
