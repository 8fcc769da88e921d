"""Checks a Terraform JSON module against a provider's own schema (`terraform providers schema -json`).

For a provider that cannot be installed (Vultr, here), this stands in for `terraform
validate`: every resource type exists, required attributes are set, no attribute or block
is unknown, and each value has the attribute's type, whether it is a literal or an
expression. Expressions are typed from what they name: a variable's declared type, a
resource attribute's schema type, ``count.index``, ``each.value`` of a ``for_each`` over a
variable; a template with text around its interpolations is a string. An expression of
any other form is reported, so the module stays simple enough to be checked.
"""

from __future__ import annotations

import re
from typing import Any

Type = Any  # "string" | "number" | "bool" | ["list"|"set"|"map", Type] | ["object", {name: Type}]
META = {"count", "for_each", "depends_on", "lifecycle", "provider", "//"}
INTERPOLATION = re.compile(r"\$\{([^}]*)\}")
REFERENCE = re.compile(r"^([a-z0-9_]+)\.([a-z0-9_]+)(\[\*\]|\[count\.index\]|\[\d+\])?\.([a-z0-9_]+)$")


def parse_type(text: str) -> Type:
    """A variable's type constraint (string, list(string), map(object({a = number})), …)."""
    parsed, rest = _parse_type(text.replace(" ", "").replace("\n", ""))
    if rest:
        raise ValueError(f"cannot read type {text!r}")
    return parsed


def _parse_type(text: str) -> tuple[Type, str]:
    for primitive in ("string", "number", "bool"):
        if text.startswith(primitive):
            return primitive, text[len(primitive) :]
    if text.startswith("object({"):
        fields: dict[str, Type] = {}
        rest = text[len("object({") :]
        while not rest.startswith("})"):
            name, rest = rest.split("=", 1)
            fields[name], rest = _parse_type(rest)
            rest = rest.removeprefix(",")
        return ["object", fields], rest[2:]
    for collection in ("list", "set", "map"):
        if text.startswith(collection + "("):
            inner, rest = _parse_type(text[len(collection) + 1 :])
            return [collection, inner], rest[1:]
    raise ValueError(f"cannot read type {text!r}")


def converts(value: Type, target: Type) -> bool:
    """Whether Terraform converts a value of type ``value`` to ``target`` without an error."""
    if value == target:
        return True
    if target == "string" and value in ("number", "bool"):
        return True
    if isinstance(value, list) and isinstance(target, list):
        if value[0] == "tuple" and target[0] in ("list", "set"):
            return all(converts(element, target[1]) for element in value[1])
        if value[0] in ("list", "set") and target[0] in ("list", "set"):
            return converts(value[1], target[1])
        if value[0] == "object" and target[0] == "object":
            return value[1].keys() == target[1].keys() and all(converts(value[1][k], target[1][k]) for k in value[1])
        if value[0] == "map" and target[0] == "map":
            return converts(value[1], target[1])
    return False


