"""The JSON constraint (runtime/json_constraint.py) and the sampler that asks it
(runtime/sampling.py): the byte-level recognizer on its own, the schema subset and its
refusals, then token-level choice over a fake vocabulary (a list of byte strings) and
over the real 151,936-token Qwen2 vocabulary, and logit_bias.
"""
import json
import math

import numpy as np
import pytest

from runtime import json_constraint as jc
from runtime.sampling import (CHUNK_LARGE, NoTokenAllowed, Sampler, SamplingParams,
                              apply_logit_bias)
from tests.conftest import FIXTURES


def run(text, node=jc.ANY):
    """None if `text` cannot start a reply of `node`; else whether it is a whole one."""
    state = jc.feed(jc.value_grammar(node), text.encode("utf-8") if isinstance(text, str) else text)
    return None if state is None else jc.can_end(state)


def schema(s, **kw):
    return jc.compile_schema(s, **kw)


def check_texts(node, whole=(), refused=()):
    """Each of `whole` is a complete value of `node`; none of `refused` can even start one."""
    for text in whole:
        assert run(text, node) is True, text
    for text in refused:
        assert run(text, node) is None, text


# ---- the recognizer: plain JSON -----------------------------------------------------------

@pytest.mark.parametrize("text", [
    '{}', '[]', '""', '0', '-0', '12', '-3.25', '1e5', '2.5E-3', '1E+2', 'true', 'false', 'null',
    '{"a": 1, "b": [true, false, null], "c": {"d": "e"}}',
    '{"s": "tab\\tquote\\" slash\\/ \\u00e9 \\u20ac é € 😀"}',
    ' {"a":1}', '\n{"a":1}', '{"a":1}\n', '{"a":1} ',
    '{\n  "a": [\n    1,\n    2\n  ]\n}',                       # pretty-printed, indent 2
    '{\n\t"a": 1\n}',
])
def test_whole_json_values_are_accepted(text):
    assert run(text) is True
    json.loads(text)


@pytest.mark.parametrize("text", ['{', '{"a"', '{"a":', '{"a": 1', '[1,', '"abc', '-', '1.',
                                  '1e', '1e+', 'tr', 'nul', '"\\u00', '"\\', '{"a": [1, {"b": '])
def test_prefixes_are_allowed_but_not_whole(text):
    assert run(text) is False


@pytest.mark.parametrize("text", [
    '{"a":}', '[1,]', '{,}', '{"a" 1}', '{a: 1}', "{'a': 1}", '01', '-a', '1.e5', '+1', '.5',
    'True', 'nil', '"\\x41"', '"\\ud800"', '"\\udfff"', '"a\nb"', '"\x01"', '{"a":1}}', '[1]]',
    '{"a":1} x', 'NaN', 'Infinity', '"a" "b"',
    ' \n{}',             # a newline only starts a whitespace run
    '  {}',              # one space, or a newline and an indentation
    '{"a":1}\n\n',       # one whitespace byte after the value, then only the end
    '{\n' + ' ' * 21 + '"a": 1}',   # indentation is capped
])
def test_invalid_texts_are_refused_at_the_first_wrong_byte(text):
    assert run(text) is None


def test_utf8_is_checked_byte_by_byte_across_pieces():
    euro = "€".encode()                     # 3 bytes, which tokens may split anywhere
    state = jc.value_grammar(jc.ANY)
    for piece in (b'"', euro[:1], euro[1:2], euro[2:], b'"'):
        state = jc.feed(state, piece)
        assert state is not None
    assert jc.can_end(state)
    assert run(b'"' + euro[:2] + b'"') is None          # cut short
    assert run(b'"\xc0\x80"') is None                    # overlong
    assert run(b'"\xed\xa0\x80"') is None                # a surrogate in UTF-8
    assert run(b'"\xff"') is None


def test_numbers_end_where_the_next_byte_cannot_continue_them():
    assert run('[12,3]') is True
    assert run('{"a":-0.5e-7}') is True
    assert run('1' * jc.MAX_NUMBER_BYTES) is True
    assert run('1' * (jc.MAX_NUMBER_BYTES + 1)) is None
    # a number that cannot end may not take the last byte allowed
    assert run('1' * (jc.MAX_NUMBER_BYTES - 1) + '.') is None


def test_nesting_is_capped():
    assert run('[' * jc.MAX_DEPTH + ']' * jc.MAX_DEPTH) is True
    assert run('[' * (jc.MAX_DEPTH + 1)) is None


def test_special_token_bytes_only_spell_a_literal_prefix():
    start = jc.wrapped_grammar(jc.ANY, [("<tool_call>\n", "\n</tool_call>")])
    assert jc.feed(start, b"<tool_call>", raw_only=True) is not None
    assert jc.feed(start, b"{", raw_only=True) is None
    inside = jc.feed(start, b"<tool_call>\n")
    assert jc.feed(inside, b'{"a": "<tool_call>"}') is not None       # as text, fine
    assert jc.feed(inside, b"<tool_call>", raw_only=True) is None     # as a special token, not
    whole = jc.feed(inside, b'{"a": 1}\n</tool_call>')
    assert whole is not None and jc.can_end(whole)


# ---- the schema subset --------------------------------------------------------------------

CITY = {"type": "object", "properties": {"city": {"type": "string"},
                                         "population": {"type": "integer"}},
        "required": ["city", "population"]}


def test_required_keys_must_come_before_the_object_closes():
    node = schema(CITY)
    assert run('{"city": "Paris", "population": 2100000}', node) is True
    assert run('{"population": 2100000, "city": "Paris"}', node) is None   # the schema's order
    assert run('{"city": "Paris"}', node) is None
    assert run('{"city": "Paris", "population": 2.5', node) is None       # integer
    assert run('{"city": 3', node) is None
    assert run('{"city": "a", "city"', node) is None                      # no duplicates
    # Without additionalProperties: false, other keys are allowed (JSON Schema's default),
    # once the required ones are there (a subset of the schema, to keep models on track).
    assert run('{"city": "a", "population": 1, "mayor": {"x": [1]}}', node) is True
    assert run('{"city": "a", "mayor"', node) is None
    assert run('{"city": "a", "population": 1, "city"', node) is None


