"""A Platform's registry, by token: each Project may push and pull its own repository, and nothing else.

The registry (distribution; Debian's ``docker-registry``) runs with ``auth.token``: it answers a request
without a token with a challenge naming the operator's inbound listener as the realm
(``GET /registry/token``, `controller.operator.registry_tokens`). A client (podman on a Project's host, a
kubelet with a pull Secret) asks there with the Project's credential, HTTP Basic: user
``<namespace>/<name>``, password derived from the operator's own key and the Project's uid, so nothing per
Project is stored and a Project made again under the same name gets another password. The answer is a
short-lived token signed with the operator's issuer key, granting at most ``pull`` and ``push`` on
``codeb/<namespace>/<name>``; the registry checks its signature against the issuer's certificate (its
``rootcertbundle``), its issuer, audience (its ``service``) and expiry, and allows what it grants.

Everything here is pure: what a scope asks, what is granted, the claims, the signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from schemas.base import DNS_LABEL

ISSUER = "codeb-operator"  # the registry's auth.token.issuer
REPOSITORY_ROOT = "codeb"
ACTIONS = ("pull", "push")
TOKEN_SECONDS = 300
MAX_SCOPES = 8  # a client asks for one or two; more are not read
NAMESPACE = re.compile(DNS_LABEL)
OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")  # a Project's name: a DNS subdomain
# Issuer Secret keys: the signing key and its certificate (PEM), and the key credentials derive from.
SIGNING_KEY, CERTIFICATE, CREDENTIALS_KEY = "tls.key", "tls.crt", "credentials.key"


@dataclass(frozen=True)
class Access:
    type: str
    name: str
    actions: tuple[str, ...]

    def claim(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


def repository(namespace: str, name: str) -> str:
    """The Project's own repository: ``codeb/<namespace>/<name>`` (each a valid repository path component)."""
    return f"{REPOSITORY_ROOT}/{namespace}/{name}"


def auth_config(host: str, user: str, password: str) -> str:
    """A credential as podman's ``--authfile`` and a kubelet's dockerconfigjson Secret read it."""
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    return json.dumps({"auths": {host: {"username": user, "password": password, "auth": auth}}})


def username(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def project_of(user: str) -> tuple[str, str] | None:
    """The (namespace, name) a credential's user names, when both are names a Project can have."""
    namespace, _, name = user.partition("/")
    fits = len(namespace) <= 63 and len(name) <= 253
    return (namespace, name) if fits and NAMESPACE.fullmatch(namespace) and OBJECT_NAME.fullmatch(name) else None


def password(key: bytes, namespace: str, name: str, uid: str) -> str:
    """The Project's registry password: only the operator's key makes it, and its uid makes it its own."""
    digest = hmac.new(key, f"{namespace}/{name}/{uid}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def requested(scopes: list[str]) -> list[Access]:
    """What ``scope`` parameters ask (``repository:codeb/shop/site:pull,push``); malformed ones ask nothing."""
    asked = []
    for scope in scopes[:MAX_SCOPES]:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind and name and actions:
            asked.append(Access(kind, name, tuple(a for a in actions.split(",") if a)))
    return asked


def granted(asked: list[Access], namespace: str, name: str) -> list[Access]:
    """What the Project gets of ``asked``: pull and push on its own repository; anything else, nothing."""
    own = repository(namespace, name)
    given = []
    for access in asked:
        actions = tuple(a for a in ACTIONS if a in access.actions)
        if access.type == "repository" and access.name == own and actions:
            given.append(Access(access.type, access.name, actions))
    return given


def claims(service: str, subject: str, access: list[Access], now: datetime, token_id: str) -> dict[str, Any]:
    stamp = int(now.timestamp())
    return {"iss": ISSUER, "sub": subject, "aud": service, "iat": stamp, "nbf": stamp,
            "exp": stamp + TOKEN_SECONDS, "jti": token_id, "access": [a.claim() for a in access]}  # fmt: skip


def sign(claimed: dict[str, Any], signing_key_pem: str, certificate_pem: str) -> str:
    """The token: ES256, with the issuer's certificate in ``x5c`` for the registry to check against its bundle."""
    certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
    der = base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()
    return jwt.encode(claimed, signing_key_pem, algorithm="ES256", headers={"x5c": [der]})


def new_issuer(now: datetime, credentials_key: bytes) -> dict[str, str]:
    """A new issuer: a P-256 signing key, its self-signed certificate (what the registry's rootcertbundle
    holds) and the key Projects' passwords derive from."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "codeb registry token issuer")])
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return {SIGNING_KEY: pem.decode(), CERTIFICATE: certificate.public_bytes(serialization.Encoding.PEM).decode(),
            CREDENTIALS_KEY: base64.b64encode(credentials_key).decode()}  # fmt: skip
