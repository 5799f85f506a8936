"""JSON schema to GBNF, for constraining in-process generation (``Llama(json_schema=...)``).

llama-server converts schemas with its own C++ converter; libllama's C API has none, so this is
ours, for the subset applications use: ``type`` (object, array, string, number, integer,
boolean, null, or a list of them), ``properties`` with ``required`` (required ones first, in
the order declared, then the optional ones in theirs), ``additionalProperties: false``,
``items`` with ``minItems``/``maxItems``, ``enum``, ``const``, ``anyOf``, and nesting. Keywords
that only describe (``title``, ``description``, ``default``, ``examples``, ...) are ignored; any
other keyword raises :class:`~lmserv.errors.ConfigError` naming it and where it is, because
dropping a constraint silently would let through output the caller's schema refuses.

The output has no optional whitespace beyond one space after ``:`` and ``,``, which keeps
answers short and bounded. Numbers are bounded too (at most 16 integer and 16 fraction digits).

>>> print(json_schema_grammar({"enum": ["yes", "no"]}))
root ::= "\\"yes\\"" | "\\"no\\""
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from lmserv.errors import ConfigError

__all__ = ["json_schema_grammar"]

# Keywords that describe a schema without constraining it.
_ANNOTATIONS = frozenset(
    {
        "$schema",
        "$id",
        "$comment",
        "title",
        "description",
        "default",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
    }
)
_KEYWORDS = {
    "object": {"type", "properties", "required", "additionalProperties"},
    "array": {"type", "items", "minItems", "maxItems"},
}
_PRIMITIVES = {
    "string": "string",
    "number": "number",
    "integer": "integer",
    "boolean": "boolean",
    "null": "null",
}
# The shared rules, emitted only when used. Strings follow JSON: any character but a quote, a
# backslash or a control character, or an escape.
_RULES = {
    "value": "object-any | array-any | string | number | boolean | null",
    "object-any": '"{" space ( string ":" space value ( "," space string ":" space value )* )? "}"',
    "array-any": '"[" space ( value ( "," space value )* )? "]"',
    "string": '"\\"" char* "\\""',
    "char": '[^"\\\\\\x7F\\x00-\\x1F] | "\\\\" ( ["\\\\/bfnrt] | "u" [0-9a-fA-F]{4} )',
    "integer": '"-"? ( "0" | [1-9] [0-9]{0,15} )',
    "number": 'integer ( "." [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,3} )?',
    "boolean": '"true" | "false"',
    "null": '"null"',
    "space": '" "?',
}
_NEEDS = {
    "value": ("object-any", "array-any", "string", "number", "boolean", "null"),
    "object-any": ("space", "string", "value"),
    "array-any": ("space", "value"),
    "string": ("char",),
    "number": ("integer",),
}


def _literal(value: Any) -> str:
    """A GBNF string literal matching ``value``'s compact JSON text (``", "`` and ``": "``)."""
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return json.dumps(text, ensure_ascii=False)