def test_required_keys_need_not_be_listed_when_other_keys_are_allowed():
    node = schema({"type": "object", "required": ["x"], "additionalProperties": {"type": "integer"}})
    assert run('{"x": 1, "y": 2}', node) is True
    assert run('{"y"', node) is None
    assert run('{"x": "s"', node) is None


@pytest.mark.parametrize("kw, strict", [({"additionalProperties": False}, False), ({}, True)])
def test_no_additional_properties_limits_the_keys(kw, strict):
    node = schema({**CITY, **kw}, strict=strict)
    assert run('{"city": "Paris", "population": 1}', node) is True
    assert run('{"mayor"', node) is None
    assert run('{"cit', node) is False
    assert run('{"cityx', node) is None
    assert run('{"population": 1, "city": "x",', node) is None     # no key is left


def test_additional_properties_schema_applies_to_unlisted_keys():
    node = schema({"type": "object", "properties": {"a": {"type": "string"}},
                   "additionalProperties": {"type": "integer"}})
    assert run('{"a": "x", "b": 1}', node) is True
    assert run('{"b": "x"', node) is None
    assert run('{"\\u0061": "x"}', node) is True     # an escaped name is still "a"


ABC = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"},
                                        "c": {"type": "integer"}},
       "required": ["a", "c"]}


@pytest.mark.parametrize("kw, strict", [({}, False), ({"additionalProperties": False}, False),
                                        ({}, True), ({"additionalProperties": {}}, True)])
def test_listed_keys_come_in_the_schemas_order(kw, strict):
    node = schema({**ABC, **kw}, strict=strict)
    assert run('{"a": 1, "c": 3}', node) is True                # optional b skipped
    assert run('{"a": 1, "b": 2, "c": 3}', node) is True
    assert run('{"c": 3, "a": 1}', node) is None                # a is required, and first
    assert run('{"b": 2, "a": 1}', node) is None
    assert run('{"c"', node) is None and run('{"b"', node) is None
    assert run('{"a": 1, "c": 3, "b": 2}', node) is None        # b's place has passed
    assert run('{"a": 1, "c": 3, "b"', node) in (None, False)   # (a free key's prefix)
    assert run('{"a": 1, "b": 2}', node) is None                # c is required
    assert run('{"a": 1, "b": 2, "a"', node) is None            # no duplicates
    assert run('{"a": 1, "c": 3, "a"', node) in (None, False)
    assert run('{"a": 1, "c": 3, "a":', node) is None


def test_optional_keys_may_each_be_skipped_but_not_reordered():
    node = schema({"type": "object", "additionalProperties": False,
                   "properties": {"x": {"type": "integer"}, "y": {"type": "integer"},
                                  "z": {"type": "integer"}}})
    for text in ('{}', '{"x": 1}', '{"y": 1}', '{"z": 1}', '{"x": 1, "z": 1}', '{"y": 1, "z": 1}',
                 '{"x": 1, "y": 1, "z": 1}'):
        assert run(text, node) is True, text
    for text in ('{"z": 1, "x"', '{"y": 1, "x"', '{"x": 1, "z": 1, "y"', '{"y": 1, "y"',
                 '{"x": 1, "y": 1, "z": 1,'):
        assert run(text, node) is None, text


def test_unlisted_keys_come_after_every_listed_key_written():
    node = schema({**ABC, "additionalProperties": {"type": "string"}})
    assert run('{"a": 1, "c": 3, "x": "s"}', node) is True
    assert run('{"a": 1, "b": 2, "c": 3, "x": "s", "y": "t"}', node) is True
    assert run('{"x"', node) is None                            # a is still to come
    assert run('{"a": 1, "x"', node) is None                    # and c
    assert run('{"a": 1, "c": 3, "x": "s", "x":', node) is None  # no duplicates
    assert run('{"a": 1, "c": 3, "x": 1', node) is None          # their schema
    # once an unlisted key is written, no listed one: a trailing optional is skipped
    tail = schema({"type": "object", "properties": {"a": {"type": "integer"},
                                                    "b": {"type": "integer"}},
                   "required": ["a"], "additionalProperties": {"type": "string"}})
    assert run('{"a": 1, "x": "s"}', tail) is True
    assert run('{"a": 1, "b": 2, "x": "s"}', tail) is True
    assert run('{"a": 1, "x": "s", "b":', tail) is None
    assert run('{"b": 2', tail) is None
    # where unlisted keys may come, a listed key may be spelt with escapes, at its place
    assert run('{"a": 1, "\\u0062": 2}', tail) is True
    assert run('{"a": 1, "\\u0062": "s"', tail) is None        # it is b: an integer
    assert run('{"a": 1, "b": 2, "\\u0062":', tail) is None


def test_required_keys_that_are_not_listed_come_after_the_listed_ones_in_required_order():
    node = schema({"type": "object", "properties": {"p": {"type": "boolean"}},
                   "required": ["x", "y"], "additionalProperties": {"type": "integer"}})
    check_texts(node, whole=['{"p": true, "x": 1, "y": 2}', '{"x": 1, "y": 2, "z": 3}'],
                refused=['{"y": 1', '{"x": 1, "p"', '{"x": 1, "z"', '{"x": 1, "y": 2, "p":'])


def test_objects_in_arrays_and_nested_objects_each_keep_their_own_order():
    node = schema({"type": "array", "items": {
        "type": "object", "additionalProperties": False, "required": ["k", "v"],
        "properties": {"k": {"type": "string"}, "v": {"type": "object", "properties": {
            "m": {"type": "integer"}, "n": {"type": "integer"}}, "required": ["n"],
            "additionalProperties": False}}}})
    check_texts(node, whole=['[{"k": "a", "v": {"m": 1, "n": 2}}, {"k": "b", "v": {"n": 3}}]'],
                refused=['[{"k": "a", "v": {"n": 1, "m"', '[{"k": "a", "v": {"n": 1}}, {"v"'])


