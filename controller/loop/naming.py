"""Names derived from a Project, pure.

The seeds name things after the application: ``food-delivery-app`` gets the
database ``food_delivery_db`` owned by ``food_delivery_user`` and the bucket
``food-delivery-uploads``. Production keeps exactly that scheme; staging and
preview add the environment so that twins of one slug never share data.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.project import EnvironmentType, ProjectSpec


@dataclass(frozen=True)
class ProjectKey:
    """Identity of a Project object; the uid tells a re-created Project from the old one."""

    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def base_name(spec: ProjectSpec) -> str:
    """The slug without a trailing '-app', as the seeds' naming does."""
    slug = spec.project.slug
    return slug.removesuffix("-app") if slug.endswith("-app") and len(slug) > 4 else slug


def environment_suffix(spec: ProjectSpec) -> str:
    env = spec.environment
    if env.type is EnvironmentType.production:
        return ""
    if env.type is EnvironmentType.preview:
        return f"-pr{env.pull_request}"
    return f"-{env.type.value}"


def instance_name(spec: ProjectSpec) -> str:
    """DNS-label name of this deployment of the application: shop, shop-staging, shop-pr42."""
    return spec.project.slug + environment_suffix(spec)


def database_name(spec: ProjectSpec) -> str:
    return (base_name(spec) + environment_suffix(spec)).replace("-", "_") + "_db"


def database_role(spec: ProjectSpec) -> str:
    return (base_name(spec) + environment_suffix(spec)).replace("-", "_") + "_user"


def bucket_name(spec: ProjectSpec) -> str:
    storage = spec.features.storage
    if storage is not None and storage.bucket:
        return storage.bucket
    return f"{base_name(spec)}{environment_suffix(spec)}-uploads"


def redis_user(spec: ProjectSpec) -> str:
    return instance_name(spec)


def redis_prefix(spec: ProjectSpec) -> str:
    return f"{instance_name(spec)}:"


def connection_secret_name(spec: ProjectSpec) -> str:
    return f"{instance_name(spec)}-connection"


def platform_domain_name(spec: ProjectSpec, domain: str) -> str:
    """The name a Platform's ``domain`` gives a Project: shop.<domain>, shop-staging.<domain>, and for a
    preview pr-42.shop.<domain> (the seeds' celly-creative.codeb.one-q.xyz)."""
    env = spec.environment
    if env.type is EnvironmentType.preview:
        return f"pr-{env.pull_request}.{spec.project.slug}.{domain}"
    return f"{instance_name(spec)}.{domain}"


def routed(spec: ProjectSpec, platform_domain: str | None) -> ProjectSpec:
    """The spec as it is routed: its own domains, or else the one its Platform's domain gives it."""
    if spec.environment.domains or platform_domain is None:
        return spec
    environment = spec.environment.model_copy(update={"domains": [platform_domain_name(spec, platform_domain)]})
    return spec.model_copy(update={"environment": environment})


def www_redirects(domains: list[str]) -> dict[str, str]:
    """``www.<domain>`` for each domain that can have one and does not name it itself, to that domain."""
    redirects = {f"www.{d}": d for d in domains if not d.startswith(("*.", "www."))}
    return {www: d for www, d in redirects.items() if www not in domains}


def redirects(spec: ProjectSpec) -> dict[str, str]:
    """The names that answer a redirect to another of the Project's domains (``redirectWww``)."""
    return www_redirects(list(spec.environment.domains)) if spec.environment.redirect_www else {}


def served_domains(spec: ProjectSpec) -> list[str]:
    """Every name the Project's route answers, redirects included: what it claims, routes and resolves."""
    return [*spec.environment.domains, *redirects(spec)]


def primary_url(spec: ProjectSpec) -> str | None:
    domains = spec.environment.domains
    return f"https://{domains[0]}" if domains else None
