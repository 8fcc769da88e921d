"""`codeb up`'s Prometheus: Debian's `prometheus`, where it is installed, on loopback.

It scrapes the operator (its per-Project series) and the Platform's Caddy (every Project's
requests, per host), loads the operator's own alert rules (deploy/monitoring/codeb-rules.yaml),
and is what `codeb status NAME` asks for the last hour's traffic. It is started without being
waited for, so the first URL comes as soon as without it; its URL is printed once it answers.
Without the binary, `codeb up` runs as before and says how to get it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from controller.local.cluster import REPO_ROOT, free_port, stop_process

RULES = REPO_ROOT / "deploy" / "monitoring" / "codeb-rules.yaml"
RETENTION = "7d"  # a laptop's disk: a week of the local fleet is plenty


def new_settings() -> dict[str, int]:
    """Its port and the operator's metrics port, chosen once and kept in platform.json."""
    return {"port": free_port(), "operatorMetricsPort": free_port()}


def config(settings: dict[str, Any], caddy_admin_port: int) -> dict[str, Any]:
    """prometheus.yml: the operator and Caddy (its admin endpoint serves /metrics), every 15 s."""
    return {
        "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "codeb-operator",
             "static_configs": [{"targets": [f"127.0.0.1:{settings['operatorMetricsPort']}"]}]},
            {"job_name": "caddy", "static_configs": [{"targets": [f"127.0.0.1:{caddy_admin_port}"]}]},
        ],
    }  # fmt: skip


@dataclass
class LocalPrometheus:
    home: Path
    settings: dict[str, Any]
    caddy_admin_port: int
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings['port']}"

    @staticmethod
    def binary() -> str | None:
        return shutil.which("prometheus")

    def start(self) -> bool:
        """Started (not waited for); False without the binary."""
        binary = self.binary()
        if binary is None:
            return False
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "prometheus.yml").write_text(json.dumps(config(self.settings, self.caddy_admin_port)))
        args = [binary, f"--config.file={self.home / 'prometheus.yml'}", f"--storage.tsdb.path={self.home / 'data'}",
                f"--storage.tsdb.retention.time={RETENTION}",
                f"--web.listen-address=127.0.0.1:{self.settings['port']}"]  # fmt: skip
        log = (self.home / "log").open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.home,
                                     start_new_session=True)  # fmt: skip
        return True

    def ready(self, timeout: float) -> bool:
        """Whether it answers /-/ready within ``timeout`` seconds (False at once when it exited)."""
        ends = time.monotonic() + timeout
        while self.proc is not None and self.proc.poll() is None:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            if time.monotonic() > ends:
                return False
            time.sleep(0.25)
        return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 10)
            self.proc = None