def test_enum_const_and_type_lists():
    assert run('"red"', schema({"enum": ["red", "green"]})) is True
    assert run('"blue"', schema({"enum": ["red", "green"]})) is None
    assert run('1', schema({"enum": [1, 10, "x", None]})) is True
    assert run('10', schema({"enum": [1, 10, "x", None]})) is True
    assert run('100', schema({"enum": [1, 10, "x", None]})) is None
    assert run('null', schema({"enum": [1, None]})) is True
    assert run('"é"', schema({"const": "é"})) is True
    assert run('"\\u00e9"', schema({"const": "é"})) is None   # the canonical spelling only
    assert run('1', schema({"type": "integer", "enum": [1, "a"]})) is True
    assert run('"a"', schema({"type": "integer", "enum": [1, "a"]})) is None
    both = schema({"type": ["string", "null"]})
    assert run('null', both) is True and run('"x"', both) is True and run('1', both) is None
    assert run('1.5', schema({"type": "integer"})) is None
    assert run('1.5', schema({"type": "number"})) is True
    assert run('true', schema({"type": "boolean"})) is True


def test_arrays_items_and_bounds():
    node = schema({"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 2})
    check_texts(node, whole=['[1]', '[1, 2]'], refused=['[]', '[1, 2,', '["a"]'])


def test_string_length_bounds_count_characters():
    node = schema({"type": "string", "minLength": 2, "maxLength": 3})
    check_texts(node, whole=['"ab"', '"é€😀"', '"\\u00e9\\n\\t"'],  # é€😀: 3 characters, 9 bytes
                refused=['"a"', '"abcd'])


def test_anyof_oneof_follow_every_branch():
    node = schema({"anyOf": [
        {"type": "object", "properties": {"kind": {"const": "a"}, "x": {"type": "integer"}},
         "required": ["kind", "x"], "additionalProperties": False},
        {"type": "object", "properties": {"kind": {"const": "b"}, "y": {"type": "string"}},
         "required": ["kind", "y"], "additionalProperties": False}]})
    assert run('{"kind": "a", "x": 1}', node) is True
    assert run('{"kind": "b", "y": "s"}', node) is True
    assert run('{"kind": "a", "y"', node) is None
    assert run('null', schema({"oneOf": [{"type": "null"}, {"type": "string"}]})) is True


def test_local_refs_and_recursion():
    tree = {"$defs": {"node": {"type": "object", "properties": {
        "v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
        "required": ["v"], "additionalProperties": False}}, "$ref": "#/$defs/node"}
    node = schema(tree)
    assert run('{"v": 1, "kids": [{"v": 2, "kids": [{"v": 3}]}]}', node) is True
    assert run('{"v": 1, "kids": [{"w"', node) is None


def test_annotations_are_ignored():
    node = schema({"title": "T", "description": "d", "$schema": "x", "default": {},
                   "examples": [1], "type": "object",
                   "properties": {"a": {"type": "string", "description": "the a"}}})
    assert run('{"a": "x"}', node) is True


@pytest.mark.parametrize("bad, message", [
    ({"type": "object", "patternProperties": {}}, "unsupported JSON schema keyword 'patternProperties'"),
    ({"type": "string", "pattern": "(?=a)"}, "a lookahead '(?=' is not supported"),
    ({"allOf": [{"type": "string"}]}, "unsupported JSON schema keyword 'allOf'"),
    ({"type": "integer", "minimum": "0"}, "'minimum' must be a number"),
    ({"properties": {"a": {"not": {}}}}, "unsupported JSON schema keyword 'not'"),
    ({"type": "strings"}, "unknown JSON schema type 'strings'"),
    ({"type": []}, "'type' must be"),
    ({"enum": []}, "'enum' must be a non-empty list"),
    ({"enum": [{"a": 1}]}, "'enum' and 'const' values must be"),
    ({"type": "string", "enum": [1]}, "no 'enum' or 'const' value"),
    ({"anyOf": [{"type": "string"}], "type": "string"}, "'anyOf' next to 'type'"),
    ({"anyOf": []}, "'anyOf' must be a non-empty list"),
    ({"type": "object", "required": ["b"], "properties": {"a": {}},
      "additionalProperties": False}, "'required' names 'b'"),
    ({"type": "array", "minItems": 3, "maxItems": 2}, "'maxItems' is less than 'minItems'"),
    ({"type": "array", "items": [{"type": "string"}]}, "tuple validation"),
    ({"minLength": -1}, "'minLength' must be a non-negative integer"),
    ({"$ref": "http://example.com/s.json"}, "only local '$ref's"),
    ({"$ref": "#/$defs/missing"}, "points to nothing"),
    ({"$ref": "#"}, "refers to itself"),
    (False, "allows no value"),
    ("object", "must be an object or a boolean"),
])
def test_unsupported_or_empty_schemas_are_refused_by_name(bad, message):
    with pytest.raises(jc.SchemaError) as e:
        jc.compile_schema(bad)
    assert message in str(e.value)


def test_schema_size_and_depth_are_capped():
    deep = {}
    for _ in range(jc.MAX_SCHEMA_DEPTH + 2):
        deep = {"type": "array", "items": deep}
    with pytest.raises(jc.SchemaError, match="nested more than"):
        jc.compile_schema(deep)
    wide = {"type": "object", "properties": {f"p{i}": {} for i in range(jc.MAX_SCHEMA_NODES)}}
    with pytest.raises(jc.SchemaError, match="more than"):
        jc.compile_schema(wide)


def test_everything_accepted_whole_is_json_that_json_loads_reads():
    # Random byte walks through the recognizer: whatever it calls whole, Python parses.
    rng = np.random.default_rng(0)
    alphabet = list(b'{}[]":,0123456789-+.eEtrufalsn \n\\u"ab\xc3\xa9') + [0x09]
    whole = 0
    for _ in range(3000):
        state, text = jc.value_grammar(jc.ANY), b""
        for _ in range(40):
            allowed = [b for b in alphabet if jc.feed(state, bytes([b])) is not None]
            if not allowed:
                break
            b = allowed[rng.integers(len(allowed))]
            state, text = jc.feed(state, bytes([b])), text + bytes([b])
            if jc.can_end(state):
                json.loads(text.decode("utf-8"))
                whole += 1
    assert whole > 500


# ---- string formats (date, time, date-time, uuid) -------------------------------------------

def refused_at(node, text):
    """The index of the first byte of `text` that the recognizer refuses, or None when it
    takes them all (then the text must be a whole value)."""
    state = jc.value_grammar(node)
    for i, b in enumerate(text.encode("utf-8")):
        state = jc.feed(state, bytes([b]))
        if state is None:
            return i
    assert jc.can_end(state), text
    return None


def fmt(name, **kw):
    return schema({"type": "string", "format": name, **kw})


@pytest.mark.parametrize("name, text, at", [
    ("date", '"2024-01-15"', None),
    ("date", '"2024-02-29"', None),                     # a leap year
    ("date", '"2000-02-29"', None),                     # divisible by 400: leap
    ("date", '"0001-01-01"', None),
    ("date", '"9999-12-31"', None),
    ("date", '"2023-02-29"', 10),                       # not a leap year: the 9
    ("date", '"1900-02-29"', 10),                       # divisible by 100 only: not leap
    ("date", '"2024-04-31"', 10),                       # April has 30 days
    ("date", '"2024-13-01"', 7),                        # month 13: the 3
    ("date", '"2024-00-01"', 7),
    ("date", '"2024-1-15"', 7),                         # two digits each
    ("date", '"2024-01-32"', 10),
    ("date", '"2024-01-00"', 10),
    ("date", '"0000-01-01"', 4),                        # there is no year 0
    ("date", '"2024/01/15"', 5),
    ("date", '"2024-01-15T', 11),                       # a date is only a date
    ("date", '"\\u0032024-01-15"', 1),                  # no escapes: the plain text only
    ("time", '"10:30:00Z"', None),
    ("time", '"23:59:59.999+05:30"', None),
    ("time", '"00:00:00-23:59"', None),
    ("time", '"10:30:00"', 9),                          # the offset is required (llama.cpp)
    ("time", '"24:00:00Z"', 2),
    ("time", '"10:60:00Z"', 4),
    ("time", '"10:30:60Z"', 7),                         # no leap seconds
    ("time", '"10:30:00.5Z"', 11),                      # exactly 3 fraction digits (llama.cpp)
    ("time", '"10:30:00.1234', 13),
    ("time", '"10:30:00+5:30"', 10),
    ("time", '"10:30:00+24:00"', 11),
    ("time", '"10:30:00z"', 9),
    ("date-time", '"2024-01-15T10:30:00Z"', None),
    ("date-time", '"2024-01-15T10:30:00.123-08:00"', None),
    ("date-time", '"2024-01-15 10:30:00Z"', 11),         # "T" only, as llama.cpp
    ("date-time", '"2024-01-15t', 11),
    ("date-time", '"2024-01-15"', 11),
    ("uuid", '"123e4567-e89b-12d3-a456-426614174000"', None),
    ("uuid", '"123E4567-E89B-12D3-A456-426614174000"', None),
    ("uuid", '"123e4567e89b', 9),
    ("uuid", '"123e4567-e89b-12d3-a456-42661417400g"', 36),
    ("uuid", '"123e4567-e89b-12d3-a456-4266141740000"', 37),
    ("uuid4", '"123e4567-e89b-42d3-a456-426614174000"', None),
    ("uuid4", '"123e4567-e89b-12d3', 15),                # the version digit
    ("uuid4", '"123e4567-e89b-42d3-c456', 20),           # the RFC 4122 variant
])
def test_formats_accept_their_values_and_refuse_at_the_first_wrong_byte(name, text, at):
    assert refused_at(fmt(name), text) == at


@pytest.mark.parametrize("year", [1, 4, 100, 1900, 2000, 2023, 2024, 9999])
def test_a_date_is_accepted_exactly_when_python_reads_it(year):
    import datetime
    node = fmt("date")
    for month in range(14):
        for day in range(40):
            text = f"{year:04d}-{month:02d}-{day:02d}"
            try:
                datetime.date.fromisoformat(text)
                ok = True
            except ValueError:
                ok = False
            assert (run(f'"{text}"', node) is True) == ok, text


def parses(name, text):
    """The Python reading of a value of format `name` (raises if it is not one); pydantic
    (which the openai client's parse() validates with) must read it too."""
    import datetime
    import uuid

    import pydantic
    kinds = {"date": datetime.date, "time": datetime.time, "date-time": datetime.datetime}
    pydantic.TypeAdapter(kinds.get(name, uuid.UUID)).validate_python(text)
    if name in kinds:
        return kinds[name].fromisoformat(text)
    u = uuid.UUID(text)
    assert name == "uuid" or (u.version == int(name[-1]) and u.variant == uuid.RFC_4122), text
    return u


FORMAT_BYTES = list(b'0123456789abcdefABCDEF-:.TZtz+ "/\\')


@pytest.mark.parametrize("name, bounds", [
    ("date", {}), ("time", {}), ("date-time", {}), ("uuid", {}), ("uuid4", {}),
    ("time", {"maxLength": 13}), ("time", {"minLength": 14}), ("date-time", {"minLength": 24, "maxLength": 25}),
])
def test_formatted_strings_never_dead_end_and_every_whole_one_parses(name, bounds):
    # Random walks, each byte drawn among those the recognizer takes: there is always one
    # (no dead end), and every string it calls whole is a value of the format, within bounds.
    rng = np.random.default_rng(0)
    node = fmt(name, **bounds)
    lengths = set()
    for _ in range(300):
        state, text = jc.value_grammar(node), b""
        while not (text.endswith(b'"') and len(text) > 1):
            allowed = [b for b in FORMAT_BYTES if jc.feed(state, bytes([b])) is not None]
            assert allowed, text                       # never stuck inside the string
            b = allowed[rng.integers(len(allowed))] if text else 0x22
            state, text = jc.feed(state, bytes([b])), text + bytes([b])
        assert jc.can_end(state)
        value = json.loads(text)
        parses(name, value)
        assert bounds.get("minLength", 0) <= len(value) <= bounds.get("maxLength", 99), value
        lengths.add(len(value))
    # every length the format has, within the bounds, was reached
    every = {"date": {10}, "time": {9, 13, 14, 18}, "date-time": {20, 24, 25, 29}}.get(name, {36})
    assert lengths == {n for n in every
                       if bounds.get("minLength", 0) <= n <= bounds.get("maxLength", 99)}


def test_format_with_length_bounds_type_lists_anyof_and_enum():
    # maxLength 13 leaves HH:MM:SSZ and HH:MM:SS.fffZ: an offset cannot start
    short = fmt("time", maxLength=13)
    check_texts(short, whole=['"10:30:00Z"', '"10:30:00.123Z"'], refused=['"10:30:00+', '"10:30:00.123+'])
    # minLength 14: the offset is needed
    assert refused_at(fmt("time", minLength=14), '"10:30:00Z"') == 9
    assert refused_at(fmt("time", minLength=14), '"10:30:00+01:00"') is None
    # format applies to strings only; other types are as the schema says
    either = schema({"type": ["string", "null"], "format": "date"})
    check_texts(either, whole=['null', '"2024-01-15"'], refused=['"soon"', '1'])
    check_texts(schema({"format": "uuid"}), whole=['1', 'true', '"123e4567-e89b-12d3-a456-426614174000"'],
                refused=['"x'])
    # pydantic's Optional[datetime.date]
    optional = schema({"anyOf": [{"type": "string", "format": "date"}, {"type": "null"}], "default": None})
    check_texts(optional, whole=['null', '"2024-01-15"'], refused=['"2024-1-'])
    # enum/const strings must fit the format and the bounds too; other values stay
    node = schema({"format": "date", "enum": ["2024-01-15", "tomorrow", 3]})
    check_texts(node, whole=['"2024-01-15"', '3'], refused=['"tomorrow"'])
    check_texts(schema({"enum": ["a", "abc"], "minLength": 2}), whole=['"abc"'], refused=['"a"'])
    check_texts(schema({"const": "abc", "maxLength": 3}), whole=['"abc"'])


@pytest.mark.parametrize("name", ["email", "uri", "hostname", "ipv4", "duration", "my-format"])
def test_formats_we_do_not_check_are_plain_strings_as_in_llama_cpp(name):
    node = fmt(name, maxLength=8)
    check_texts(node, whole=['"anything"', '""'], refused=['"anything!'])


@pytest.mark.parametrize("bad, message", [
    ({"type": "string", "format": 3}, "'format' must be a string"),
    ({"type": "string", "format": "date", "maxLength": 9}, "no string of format 'date' fits"),
    ({"type": "string", "format": "time", "minLength": 19}, "no string of format 'time' fits"),
    ({"format": "date", "enum": ["today"]}, "no 'enum' or 'const' string fits"),
    ({"const": "abc", "maxLength": 2}, "no 'enum' or 'const' string fits"),
    ({"anyOf": [{"type": "string"}], "format": "date"}, "'anyOf' next to 'format'"),
])
def test_formats_that_allow_nothing_or_are_malformed_are_refused(bad, message):
    with pytest.raises(jc.SchemaError) as e:
        jc.compile_schema(bad)
    assert message in str(e.value)


def pydantic_event_model():
    import datetime
    import uuid
    import pydantic        # the openai client's dependency

    class Event(pydantic.BaseModel):
        when: datetime.datetime
        day: datetime.date
        at: datetime.time
        id: uuid.UUID
        id4: pydantic.UUID4
        maybe: datetime.date | None = None
    return Event


def test_a_pydantic_models_schema_with_dates_and_uuids_is_followed():
    # What client.beta.chat.completions.parse(response_format=Event) sends (openai's
    # strict form of pydantic's schema): every value the recognizer completes validates.
    from openai.lib._pydantic import to_strict_json_schema
    event = pydantic_event_model()
    node = schema(to_strict_json_schema(event), strict=True)
    text = ('{"when": "2024-01-15T10:30:00.123+05:30", "day": "2024-02-29", "at": "23:59:59Z", '
            '"id": "123e4567-e89b-12d3-a456-426614174000", '
            '"id4": "123e4567-e89b-42d3-a456-426614174000", "maybe": null}')
    assert run(text, node) is True
    event.model_validate_json(text)
    assert run(text.replace("42d3", "12d3"), node) is None       # id4 is a version 4 UUID


def tiny_model():
    from runtime.model import Model
    return Model.load(FIXTURES / "models" / "tiny-llama-q8_0.gguf")


def generate(m, node, temperature, max_tokens=200):
    """The tiny model's reply under the constraint for `node` (greedy, or sampled with a
    seed), with every token the sampler takes checked by the constraint."""
    session = m.session(512)
    ids = m.tokenize("The value is", add_special=True)
    logits = session.eval(ids)
    c = jc.make_constraint(m, jc.value_grammar(node))
    sampler = Sampler(SamplingParams(temperature=temperature, seed=1), constraint=c)
    out = b""
    for _ in range(max_tokens):
        tok = sampler.sample(logits, ids)      # NoTokenAllowed here would be a dead end
        if tok in m.eog_ids:
            break
        c.accept(tok)
        ids.append(tok)
        out += m.tokenizer.token_to_piece(tok)
        logits = session.eval([tok])
    assert c.complete, out
    return out.decode("utf-8")


@pytest.mark.parametrize("name", ["date", "time", "date-time", "uuid", "uuid4"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_tiny_models_constrained_reply_is_a_value_of_the_format(name, temperature):
    reply = generate(tiny_model(), fmt(name), temperature)
    parses(name, json.loads(reply))


def test_a_tiny_models_constrained_reply_validates_as_the_pydantic_model():
    from openai.lib._pydantic import to_strict_json_schema
    event = pydantic_event_model()
    reply = generate(tiny_model(), schema(to_strict_json_schema(event), strict=True), 0.0, 400)
    event.model_validate_json(reply)


hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**15, 10**15)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
    max_leaves=12)


@hypothesis.given(json_values, st.sampled_from([None, 2]))
@hypothesis.settings(max_examples=300, deadline=None)
def test_what_json_dumps_writes_is_accepted(value, indent):
    text = json.dumps(value, ensure_ascii=False, indent=indent)
    if "\\ud8" in text.lower() or "\\udc" in text.lower() or any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        return  # lone surrogates: refused on purpose
    assert run(text) is True, text


@hypothesis.given(st.lists(st.booleans(), min_size=1, max_size=5), st.data())
@hypothesis.settings(max_examples=300, deadline=None)
def test_keys_are_accepted_exactly_in_the_schemas_order(required, data):
    # Any subset of the listed keys, in any order: accepted exactly when it is in the
    # schema's order and holds every required key.
    names = [f"k{i}" for i in range(len(required))][::-1]      # k4 before k3 ...
    node = schema({"type": "object", "additionalProperties": False,
                   "properties": {n: {"type": "integer"} for n in names},
                   "required": [n for n, r in zip(names, required) if r]})
    keys = data.draw(st.permutations(names))[:data.draw(st.integers(0, len(names)))]
    places = [names.index(k) for k in keys]
    fits = places == sorted(places) and all(n in keys for n, r in zip(names, required) if r)
    assert (run(json.dumps({k: 1 for k in keys}), node) is True) == fits, keys


# ---- tokens: the sampler with a fake vocabulary -------------------------------------------

class FakeTokenizer:
    """Token i is PIECES[i]; SPECIAL tokens are added ones (like Qwen's <tool_call>)."""

    def __init__(self, pieces, special=()):
        self.pieces, self.special = pieces, set(special)

    def token_to_piece(self, tok, special=False):
        return self.pieces[tok]

    def is_special(self, tok):
        return tok in self.special


PIECES = [b"{", b"}", b'"', b"a", b":", b"1", b" ", b"x", b'{"a', b'":', b"", b"<tool_call>",
          b"\n", b"</tool_call>", b"\xe2\x82", b"\xac", b"[", b",", b"null"]
EOG = 10          # empty piece: the end-of-generation token
TOOL_OPEN, TOOL_CLOSE = 11, 13


def constraint(node=jc.ANY, start=None, pieces=PIECES, special=(TOOL_OPEN, TOOL_CLOSE)):
    start = start if start is not None else jc.value_grammar(node)
    return jc.TokenConstraint(start, FakeTokenizer(pieces, special), {EOG}, len(pieces))


def logits_favouring(*order, n=len(PIECES)):
    """Logits where order[0] is best, order[1] next, ... and the rest far below."""
    x = np.full(n, -20.0, dtype=np.float32)
    for rank, tok in enumerate(order):
        x[tok] = 10.0 - rank
    return x


def greedy(c, **kw):
    return Sampler(SamplingParams(temperature=0.0, **kw), constraint=c)


def test_greedy_takes_the_best_allowed_token():
    c = constraint()
    s = greedy(c)
    # "x", "}", ":" cannot start JSON; "{" is the best that can
    assert s.sample(logits_favouring(7, 1, 4, 0, 16), []) == 0
    c.accept(0)
    assert s.sample(logits_favouring(7, 5, 2), []) == 2        # after "{" a key must follow
    c.accept(2)
    assert s.sample(logits_favouring(EOG, 3), []) == 3
    assert c.allows(3) and not c.allows(EOG)


def test_end_of_generation_only_when_the_value_is_complete():
    c = constraint()
    s = greedy(c)
    assert s.sample(logits_favouring(EOG, 0), []) == 0           # "{" rather than end
    c.accept(0)
    assert not c.complete and not c.allows(EOG)
    assert s.sample(logits_favouring(EOG, 1), []) == 1
    c.accept(1)
    assert c.complete and c.allows(EOG)
    # after the value: one whitespace byte or the end, nothing else
    assert s.sample(logits_favouring(7, 0, 3, EOG), []) == EOG
    assert c.allows(6) and c.allows(12) and not c.allows(0)


def test_a_token_may_hold_several_json_tokens_and_partial_utf8():
    c = constraint(jc.compile_schema({"type": "object", "properties": {"a": {"type": "string"}},
                                      "required": ["a"], "additionalProperties": False}))
    for tok in (8, 9, 2, 14, 15, 2, 1):          # {"a  ":  "  €(2 tokens)  "  }
        assert c.allows(tok), PIECES[tok]
        c.accept(tok)
    assert c.complete


def test_special_tokens_only_spell_the_literal_prefix_and_suffix():
    start = jc.wrapped_grammar(jc.ANY, [("<tool_call>\n", "\n</tool_call>")])
    c = constraint(start=start)
    assert c.allows(TOOL_OPEN) and not c.allows(0)
    c.accept(TOOL_OPEN)
    c.accept(12)
    assert c.allows(0) and not c.allows(TOOL_OPEN) and not c.allows(TOOL_CLOSE)
    for tok in (0, 1, 12):
        c.accept(tok)
    assert c.allows(TOOL_CLOSE) and not c.allows(EOG)
    c.accept(TOOL_CLOSE)
    assert c.allows(EOG)
    # A special token is never text inside the JSON, even where its text would fit.
    c = constraint(start=jc.value_grammar(jc.ANY))
    for tok in (0, 2):
        c.accept(tok)
    assert c.allows(3) and not c.allows(TOOL_OPEN)


def test_sampling_draws_only_allowed_tokens():
    for seed in range(20):
        c = constraint()
        s = Sampler(SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=seed),
                    constraint=c)
        rng = np.random.default_rng(seed)
        drawn = []
        for _ in range(12):
            tok = s.sample(rng.normal(size=len(PIECES)).astype(np.float32), drawn)
            assert c.allows(tok)
            drawn.append(tok)
            if tok == EOG:
                break
            c.accept(tok)
        text = b"".join(PIECES[t] for t in drawn)
        assert jc.feed(jc.value_grammar(jc.ANY), text) is not None, text


def test_sampling_widens_the_search_when_no_filtered_candidate_is_allowed():
    c = constraint()
    s = Sampler(SamplingParams(temperature=1.0, top_k=2, seed=0), constraint=c)
    # the two kept candidates ("x", ":") are not allowed; "{" and "[" further down are
    for _ in range(20):
        assert s.sample(logits_favouring(7, 4, 0, 16), []) in (0, 16)


def test_a_seeded_constrained_sampler_is_reproducible():
    def draw(seed):
        c = constraint()
        s = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed),
                    constraint=c)
        rng = np.random.default_rng(99)
        out = []
        for _ in range(10):
            tok = s.sample(rng.normal(size=len(PIECES)).astype(np.float32), out)
            out.append(tok)
            if tok == EOG:
                break
            c.accept(tok)
        return out
    assert draw(5) == draw(5)