class _Converter:
    def __init__(self) -> None:
        self.rules: dict[str, str] = {}
        self.used: set[str] = set()

    def use(self, name: str) -> str:
        if name not in self.used:
            self.used.add(name)
            for dep in _NEEDS.get(name, ()):
                self.use(dep)
        return name

    def add(self, hint: str, body: str) -> str:
        """A new rule named after ``hint`` (made unique), returning its name."""
        base = "".join(c if c.isalnum() else "-" for c in hint).strip("-").lower() or "r"
        name, n = base, 1
        while name in self.rules or name in _RULES or name == "root":
            n += 1
            name = f"{base}-{n}"
        self.rules[name] = body
        return name

    def convert(self, schema: Any, where: str) -> str:
        """A GBNF expression matching ``schema`` (at JSON pointer ``where``)."""
        if schema is True or (isinstance(schema, Mapping) and not _constraining(schema)):
            return self.use("value")
        if not isinstance(schema, Mapping):
            raise ConfigError(
                f"the JSON schema at {where} is {schema!r}; a schema is an object such as "
                '{"type": "string"}'
            )
        if "const" in schema:
            self.check(schema, {"const"}, where)
            return _literal(schema["const"])
        if "enum" in schema:
            self.check(schema, {"enum", "type"}, where)
            values = schema["enum"]
            if not isinstance(values, Sequence) or isinstance(values, str) or not values:
                raise ConfigError(f"enum at {where} must be a non-empty list, not {values!r}")
            return " | ".join(_literal(v) for v in values)
        if "anyOf" in schema:
            self.check(schema, {"anyOf"}, where)
            options = schema["anyOf"]
            if not isinstance(options, Sequence) or not options:
                raise ConfigError(f"anyOf at {where} must be a non-empty list of schemas")
            return " | ".join(
                f"( {self.convert(s, f'{where}/anyOf/{i}')} )" for i, s in enumerate(options)
            )
        kind = schema.get("type")
        if isinstance(kind, list):
            if not kind:
                raise ConfigError(f"type at {where} is an empty list")
            rest = {k: v for k, v in schema.items() if k != "type"}
            return " | ".join(f"( {self.convert({**rest, 'type': k}, where)} )" for k in kind)
        if kind == "object" or (kind is None and "properties" in schema):
            return self.object(schema, where)
        if kind == "array" or (kind is None and "items" in schema):
            return self.array(schema, where)
        if kind in _PRIMITIVES:
            self.check(schema, {"type"}, where)
            return self.use(_PRIMITIVES[kind])
        if kind is None:
            self.check(schema, set(), where)
        raise ConfigError(
            f"type={kind!r} at {where} is not a JSON schema type; use one of object, array, "
            + ", ".join(_PRIMITIVES)
        )

    def check(self, schema: Mapping[str, Any], allowed: set[str], where: str) -> None:
        unknown = sorted(k for k in schema if k not in allowed and k not in _ANNOTATIONS)
        if unknown:
            raise ConfigError(
                f"the JSON schema keyword(s) {', '.join(unknown)} at {where} are not supported "
                "in process (supported: type, properties, required, additionalProperties: false, "
                "items, minItems, maxItems, enum, const, anyOf); drop them, or serve the model "
                "with llama-server, whose converter knows more"
            )

    def object(self, schema: Mapping[str, Any], where: str) -> str:
        self.check(schema, _KEYWORDS["object"], where)
        props = schema.get("properties") or {}
        if not isinstance(props, Mapping):
            raise ConfigError(f"properties at {where} must be an object, not {props!r}")
        required = schema.get("required") or []
        missing = [name for name in required if name not in props]
        if missing:
            raise ConfigError(f"required at {where} names {missing}, which are not in properties")
        extra = schema.get("additionalProperties", False if props else True)
        if extra is not False and props:
            raise ConfigError(
                f"additionalProperties={extra!r} at {where} is not supported in process; "
                "leave it out or set it to false (only the listed properties are produced)"
            )
        if not props:
            return self.use("object-any")
        self.use("space")
        items = []
        for name, sub in props.items():
            value = self.convert(sub, f"{where}/properties/{name}")
            if " | " in value:
                value = f"( {value} )"
            rule = self.add(str(name), f'{_literal(name)} ":" space {value}')
            items.append((name, rule))
        req = [rule for name, rule in items if name in required]
        opt = [rule for name, rule in items if name not in required]
        comma = '"," space'
        if req:
            body = f" {comma} ".join(req) + "".join(f" ( {comma} {r} )?" for r in opt)
        else:  # every property optional: the first one present has no comma before it
            alternatives = [
                r + "".join(f" ( {comma} {o} )?" for o in opt[i + 1 :]) for i, r in enumerate(opt)
            ]
            body = "( " + " | ".join(alternatives) + " )?"
        return f'"{{" space {body} "}}"'

    def array(self, schema: Mapping[str, Any], where: str) -> str:
        self.check(schema, _KEYWORDS["array"], where)
        items = schema.get("items", True)
        item = self.convert(items, f"{where}/items")
        rule = self.add(f"{where}-item", item)
        low, high = schema.get("minItems", 0), schema.get("maxItems")
        for name, value in (("minItems", low), ("maxItems", high)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ConfigError(f"{name}={value!r} at {where} must be an int >= 0")
        if high is not None and high < low:
            raise ConfigError(f"maxItems={high} < minItems={low} at {where}: nothing matches")
        self.use("space")
        comma = f'"," space {rule}'
        if high == 0:
            return '"[" space "]"'
        more_low = max(low - 1, 0)
        more = (
            "*"
            if high is None and more_low == 0
            else f"{{{more_low},{'' if high is None else high - 1}}}"
        )
        seq = f"{rule} ( {comma} ){more}"
        body = seq if low > 0 else f"( {seq} )?"
        return f'"[" space {body} "]"'


def _constraining(schema: Mapping[str, Any]) -> bool:
    return any(k not in _ANNOTATIONS for k in schema)


def json_schema_grammar(schema: Mapping[str, Any] | bool) -> str:
    """GBNF text (root rule ``root``) for JSON documents matching ``schema``.

    Raises :class:`~lmserv.errors.ConfigError` for a keyword outside the supported subset (see
    the module docstring) or a malformed schema, naming the keyword and its place.

    >>> g = json_schema_grammar({"type": "object", "properties": {"n": {"type": "integer"}},
    ...                          "required": ["n"]})
    >>> print(g.splitlines()[1])
    n ::= "\\"n\\"" ":" space integer
    """
    conv = _Converter()
    root = conv.convert(schema, "#")
    lines = [f"root ::= {root}"]
    lines += [f"{name} ::= {body}" for name, body in conv.rules.items()]
    lines += [f"{name} ::= {_RULES[name]}" for name in _RULES if name in conv.used]
    return "\n".join(lines)
