"""A real registry for the tests: Debian's ``docker-registry`` (distribution 2.8) with token auth, its realm
the operator's issuer (`controller.operator.registry_tokens`), trusting the issuer's certificate only."""

from __future__ import annotations

import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from controller.local.cluster import free_port
from tests.servers import _spawn, _Spawned, scratch

BINARY = "/usr/bin/docker-registry"


@dataclass
class RegistryServer(_Spawned):
    root: Path
    host: str
    port: int

    @property
    def address(self) -> str:
        """As image names spell it: host:port."""
        return f"{self.host}:{self.port}"

    def start(self, realm: str, service: str, issuer: str, certificate_pem: str) -> RegistryServer:
        (self.root / "issuer.crt").write_text(certificate_pem)
        config = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.root / "data")}},
            "http": {"addr": self.address, "secret": secrets.token_hex(16)},
            "auth": {"token": {"realm": realm, "service": service, "issuer": issuer,
                               "rootcertbundle": str(self.root / "issuer.crt")}},
        }  # fmt: skip
        (self.root / "config.yml").write_text(yaml.safe_dump(config))
        self.proc = _spawn([BINARY, "serve", str(self.root / "config.yml")], self.root, self.port, host=self.host)
        return self


def start_registry(host: str, realm: str, service: str, issuer: str, certificate_pem: str) -> RegistryServer:
    if shutil.which(BINARY) is None:
        raise RuntimeError("docker-registry not installed: run deploy/dev test (Debian's docker-registry)")
    return RegistryServer(scratch("codeb-registry-"), host, free_port()).start(realm, service, issuer, certificate_pem)