def test_the_search_reaches_past_the_top_tokens():
    # 2,000 tokens; only the worst one can start the value.
    n = 2000
    pieces = [b"x"] * (n - 1) + [b"{"]
    x = np.linspace(10, -10, n).astype(np.float32)
    c = jc.TokenConstraint(jc.value_grammar(jc.ANY), FakeTokenizer(pieces), set(), n)
    assert greedy(c).sample(x, []) == n - 1
    s = Sampler(SamplingParams(temperature=1.0, seed=0), constraint=c)
    assert s.sample(x, []) == n - 1
    assert n - 1 > CHUNK_LARGE


def test_nothing_allowed_is_an_exception_not_a_wrong_token():
    c = constraint()
    for tok in (0, 1):
        c.accept(tok)
    s = greedy(c, logit_bias={EOG: -math.inf, 6: -math.inf, 12: -math.inf})
    with pytest.raises(NoTokenAllowed):
        s.sample(logits_favouring(0), [])


def test_greedy_checks_few_tokens_on_the_real_qwen2_vocabulary():
    # The lazy search on 151,936 tokens: the model's favourite is checked first, and only
    # when it is refused are more looked at (never the whole vocabulary).
    from runtime.model import Model
    m = Model.load(FIXTURES / "tokenizer" / "ggml-vocab-qwen2.gguf", vocab_only=True)
    c = jc.make_constraint(m, jc.value_grammar(schema({**CITY, "additionalProperties": False})))
    s = greedy(c)
    tk = m.tokenizer
    reply = '{"city": "Paris", "population": 2148000}'
    rng = np.random.default_rng(0)
    for tok in tk.tokenize(reply, add_special=False):
        x = rng.normal(size=m.n_vocab).astype(np.float32)
        x[tok] = 30.0
        assert s.sample(x, []) == tok
        assert len(c._next) == 1       # one check: the argmax
        c.accept(tok)
    assert c.complete
    # A refused favourite: "capital" is not a key here; the best allowed key token wins.
    c = jc.make_constraint(m, jc.value_grammar(schema({**CITY, "additionalProperties": False})))
    for tok in tk.tokenize('{"', add_special=False):
        c.accept(tok)
    x = rng.normal(size=m.n_vocab).astype(np.float32)
    x[tk.tokenize("capital", add_special=False)[0]] = 30.0
    city = tk.tokenize("city", add_special=False)[0]
    x[city] = 29.0
    assert greedy(c).sample(x, []) == city
    assert len(c._next) < 100


