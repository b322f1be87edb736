"""Checks real responses against the OpenAPI document the core serves."""

from __future__ import annotations

import copy
import re
from typing import Any

import httpx
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOC_URI = "urn:mobilesd:openapi"


def closed_schemas(node: Any) -> Any:
    """A copy where every object schema with `properties` and no `additionalProperties` allows no
    other keys, so a field the core returns but the document does not name fails the test."""
    if isinstance(node, dict):
        out = {k: closed_schemas(v) for k, v in node.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [closed_schemas(v) for v in node]
    return node


def _pointer(*parts: str) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


class ResponseChecker:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        strict = copy.deepcopy(doc)
        strict["components"]["schemas"] = closed_schemas(strict["components"]["schemas"])
        resource = Resource(contents=strict, specification=DRAFT202012)
        self.registry = Registry().with_resource(DOC_URI, resource)
        self.checked: set[tuple[str, str, str]] = set()

    def _template(self, method: str, url_path: str) -> str:
        for template, item in self.doc["paths"].items():
            pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
            if method in item and re.match(pattern, url_path):
                return template
        raise AssertionError(f"{method.upper()} {url_path} is not documented")

    def __call__(self, response: httpx.Response) -> Any:
        method = response.request.method.lower()
        template = self._template(method, response.request.url.path)
        responses = self.doc["paths"][template][method]["responses"]
        status = str(response.status_code)
        assert status in responses, (
            f"{method.upper()} {template} answered {status}, documented: {sorted(responses)}"
        )
        self.checked.add((method, template, status))
        documented = responses[status]
        pointer = _pointer("paths", template, method, "responses", status)
        if "$ref" in documented:
            pointer = documented["$ref"].removeprefix("#")
            documented = self.doc["components"]["responses"][pointer.rsplit("/", 1)[-1]]
        content = documented.get("content", {})
        if not content:
            assert response.content == b"", f"{template} {status} should have no body"
            return None
        media = response.headers["Content-Type"].split(";")[0].strip()
        assert media in content, f"{template} {status}: {media} not in {sorted(content)}"
        if media != "application/json":
            return response.content
        body = response.json()
        schema_ref = f"{DOC_URI}#{pointer}{_pointer('content', media, 'schema')}"
        validator = Draft202012Validator(
            {"$ref": schema_ref},
            registry=self.registry,
            format_checker=Draft202012Validator.FORMAT_CHECKER,
        )
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        assert not errors, f"{method.upper()} {template} {status}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}" for e in errors[:5]
        )
        return body
