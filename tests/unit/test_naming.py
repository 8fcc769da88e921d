from __future__ import annotations

from pathlib import Path

from controller.claims.ledger import port_candidates
from controller.drivers.caddy import UpstreamFiles
from controller.loop import naming
from controller.loop.interface import DriverContext
from controller.loop.naming import ProjectKey
from schemas.platform import PlatformSpec
from schemas.project import Allocations, ProjectSpec
from tests.factories import project_spec


def spec(slug: str, env: str = "production", **sections: object) -> ProjectSpec:
    return ProjectSpec.model_validate(project_spec(slug=slug, env=env, **sections))


def test_production_names_follow_the_seeds() -> None:
    s = spec("food-delivery-app")
    assert naming.database_name(s) == "food_delivery_db"
    assert naming.database_role(s) == "food_delivery_user"
    assert naming.bucket_name(s) == "food-delivery-uploads"
    assert naming.redis_prefix(s) == "food-delivery-app:"


def test_other_environments_never_share_names_with_production() -> None:
    names = {
        (naming.database_name(s), naming.bucket_name(s), naming.redis_user(s))
        for s in (spec("shop"), spec("shop", "staging"), spec("shop", "preview"))
    }
    assert len(names) == 3
    assert naming.database_name(spec("shop", "preview")) == "shop_pr7_db"


def test_longest_slug_fits_postgres_identifier_limit() -> None:
    s = spec("a" * 30, "preview")
    assert len(naming.database_role(s)) <= 63


def test_port_candidates_cover_the_range_minus_reserved_in_order() -> None:
    candidates = port_candidates(spec("shop", "staging"), reserved={4500, 4501})
    assert list(candidates) == list(range(4502, 5000))


def test_a_routes_upstream_files_never_include_another_projects(tmp_path: Path) -> None:
    """Project ``shop`` cleaning up must not remove ``shop.x``'s files (a Project name may hold dots)."""
    files = UpstreamFiles(tmp_path)
    shop = DriverContext(ProjectKey("ns", "shop", "u1"), Allocations())
    dotted = DriverContext(ProjectKey("ns", "shop.x", "u2"), Allocations())
    files.write(shop, ["127.0.0.1:1", "127.0.0.1:2"])
    files.write(dotted, ["127.0.0.1:3"])
    files.remove(shop)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codeb.ns.shop.x.0"]


def test_a_platform_domain_names_projects_that_name_none() -> None:
    def routed(env: str, domains: list[str] | None = None) -> list[str]:
        raw = project_spec(slug="celly-creative", env=env)
        raw["environment"]["domains"] = domains or []
        return naming.routed(ProjectSpec.model_validate(raw), "codeb.one-q.xyz").environment.domains

    assert routed("production") == ["celly-creative.codeb.one-q.xyz"]  # the seeds' name
    assert routed("staging") == ["celly-creative-staging.codeb.one-q.xyz"]
    assert routed("preview") == ["pr-7.celly-creative.codeb.one-q.xyz"]
    assert routed("production", ["celly.example.com"]) == ["celly.example.com"]  # its own win
    spec = ProjectSpec.model_validate(project_spec())
    assert naming.routed(spec, None) is spec
    # The longest slug, preview number and Platform domain still make a valid domain name.
    longest = project_spec(slug="a" * 30, env="preview", environment={"type": "preview", "pullRequest": 99999})
    widest = PlatformSpec.model_validate({"domain": ".".join(["b" * 63, "c" * 63, "d" * 63, "e" * 8])}).domain
    assert widest is not None and len(widest) == 200  # the longest a Platform may name
    made = naming.platform_domain_name(ProjectSpec.model_validate(longest), widest)
    assert len(made) <= 253 and all(len(label) <= 63 for label in made.split("."))


def test_www_names_redirect_to_the_domains_that_can_have_one() -> None:
    raw = project_spec(environment={"type": "staging", "redirectWww": True,
                                    "domains": ["shop.example.com", "*.x.example.com", "www.blog.example.com",
                                                "blog.example.com"]})  # fmt: skip
    spec = ProjectSpec.model_validate(raw)
    # A wildcard has no www name, a www. name none of its own, and one named outright is served, not redirected.
    assert naming.redirects(spec) == {"www.shop.example.com": "shop.example.com"}
    assert naming.served_domains(spec)[-1] == "www.shop.example.com"
    raw["environment"]["redirectWww"] = False
    assert naming.redirects(ProjectSpec.model_validate(raw)) == {}