def test_an_out_of_order_key_is_refused_on_the_real_qwen2_vocabulary():
    # The model's favourite key is the second listed one: the first, required, wins, in
    # a few checks; after it, the favourite is taken as it is.
    from runtime.model import Model
    m = Model.load(FIXTURES / "tokenizer" / "ggml-vocab-qwen2.gguf", vocab_only=True)
    tk = m.tokenizer
    c = jc.make_constraint(m, jc.value_grammar(schema(CITY)))
    for tok in tk.tokenize('{"', add_special=False):
        c.accept(tok)
    rng = np.random.default_rng(1)
    x = rng.normal(size=m.n_vocab).astype(np.float32)
    population = tk.tokenize("population", add_special=False)[0]
    city = tk.tokenize("city", add_special=False)[0]
    x[population], x[city] = 30.0, 29.0
    assert greedy(c).sample(x, []) == city
    assert len(c._next) < 100
    for tok in tk.tokenize('city": "Tokyo", "', add_special=False):
        assert c.allows(tok)
        c.accept(tok)
    assert not c.allows(city) and greedy(c).sample(x, []) == population


# ---- what logprobs report under a constraint (Sampler.reported_probs) -----------------------

def masked_softmax(x, allowed):
    z = np.where(allowed, x.astype(np.float64), -np.inf)
    w = np.exp(z - z.max())
    return w / w.sum()


