"""Hypothesis strategies built from a pydantic model's JSON Schema, for the property tests of
test_bad_input.py that call the parsers in-process (parse_params, the job file reader on YAML).

The HTTP API is fuzzed by Schemathesis from its served document (test_schemathesis.py); this
stays for what Schemathesis cannot do: generate values for a bare JSON Schema, not an API
operation, and feed them to a function. A small generator of our own (hypothesis-jsonschema does
not follow current Hypothesis): $ref into `$defs`, anyOf/oneOf, enum/const, objects with required
and optional properties, arrays, strings with lengths or a pattern, numbers with bounds and
multipleOf. `wild=True` mixes in values of any JSON type at every level, unknown keys and
out-of-range numbers: mostly-valid input with one thing wrong is what finds the gaps in a
validator.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)


class SchemaStrategies:
    def __init__(self, definitions: dict[str, Any]) -> None:
        self.definitions = definitions

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.definitions[schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    def for_schema(self, schema: dict[str, Any], *, wild: bool = False) -> st.SearchStrategy[Any]:
        valid = self._valid(self.resolve(schema), wild)
        if not wild:
            return valid
        return st.one_of(valid, valid, valid, JSON_VALUES)

    def _valid(self, schema: dict[str, Any], wild: bool) -> st.SearchStrategy[Any]:
        if "const" in schema:
            return st.just(schema["const"])
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        for key in ("anyOf", "oneOf"):
            if key in schema and "properties" in schema:
                # Branches that narrow one object (which keys it needs): each branch's
                # `required` joins the object's own.
                base = {k: v for k, v in schema.items() if k != key}
                return st.one_of(
                    [
                        self._object(
                            {
                                **base,
                                "required": sorted(
                                    set(base.get("required", [])) | set(b.get("required", []))
                                ),
                            },
                            wild,
                        )
                        for b in schema[key]
                    ]
                )
            if key in schema:
                return st.one_of([self.for_schema(s, wild=wild) for s in schema[key]])
        kind = schema.get("type")
        if isinstance(kind, list):
            return st.one_of([self._valid({**schema, "type": k}, wild) for k in kind])
        if kind == "object" or "properties" in schema:
            return self._object(schema, wild)
        if kind == "array":
            items = self.for_schema(schema.get("items", {}), wild=wild)
            return st.lists(
                items,
                min_size=schema.get("minItems", 0),
                max_size=min(schema.get("maxItems", 4), 4),
            )
        if kind == "string":
            if "pattern" in schema:
                return st.from_regex(schema["pattern"], fullmatch=True).filter(
                    lambda s: len(s) <= schema.get("maxLength", 10**6)
                )
            return st.text(
                min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 40), 40)
            )
        if kind == "integer":
            lo, hi = schema.get("minimum"), schema.get("maximum")
            step = schema.get("multipleOf")
            ints = st.integers(min_value=lo, max_value=hi)
            if step:
                ints = ints.map(lambda n: n - n % step).filter(
                    lambda n: (lo is None or n >= lo) and (hi is None or n <= hi)
                )
            if wild:
                ints = st.one_of(ints, st.integers(min_value=-(2**40), max_value=2**40))
            return ints
        if kind == "number":
            floats = st.floats(
                min_value=schema.get("minimum"),
                max_value=schema.get("maximum"),
                allow_nan=False,
                allow_infinity=False,
            )
            return st.one_of(floats, JSON_SCALARS) if wild else floats
        if kind == "boolean":
            return st.booleans()
        if kind == "null":
            return st.none()
        return JSON_VALUES

    def _object(self, schema: dict[str, Any], wild: bool) -> st.SearchStrategy[Any]:
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        mandatory = {
            k: self.for_schema(v, wild=wild) for k, v in properties.items() if k in required
        }
        optional = {
            k: self.for_schema(v, wild=wild) for k, v in properties.items() if k not in required
        }
        objects = st.fixed_dictionaries(mandatory, optional=optional)
        if not properties and schema.get("additionalProperties") not in (False, None):
            objects = st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=4)
        if wild:
            unknown = st.dictionaries(
                st.text(min_size=1, max_size=10).filter(lambda k: k not in properties),
                JSON_VALUES,
                max_size=2,
            )
            dropped = (
                st.sets(st.sampled_from(sorted(required)), max_size=1)
                if required
                else st.just(set())
            )
            objects = st.builds(_combine, objects, unknown, dropped)
        return objects


def _combine(base: dict[str, Any], unknown: dict[str, Any], dropped: set[str]) -> dict[str, Any]:
    out = {k: v for k, v in base.items() if k not in dropped}
    out.update(unknown)
    return out