def type_of_value(value: Any) -> Type:
    """The type of plain data (inputs, literals)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return ["tuple", [type_of_value(v) for v in value]]
    if isinstance(value, dict):
        return ["object", {k: type_of_value(v) for k, v in value.items()}]
    raise TypeError(value)


def conforms(value: Any, target: Type) -> bool:
    """Plain data against a declared type (maps take any keys; objects exactly theirs)."""
    if isinstance(target, list) and target[0] == "map":
        return isinstance(value, dict) and all(conforms(v, target[1]) for v in value.values())
    if isinstance(target, list) and target[0] in ("list", "set"):
        return isinstance(value, list) and all(conforms(v, target[1]) for v in value)
    if isinstance(target, list) and target[0] == "object":
        fields = target[1]
        return (
            isinstance(value, dict)
            and value.keys() == fields.keys()
            and all(conforms(value[k], fields[k]) for k in fields)
        )
    return converts(type_of_value(value), target)


class ModuleChecker:
    def __init__(self, provider_schema: dict[str, Any], module: dict[str, Any]) -> None:
        self.resources = provider_schema["resource_schemas"]
        self.module = module
        self.variables = {name: parse_type(v["type"]) for name, v in module.get("variable", {}).items()}
        self.declared = {(t, n): body for t, named in module.get("resource", {}).items() for n, body in named.items()}
        self.problems: list[str] = []

    def check(self) -> list[str]:
        for (kind, name), body in self.declared.items():
            where = f"{kind}.{name}"
            if kind not in self.resources:
                self.problems.append(f"{where}: the provider has no resource type {kind}")
                continue
            self._block(where, self.resources[kind]["block"], body, self._each_type(where, body))
        for name, output in self.module.get("output", {}).items():
            self._expression_type(f"output.{name}", output["value"], None)
        return self.problems

    def _each_type(self, where: str, body: dict[str, Any]) -> Type | None:
        if "for_each" not in body:
            return None
        source = self._expression_type(f"{where}.for_each", body["for_each"], None)
        if isinstance(source, list) and source[0] == "map":
            return source[1]
        self.problems.append(f"{where}.for_each: must be a map variable, is {source}")
        return None

    def _block(self, where: str, schema: dict[str, Any], body: dict[str, Any], each: Type | None) -> None:
        attributes, blocks = schema.get("attributes", {}), schema.get("block_types", {})
        for key in body:
            if key not in attributes and key not in blocks and key not in META:
                self.problems.append(f"{where}.{key}: no such attribute or block")
        for key, attribute in attributes.items():
            if attribute.get("required") and key not in body:
                self.problems.append(f"{where}.{key}: required, not set")
            if key in body:
                if attribute.get("computed") and not attribute.get("optional"):
                    self.problems.append(f"{where}.{key}: computed by the provider, cannot be set")
                found = self._expression_type(f"{where}.{key}", body[key], each)
                if found is not None and not converts(found, attribute["type"]):
                    self.problems.append(f"{where}.{key}: is {found}, the provider wants {attribute['type']}")
        for key, block in blocks.items():
            items = body.get(key, [])
            items = [items] if isinstance(items, dict) else items
            if len(items) < block.get("min_items", 0) or len(items) > block.get("max_items", len(items)):
                self.problems.append(f"{where}.{key}: {len(items)} blocks, the provider wants "
                                     f"{block.get('min_items', 0)}..{block.get('max_items', 'any')}")  # fmt: skip
            for index, item in enumerate(items):
                self._block(f"{where}.{key}[{index}]", block["block"], item, each)

    def _expression_type(self, where: str, value: Any, each: Type | None) -> Type | None:
        if isinstance(value, list):
            types = [self._expression_type(f"{where}[{i}]", v, each) for i, v in enumerate(value)]
            return None if None in types else ["tuple", types]
        if not isinstance(value, str) or "${" not in value:
            return type_of_value(value)
        inner = INTERPOLATION.findall(value)
        types = [self._reference_type(where, expr.strip(), each) for expr in inner]
        if INTERPOLATION.sub("", value) or len(inner) > 1:
            return "string"  # a template
        return types[0]

    def _reference_type(self, where: str, expr: str, each: Type | None) -> Type | None:
        if expr == "count.index":
            return "number"
        if expr.startswith(("var.", "each.value")):
            root, *path = expr.split(".")[1:] if expr.startswith("var.") else ["each", *expr.split(".")[2:]]
            found = self.variables.get(root) if root != "each" else each
            if found is None:
                self.problems.append(f"{where}: {expr} names nothing declared")
                return None
            for name in path:
                if not (isinstance(found, list) and found[0] == "object" and name in found[1]):
                    self.problems.append(f"{where}: {expr}: no attribute {name}")
                    return None
                found = found[1][name]
            return found
        match = REFERENCE.match(expr)
        if match is None:
            self.problems.append(f"{where}: cannot type the expression {expr!r}")
            return None
        kind, name, index, attribute = match.groups()
        if (kind, name) not in self.declared:
            self.problems.append(f"{where}: {kind}.{name} is not declared in the module")
            return None
        attributes = self.resources.get(kind, {}).get("block", {}).get("attributes", {})
        if attribute not in attributes:
            self.problems.append(f"{where}: {kind} has no attribute {attribute}")
            return None
        found = attributes[attribute]["type"]
        return ["list", found] if index == "[*]" else found