@pytest.mark.parametrize("seed", range(12))
def test_reported_probs_are_the_softmax_over_the_allowed_tokens(seed):
    rng = np.random.default_rng(seed)
    c = constraint()
    s = Sampler(SamplingParams(temperature=float(seed % 3), top_k=2, seed=seed), constraint=c)
    out = []
    for _ in range(8):
        x = (3 * rng.normal(size=len(PIECES))).astype(np.float32)
        allowed = np.array([c.allows(t) for t in range(len(PIECES))])
        if not allowed.any():
            break
        top, p = s.reported_probs(x, out, 5)
        want = masked_softmax(x, allowed)
        ids = [i for i, _ in top]
        assert all(allowed[ids]) and len(ids) == min(5, allowed.sum())
        assert ids == sorted(ids, key=lambda t: (-x[t], t))
        np.testing.assert_allclose([q for _, q in top], want[ids], rtol=1e-9)
        tok = s.sample(x, out)
        # the drawn token is in the reported distribution, with its probability
        assert allowed[tok] and p[tok] == pytest.approx(want[tok], rel=1e-9) and p[tok] > 0
        if s.params.greedy:
            assert tok == ids[0]
        out.append(tok)
        if tok == EOG:
            break
        c.accept(tok)


def test_reported_probs_of_a_forced_token_are_one():
    c = constraint(jc.compile_schema({"type": "object", "properties": {"a": {}},
                                      "required": ["a"], "additionalProperties": False}))
    for tok in (0, 2):      # {"  : only the key a may come, the model's least favourite
        c.accept(tok)
    x = logits_favouring(1, 0, 2, 3)
    top, p = greedy(c).reported_probs(x, [], 3)
    assert top == [(3, 1.0)] and p[3] == 1.0
    assert greedy(c).sample(x, []) == 3


