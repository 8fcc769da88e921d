"""A real registry for the tests: Debian's ``docker-registry`` (distribution 2.8) with token auth, its realm
the operator's issuer (`controller.operator.registry_tokens`), trusting the issuer's certificate only."""

from __future__ import annotations

import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from controller.local.archive import store_certificates
from controller.local.cluster import free_port
from tests.servers import _spawn, _Spawned, scratch

BINARY = "/usr/bin/docker-registry"


@dataclass
class RegistryServer(_Spawned):
    root: Path
    host: str
    port: int
    tls: bool = False  # HTTPS with a certificate from a CA of its own (ca_file), as a kubelet's runtime wants

    @property
    def ca_file(self) -> Path | None:
        return self.root / "ca.crt" if self.tls else None

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
        if self.tls:
            certs = store_certificates(self.root, self.host)
            config["http"]["tls"] = {"certificate": str(certs / "public.crt"), "key": str(certs / "private.key")}
        (self.root / "config.yml").write_text(yaml.safe_dump(config))
        self.proc = _spawn([BINARY, "serve", str(self.root / "config.yml")], self.root, self.port, host=self.host)
        return self


def start_registry(host: str, realm: str, service: str, issuer: str, certificate_pem: str, port: int = 0,
                   tls: bool = False) -> RegistryServer:  # fmt: skip
    if shutil.which(BINARY) is None:
        raise RuntimeError("docker-registry not installed: run deploy/dev test (Debian's docker-registry)")
    server = RegistryServer(scratch("codeb-registry-"), host, port or free_port(), tls)
    return server.start(realm, service, issuer, certificate_pem)
