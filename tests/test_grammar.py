"""``json_schema_grammar``: our JSON-schema-to-GBNF conversion, without a build.

The grammars are checked for what they say (rules, bounds) and for what they refuse (every
keyword outside the subset is a ConfigError naming it and where it is). That libllama accepts
them and that generation follows them is checked with the real library in test_structured.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from lmserv import ConfigError, json_schema_grammar


def _rules(schema: Any) -> dict[str, str]:
    lines = json_schema_grammar(schema).splitlines()
    return dict(line.split(" ::= ", 1) for line in lines)


def test_enum_and_const_are_their_json_literals() -> None:
    assert _rules({"enum": ["three", 4, True, None]})["root"] == (
        '"\\"three\\"" | "4" | "true" | "null"'
    )
    assert _rules({"const": {"a": [1, 2]}})["root"] == '"{\\"a\\": [1, 2]}"'


def test_required_properties_come_first_then_the_optional_ones() -> None:
    rules = _rules(
        {
            "type": "object",
            "properties": {"b": {"type": "integer"}, "a": {"type": "string"}},
            "required": ["a"],
        }
    )
    assert rules["root"] == '"{" space a ( "," space b )? "}"'
    assert rules["a"] == '"\\"a\\"" ":" space string'
    assert rules["b"] == '"\\"b\\"" ":" space integer'


def test_all_optional_properties_need_no_leading_comma() -> None:
    rules = _rules({"type": "object", "properties": {"x": {}, "y": {"type": "null"}}})
    assert rules["root"] == '"{" space ( x ( "," space y )? | y )? "}"'
    assert rules["x"].endswith("space value")  # {} is any value


def test_alternatives_inside_a_property_are_grouped() -> None:
    rules = _rules({"type": "object", "properties": {"n": {"enum": ["one", "two"]}}})
    assert rules["n"] == '"\\"n\\"" ":" space ( "\\"one\\"" | "\\"two\\"" )'


def test_arrays_are_bounded_by_min_and_max_items() -> None:
    root = _rules({"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 3})
    assert root["root"] == '"[" space item ( "," space item ){0,2} "]"'
    assert root["item"] == "boolean"
    unbounded = _rules({"type": "array", "items": {"type": "number"}})["root"]
    assert unbounded == '"[" space ( item ( "," space item )* )? "]"'
    at_least = _rules({"type": "array", "minItems": 2})["root"]
    assert at_least == '"[" space item ( "," space item ){1,} "]"'
    assert _rules({"type": "array", "maxItems": 0})["root"] == '"[" space "]"'


def test_type_lists_any_of_and_nesting() -> None:
    rules = _rules({"type": ["string", "null"]})
    assert rules["root"] == "( string ) | ( null )"
    nested = _rules(
        {
            "type": "object",
            "properties": {
                "point": {
                    "type": "object",
                    "properties": {"x": {"anyOf": [{"type": "integer"}, {"const": "far"}]}},
                    "required": ["x"],
                }
            },
            "required": ["point"],
            "title": "annotations such as this one are ignored",
        }
    )
    assert nested["root"] == '"{" space point "}"'
    assert nested["x"] == '"\\"x\\"" ":" space ( ( integer ) | ( "\\"far\\"" ) )'


def test_rule_names_never_clash_with_the_shared_ones() -> None:
    rules = _rules({"type": "object", "properties": {"string": {"type": "string"}, "root": {}}})
    assert rules["string"] == '"\\"" char* "\\""'  # the shared rule, untouched
    assert rules["string-2"] == '"\\"string\\"" ":" space string'
    assert rules["root-2"].startswith('"\\"root\\""')


def test_numbers_are_bounded() -> None:
    rules = _rules({"type": "number"})
    assert rules["integer"] == '"-"? ( "0" | [1-9] [0-9]{0,15} )'
    assert "{1,16}" in rules["number"]


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "string", "pattern": "a+"}, "pattern at #"),
        ({"type": "integer", "minimum": 0}, "minimum at #"),
        ({"$ref": "#/defs/a"}, "$ref at #"),
        ({"oneOf": [{"type": "string"}]}, "oneOf at #"),
        ({"type": "string", "format": "date"}, "format at #"),
        ({"type": "object", "properties": {"a": {"type": "string", "maxLength": 3}}},
         "maxLength at #/properties/a"),
        ({"type": "array", "items": {"type": "string", "enum": ["x"], "pattern": "x"}},
         "pattern at #/items"),
        ({"type": "object", "properties": {"a": {}}, "additionalProperties": True},
         "additionalProperties=True"),
        ({"type": "object", "properties": {"a": {}}, "required": ["b"]}, "names ['b']"),
        ({"type": "array", "minItems": 3, "maxItems": 1}, "maxItems=1 < minItems=3"),
        ({"type": "date"}, "type='date'"),
        ({"enum": []}, "enum at # must be a non-empty list"),
        ({"type": "object", "properties": {"a": 5}}, "at #/properties/a is 5"),
    ],
)  # fmt: skip
def test_what_is_not_supported_is_a_config_error_naming_it(schema: Any, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        json_schema_grammar(schema)
    assert words in str(caught.value)
    assert isinstance(caught.value, ValueError)