def test_reported_probs_leave_out_banned_tokens_and_follow_the_bias():
    x = np.array([3.0, 2.0, 1.0, 0.0], dtype=np.float32)
    s = Sampler(SamplingParams(temperature=0, logit_bias={0: -math.inf, 3: 2.0}))
    top, p = s.reported_probs(x, [], 4)
    assert [i for i, _ in top] == [1, 3, 2] and p[0] == 0
    np.testing.assert_allclose([q for _, q in top], masked_softmax(np.array([0, 2, 1, 2.0]),
                                                                   [False, True, True, True])[[1, 3, 2]])
    # without a bias, penalties or a constraint: the plain softmax of the logits
    top, p = Sampler(SamplingParams(temperature=0.7, top_k=1)).reported_probs(x, [], 2)
    want = masked_softmax(x, [True] * 4)
    assert [i for i, _ in top] == [0, 1] and np.allclose(p, want)


def test_reported_probs_count_the_allowed_mass_past_the_top_tokens():
    # 1,000 refused tokens and 1,000 allowed ones, all equally likely: the allowed mass
    # lies mostly past the CHUNK_LARGE tokens checked one by one.
    n = 2000
    pieces = [b"x"] * (n // 2) + [b"{"] * (n // 2)
    c = jc.TokenConstraint(jc.value_grammar(jc.ANY), FakeTokenizer(pieces), set(), n)
    top, p = greedy(c).reported_probs(np.zeros(n, dtype=np.float32), [], 3)
    assert len(top) == 3 and all(i >= 1000 for i, _ in top)
    assert all(q == pytest.approx(1 / 1000) for _, q in top)
    assert p[1999] == pytest.approx(1 / 1000)
    assert n > 2 * CHUNK_LARGE


def test_no_end_token_leaves_nothing_after_the_value():
    c = constraint()
    for tok in (0, 1):
        c.accept(tok)
    c.no_end_token()
    assert not any(c.allows(t) for t in range(len(PIECES)) if t != EOG)
    with pytest.raises(NoTokenAllowed):
        greedy(c, logit_bias={EOG: -math.inf}).sample(logits_favouring(6, 12, 0), [])
    # A number may still grow while it can; only the whitespace that would end it goes.
    c = constraint()
    c.no_end_token()
    c.accept(5)
    assert c.complete and c.allows(5) and not c.allows(6) and not c.allows(12)


# ---- logit_bias -------------------------------------------------------------------------

def test_logit_bias_adds_before_the_choice():
    x = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    assert Sampler(SamplingParams(temperature=0, logit_bias={0: 5.0})).sample(x, []) == 0
    assert Sampler(SamplingParams(temperature=0, logit_bias={2: -math.inf})).sample(x, []) == 1
    np.testing.assert_array_equal(apply_logit_bias(x, {1: -1.5}), [1.0, 0.5, 3.0])
    np.testing.assert_array_equal(x, [1.0, 2.0, 3.0])         # the input is not changed


def test_logit_bias_comes_before_the_penalties():
    # repeat_penalty shrinks a positive logit; the bias must already be in it.
    x = np.array([1.0, 0.9], dtype=np.float32)
    p = SamplingParams(temperature=0, repeat_penalty=2.0, logit_bias={0: 1.0})
    assert Sampler(p).sample(x, [0]) == 0      # (1 + 1) / 2 = 1.0 > 0.9
    p = SamplingParams(temperature=0, repeat_penalty=2.0)
    assert Sampler(p).sample(x, [0]) == 1      # 1 / 2 = 0.5 < 0.9


def test_a_banned_token_is_never_drawn():
    x = np.array([5.0, 0.0, 0.0], dtype=np.float32)
    s = Sampler(SamplingParams(temperature=2.0, top_k=0, top_p=1.0, min_p=0.0, seed=1,
                               logit_bias={0: -math.inf}))
    assert {s.sample(x, []) for _ in range(200)} == {1, 2}


def test_the_deep_search_filters_by_the_first_two_bytes():
    # 3,000 " wNNN" words rank above the one token that can start the value here: the
    # space fits (whitespace may come first), the "w" after it does not.
    n = 3001
    pieces = [b" w%d" % i for i in range(n - 1)] + [b" {"]
    c = jc.TokenConstraint(jc.value_grammar(jc.ANY), FakeTokenizer(pieces), set(), n)
    assert np.flatnonzero(c.candidates()).tolist() == [n - 1]
    x = np.linspace(10, -10, n).astype(np.float32)
    assert greedy(c).sample(x, []) == n - 1
    assert len(c._next) <= CHUNK_LARGE + 2          # the top tokens, then the one candidate
    s = Sampler(SamplingParams(temperature=1.0, seed=0), constraint=c)
    assert s.sample(x, []) == n - 1


# ---- forced tool calls (runtime/tool_calls.call_grammar) ------------------------------------

def test_a_forced_call_is_a_declared_tool_with_its_arguments_bare_or_wrapped():
    from runtime.tool_calls import call_grammar, parse
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
             {"type": "function", "function": {"name": "odd", "parameters": {
                 "type": "object", "properties": {"q": {"type": "string", "pattern": "(?=a)"}}}}}]
    start = call_grammar(tools, None, "... <tool_call> ...")

    def whole(text, state=start):
        s = jc.feed(state, text.encode())
        return None if s is None else jc.can_end(s)
    bare = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    assert whole(bare) is True
    assert whole('<tool_call>\n' + bare + '\n</tool_call>') is True
    assert whole('<tool_call>\n' + bare) is False               # the block must close
    assert whole('{"arguments": {"city": "Paris"}, "name": "get_weather"}') is True
    assert whole('{"name": "launch"') is None                  # not a declared tool
    assert whole('{"name": "get_weather", "arguments": {"city": 1') is None
    # the tool's arguments are read as strict: no made-up ones
    assert whole('{"name": "get_weather", "arguments": {"city": "P", "date"') is None
    # an unsupported keyword in a tool's schema: any object as arguments
    assert whole('{"name": "odd", "arguments": {"q": "zzz", "n": [1]}}') is True
    # a named tool_choice: that tool only; a template without <tool_call>: bare only
    named = call_grammar(tools, {"odd"}, "")
    assert whole('{"name": "odd", "arguments": {}}', named) is True
    assert whole('{"name": "get_weather"', named) is None
    assert whole('<tool_call>', named) is None
    content, calls = parse('<tool_call>\n' + bare + '\n</tool_call>', tools)
    assert content is None and calls[0]["function"]["name"] == "get_weather"


def test_a_forced_calls_arguments_keep_their_order_and_the_call_object_does_not():
    from runtime.tool_calls import call_grammar
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
        "required": ["x", "y"]}}}]
    start = call_grammar(tools, None, "")

    def whole(text):
        s = jc.feed(start, text.encode())
        return None if s is None else jc.can_end(s)
    assert whole('{"name": "f", "arguments": {"x": 1, "y": 2}}') is True
    assert whole('{"arguments": {"x": 1, "y": 2}, "name": "f"}') is True
    assert whole('{"name": "f", "arguments": {"y": 2, "x": 1}}') is None
    assert whole('{"name": "f", "name"') is None
