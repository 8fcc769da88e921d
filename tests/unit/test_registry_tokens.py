"""What a Project's registry credential is granted, on plain data (`controller.specs.registry`)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import jwt
import pytest
from cryptography import x509

from controller.operator.registry_tokens import basic_credentials
from controller.specs.registry import (
    CERTIFICATE,
    CREDENTIALS_KEY,
    ISSUER,
    SIGNING_KEY,
    Access,
    claims,
    granted,
    new_issuer,
    password,
    project_of,
    requested,
    sign,
)

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def test_a_project_gets_pull_and_push_on_its_own_repository_and_nothing_else() -> None:
    asked = requested([
        "repository:codeb/shop/site:pull,push",
        "repository:codeb/shop/other:pull",  # a neighbour in the same namespace
        "repository:codeb/rivals/site:pull,push",  # the same name in another namespace
        "repository:codeb/shop/site/extra:push",  # a repository below its own
        "registry:catalog:*",  # the list of every repository
        "repository:codeb/shop/site:delete,*",  # more than pull and push
        "malformed",
    ])  # fmt: skip
    assert granted(asked, "shop", "site") == [Access("repository", "codeb/shop/site", ("pull", "push"))]


def test_scopes_are_read_with_their_actions_and_bounded_in_number() -> None:
    assert requested(["repository:codeb/shop/site:pull"]) == [Access("repository", "codeb/shop/site", ("pull",))]
    assert len(requested(["repository:a:pull"] * 100)) == 8


@pytest.mark.parametrize(
    ("user", "project"),
    [("shop/site", ("shop", "site")), ("shop/site.v2", ("shop", "site.v2")), ("shop", None), ("/site", None),
     ("Shop/site", None), ("shop/site/x", None), ("shop/-site", None), ("a" * 64 + "/site", None)],
)  # fmt: skip
def test_a_credentials_user_names_a_project_only_by_names_a_project_can_have(
    user: str, project: tuple[str, str] | None
) -> None:
    assert project_of(user) == project


def test_the_password_is_the_projects_own_and_only_the_key_makes_it() -> None:
    key = b"k" * 32
    mine = password(key, "shop", "site", "uid-1")
    assert mine == password(key, "shop", "site", "uid-1")
    assert mine != password(key, "shop", "site", "uid-2")  # made again under the same name: another password
    assert mine != password(key, "rivals", "site", "uid-1")
    assert mine != password(b"x" * 32, "shop", "site", "uid-1")


def test_the_token_is_signed_by_the_issuer_its_certificate_carried_and_short_lived() -> None:
    issuer = new_issuer(NOW, b"k" * 32)
    assert base64.b64decode(issuer[CREDENTIALS_KEY]) == b"k" * 32
    access = [Access("repository", "codeb/shop/site", ("pull",))]
    token = sign(claims("codeb-registry", "shop/site", access, NOW, "t1"), issuer[SIGNING_KEY], issuer[CERTIFICATE])
    certificate = x509.load_pem_x509_certificate(issuer[CERTIFICATE].encode())
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256" and len(header["x5c"]) == 1
    unexpired = {"verify_exp": False, "verify_nbf": False, "verify_iat": False}  # NOW is in the past
    read = jwt.decode(token, certificate.public_key(), algorithms=["ES256"], audience="codeb-registry",
                      issuer=ISSUER, options=unexpired)  # fmt: skip
    assert read["access"] == [{"type": "repository", "name": "codeb/shop/site", "actions": ["pull"]}]
    assert read["exp"] - read["iat"] == 300 and read["sub"] == "shop/site"
    other = new_issuer(NOW, b"k" * 32)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, x509.load_pem_x509_certificate(other[CERTIFICATE].encode()).public_key(),
                   algorithms=["ES256"], audience="codeb-registry", options={"verify_exp": False})  # fmt: skip


@pytest.mark.parametrize(
    ("header", "credentials"),
    [("Basic " + base64.b64encode(b"shop/site:pw:with:colons").decode(), ("shop/site", "pw:with:colons")),
     ("basic " + base64.b64encode(b"shop/site:").decode(), ("shop/site", "")),
     ("Bearer abc", None), ("Basic !!!", None), ("Basic " + base64.b64encode(b"no-colon").decode(), None),
     ("Basic " + "A" * 2000, None), ("", None)],
)  # fmt: skip
def test_basic_credentials_are_read_only_from_a_well_formed_header(
    header: str, credentials: tuple[str, str] | None
) -> None:
    assert basic_credentials(header) == credentials
