"""structlog set-up: JSON lines by default, each carrying namespace and project when bound."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(fmt: str = "json", level: int = logging.INFO) -> None:
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        # Colours only for a person at a terminal: a log file (`codeb up` writes one) stays greppable.
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    # Every SSH channel (a dozen per host per reconcile) at INFO would drown the operator's own lines.
    logging.getLogger("asyncssh").setLevel(max(level, logging.WARNING))
    # Nor every Caddy admin request and health probe.
    logging.getLogger("httpx").setLevel(max(level, logging.WARNING))
