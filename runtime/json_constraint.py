"""Constrained generation: replies that must be JSON (response_format) or a tool call.

Three layers, each usable alone:

- `compile_schema(schema)` turns a practical subset of JSON Schema into `Node`s, and
  refuses anything else with `SchemaError` naming the keyword: a constraint that silently
  ignored part of a schema would return replies the client's validator then rejects.
- A byte-level pushdown recognizer over those nodes. A state is a tuple of alternatives
  (anyOf/oneOf, and the wrapped/bare tool-call forms, are followed side by side); each
  alternative is a stack of immutable frames, held as a linked list of tuples, so
  checking a candidate token never copies anything. `feed(state, data)` returns the state
  after `data`, or None when no JSON text allowed by the grammar starts that way;
  `can_end(state)` says whether the value is complete. It works on bytes, not characters:
  a token may end in the middle of a UTF-8 sequence, and the recognizer checks UTF-8
  inside strings itself, so a reply is always valid UTF-8.
- `TokenConstraint`: the per-request view the sampler asks, one token at a time
  (`allows`, `accept`). Tokens are checked lazily, best first, by runtime/sampling.py:
  nothing is computed over the whole vocabulary per step except, rarely, a filter on
  each token's first two bytes (a NumPy lookup) when the model's top 512 are all refused.

What the recognizer accepts is a subset of JSON: whitespace between tokens is one space or
tab, or a newline and an indentation (so a model cannot pad forever); numbers' length,
free keys' length and the nesting depth are capped; strings cannot hold \\uD800-\\uDFFF
escapes (a lone surrogate is not text: write the character). After the value only one
whitespace byte and end-of-generation are allowed (no whitespace when end-of-generation is
banned: see TokenConstraint.no_end_token).

An object's keys come in the schema's order (see `_start_key`): the listed properties in
the order of `properties` (then required names `properties` does not list, in the order
of `required`), each optional one skippable, each required one not; then, where
additionalProperties allows them, other keys, in any order. So a key is never written
twice, and a model cannot go back and forth between keys.

A string with `format` date, time, date-time or uuid (the formats llama.cpp's
json-schema-to-grammar constrains; pydantic writes them for date, time, datetime and UUID
fields) is read by a scanner of its own (`_fmt_byte`): only text of that format, byte by
byte, and never a prefix that no valid value continues, so a reply cannot dead-end in it.
Other formats (email, uri, ...) are read as plain strings, as llama.cpp does.

A string with `pattern` (pydantic writes it for Field(pattern=...)) is held to it exactly
(`_pat_byte`; the pattern's automaton is runtime/string_pattern.py's `Pattern`). It is
matched as JSON Schema says, anywhere in the string (an unanchored side may hold
anything), against the decoded characters: the string scanner's bytes are turned back
into code points (UTF-8, \\n, \\u00e9), so the model may spell a character any way JSON
allows. No prefix dead-ends: a byte that starts a character (a UTF-8 lead, a backslash,
a \\u digit) is taken only when some code point it can still become leads on, and with
minLength/maxLength the pattern's states must also have a path to a match of a length
that fits.

A number with bounds (minimum, maximum, exclusiveMinimum, exclusiveMaximum; pydantic
writes them for every Field(ge=, gt=, le=, lt=)) is read by a scanner of its own too
(runtime/number_range.py), as llama.cpp's grammar holds an integer to its range: a byte is
taken only when some value in the range still starts with the text so far, so every value
in range can be written, none outside it, and no prefix dead-ends. A multipleOf is held
with the range, exactly (x / m whole, both the decimals written: an integer's 2.5 is 5, a
number's 0.1 takes 0.3), a number's also near 0, where pydantic's float check accepts
every multiple (see number_range._step_limit). A bounded number is spelt without an
exponent and checked exactly (a bound is the decimal its JSON text wrote: minimum 0.1
refuses 0.0999). Enum and const values are held to the bounds and multipleOf as the
scanner holds the number written out (number_range.within_bounds). Bounds beside
anyOf/oneOf hold each branch (_Compiler.branches_with_bounds); beside $ref they are a 400.
"""
from __future__ import annotations

import calendar
import json
import math
import weakref
from dataclasses import dataclass, field

import numpy as np

from runtime.number_range import (BOUND_KEYS, DIGITS, decimal_of, int_step, int_whole,
                                  integer_bounds, integer_step, num_step, num_whole,
                                  number_range_of, within_bounds)
from runtime.string_pattern import MAX_CP, Pattern, PatternError
from runtime.token_bytes import table_of

TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
ALL_TYPES = frozenset(TYPES)
# Read and ignored: they describe a schema, they do not constrain the value.
ANNOTATIONS = frozenset({"title", "description", "$schema", "$id", "$comment", "default",
                         "examples", "deprecated", "readOnly", "writeOnly"})
SUPPORTED = frozenset({"type", "enum", "const", "properties", "required",
                       "additionalProperties", "items", "minItems", "maxItems", "minLength",
                       "maxLength", "anyOf", "oneOf", "$ref", "$defs", "definitions", "format",
                       "pattern"})
# Bounds. Pydantic writes them for every Field(ge=, gt=, le=, lt=, multiple_of=), so
# openai's .parse() and LangChain's with_structured_output send them, and a 400 made such
# models unusable. An integer is held to its range and multipleOf (Node.int_range), a
# number to its range and multipleOf (Node.num_range).
BOUNDS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                    "multipleOf"})

MAX_SCHEMA_DEPTH = 32       # nesting of the schema document itself
MAX_SCHEMA_NODES = 2000     # compiled nodes, $refs counted once
MAX_ENUM_VALUES = 1024
MAX_SCHEMA_PATTERN_WORK = 1_000_000     # Pattern.work summed over a schema: about 0.3 s
MAX_DEPTH = 32              # nesting of the generated value
# Whitespace between JSON tokens: one space or tab, or one newline and up to MAX_INDENT
# spaces or tabs. Enough to pretty-print; not enough for a model to pad a reply with
# blank lines (a small model held to JSON likes whitespace: it fits almost everywhere).
MAX_INDENT = 20
_WS_DONE = 1 << 10          # the run was one space or tab: nothing more
MAX_NUMBER_BYTES = 32
MAX_BOUND_DIGITS = 1000     # a bound or multipleOf is below 10**this in magnitude
MAX_BOUND = 10 ** MAX_BOUND_DIGITS
MAX_KEY_BYTES = 256         # a free (not listed) property name
MAX_ALTS = 64               # alternatives followed at once (anyOf inside anyOf ...)


class SchemaError(ValueError):
    """The schema uses something we do not support, or allows no value at all."""


class NoValue(SchemaError):
    """Schema s's bounds (or multipleOf) leave it no value: a branch that bounds written
    beside anyOf/oneOf leave empty is dropped (see _Compiler.branches_with_bounds)."""

    def __init__(self, message: str, s: dict):
        super().__init__(message)
        self.schema = s


# ---- compiled schema ----------------------------------------------------------------------

@dataclass(eq=False)
class Node:
    """One schema, compiled. Identity is its hash: frames hold nodes, states are hashed."""
    types: frozenset = ALL_TYPES
    literals: tuple | None = None    # enum/const: the canonical JSON texts (bytes) allowed
    props: dict = field(default_factory=dict)        # name -> node
    keys: tuple = ()                 # (name as written between quotes (bytes), name)
    required: frozenset = frozenset()
    extra: object = None             # node of properties not listed; None: not allowed
    ordered: bool = True             # keys in `keys`' order (the schema's); False: any order
    # Set by _order_keys from keys, props, required and extra, for the recognizer:
    # per key (text, its value's node, the progress after it); [i]: the index of the first
    # required key at i or after (len(keys): none); name -> its index in keys.
    entries: tuple = field(default=(), repr=False)
    req_next: tuple = field(default=(0,), repr=False)
    index: dict = field(default_factory=dict, repr=False)
    items: object = None
    min_items: int = 0
    max_items: int | None = None
    min_len: int = 0                 # strings, in characters (code points)
    max_len: int | None = None
    fmt: tuple | None = None         # a checked format's layouts (FORMATS); None: any string
    fmt_mask: int = 0                # which of them fit minLength/maxLength (bit i: layout i)
    pattern: object = None           # a Pattern the string's characters must match; None: any
    # an integer's range: (lowest, highest, most bytes written, multipleOf (1: any));
    # None bound: unbounded. None: no bounds, or a number (num_range)
    int_range: tuple | None = None
    # a number's range (_num_sides: the non-negative side, the negative side, most bytes
    # written). None: no bounds, or no "number" in the types
    num_range: tuple | None = None


@dataclass(eq=False)
class Choice:
    """anyOf / oneOf. oneOf is followed as anyOf: we do not check that exactly one matches."""
    options: tuple


@dataclass(eq=False)
class Ref:
    """A $ref, resolved after compiling, so that recursive schemas work."""
    pointer: str
    target: object = None


ANY = Node()
ANY.extra = ANY
ANY.items = ANY


def _key_text(name: str) -> bytes:
    """A property name as JSON writes it between the quotes (the one spelling we allow)."""
    return json.dumps(name, ensure_ascii=False)[1:-1].encode("utf-8")


def any_object() -> Node:
    return Node(types=frozenset({"object"}), extra=ANY, items=ANY)


def const_node(value) -> Node:
    """Exactly this scalar."""
    return Node(types=frozenset({_type_of(value)}), literals=(json.dumps(value, ensure_ascii=False).encode("utf-8"),))


def object_node(props: dict) -> Node:
    """An object with exactly these properties (each required), in any order (a tool
    call's {"name", "arguments"}: not a schema, so not held to an order)."""
    return _order_keys(Node(types=frozenset({"object"}), props=dict(props),
                            required=frozenset(props), ordered=False,
                            keys=tuple((_key_text(name), name) for name in props), items=ANY))


# An object's progress, in its frames: (i, names). Ordered keys: i is the index in
# node.keys of the next key that may come (those before it were written or skipped) and
# names holds the unlisted keys written (once there is one, i is len(node.keys)).
# Keys in any order: i is 0 and names holds every key written.
NO_KEYS = (0, frozenset())


def _order_keys(n: Node) -> Node:
    """Fill in what the recognizer looks up for n's keys (after keys/required/extra)."""
    count = len(n.keys)
    n.index = {name: i for i, (_, name) in enumerate(n.keys)}
    n.entries = tuple((text, n.props.get(name, n.extra), (i + 1, frozenset()))
                      for i, (text, name) in enumerate(n.keys))
    nxt, req_next = count, [count]
    for i in range(count - 1, -1, -1):
        if n.keys[i][1] in n.required:
            nxt = i
        req_next.append(nxt)
    n.req_next = tuple(reversed(req_next))
    return n


def _type_of(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "integer" if v.is_integer() else "number"
    if isinstance(v, str):
        return "string"
    raise SchemaError("'enum' and 'const' values must be strings, numbers, booleans or null")


@dataclass
class Patterns:
    """The patterns compiled for one request, and what building them cost: each
    (pattern, minLength, maxLength) is compiled once, and MAX_SCHEMA_PATTERN_WORK bounds
    them all together. One request may compile several schemas (each tool's parameters:
    40 tools with heavy patterns took 12 s with a budget per schema), so they share one."""
    compiled: dict = field(default_factory=dict)
    work: int = 0                   # Pattern.work, summed


class _Compiler:
    def __init__(self, root, strict: bool, patterns: Patterns | None = None):
        self.root = root
        self.strict = strict
        self.refs: dict[str, Ref] = {}
        self.n_nodes = 0
        self.patterns = patterns or Patterns()

    def ref(self, pointer) -> Ref:
        if not isinstance(pointer, str) or not pointer.startswith("#"):
            raise SchemaError("only local '$ref's (\"#/$defs/Name\") are supported")
        if pointer not in self.refs:
            r = self.refs[pointer] = Ref(pointer)
            target = self.root
            for part in [p for p in pointer[1:].split("/") if p]:
                part = part.replace("~1", "/").replace("~0", "~")
                if not isinstance(target, dict) or part not in target:
                    raise SchemaError(f"'$ref' {pointer[:80]!r} points to nothing")
                target = target[part]
            r.target = self.node(target, 1)
        return self.refs[pointer]

    def node(self, s, depth: int):
        if depth > MAX_SCHEMA_DEPTH:
            raise SchemaError(f"the JSON schema is nested more than {MAX_SCHEMA_DEPTH} levels deep")
        self.n_nodes += 1
        if self.n_nodes > MAX_SCHEMA_NODES:
            raise SchemaError(f"the JSON schema has more than {MAX_SCHEMA_NODES} parts")
        if s is True:
            return ANY
        if s is False:
            raise SchemaError("a schema of false allows no value")
        if not isinstance(s, dict):
            raise SchemaError("a JSON schema must be an object or a boolean")
        for k in s:
            if k in BOUNDS and (isinstance(s[k], bool) or not isinstance(s[k], (int, float))
                                or (isinstance(s[k], float) and not math.isfinite(s[k]))):
                raise SchemaError(f"'{k}' must be a number")
            if k in BOUNDS and abs(s[k]) >= MAX_BOUND:
                # Python's int() and str() refuse integers of more than 4,300 digits
                # (a bound past them was a 500), and so does the client's JSON parser.
                raise SchemaError(f"'{k}' must be below 1e{MAX_BOUND_DIGITS} in magnitude")
            if k == "multipleOf" and s[k] <= 0:     # JSON Schema: "strictly greater than 0"
                raise SchemaError("'multipleOf' must be greater than 0")
            if k not in SUPPORTED and k not in ANNOTATIONS and k not in BOUNDS:
                raise SchemaError(f"unsupported JSON schema keyword {str(k)[:60]!r}")
        for k in ("$defs", "definitions"):
            if k in s and not isinstance(s[k], dict):
                raise SchemaError(f"'{k}' must be an object")
        asserting = [k for k in s if k not in ANNOTATIONS and k not in BOUNDS
                     and k not in ("$defs", "definitions")]
        for k in ("$ref", "anyOf", "oneOf"):
            if k in s and len(asserting) > 1:
                other = next(o for o in asserting if o != k)
                raise SchemaError(f"'{k}' next to {other!r} is not supported; "
                                  f"put {other!r} inside the referenced or listed schemas")
        held = {k: s[k] for k in s if k in BOUNDS}
        if held and any(k in s for k in ("$ref", "anyOf", "oneOf")):
            return self.branches_with_bounds(s, held, depth)
        if "$ref" in s:
            return self.ref(s["$ref"])
        for k in ("anyOf", "oneOf"):
            if k in s:
                opts = s[k]
                if not isinstance(opts, list) or not opts:
                    raise SchemaError(f"'{k}' must be a non-empty list of schemas")
                return Choice(tuple(self.node(o, depth + 1) for o in opts))
        return self._plain(s, depth)

    def branches_with_bounds(self, s: dict, held: dict, depth: int) -> Choice:
        """Bounds (minimum ... multipleOf) written beside anyOf/oneOf: a value matches a
        branch and the bounds, which is matching one of the branches with the bounds
        added (they constrain numbers only, so a string branch keeps its strings). Each
        branch gets them; one they leave with no value is dropped, and when all are, the
        schema is refused. Beside a $ref, or with a $ref branch, it is a 400: the target
        is one compiled node, shared by every reference to it."""
        first = next(iter(held))
        if "$ref" in s:
            raise SchemaError(f"{first!r} next to '$ref' is not supported; "
                              f"put {first!r} inside the referenced schema")
        key = "anyOf" if "anyOf" in s else "oneOf"
        opts = s[key]
        if not isinstance(opts, list) or not opts:
            raise SchemaError(f"'{key}' must be a non-empty list of schemas")
        kept, empty = [], None
        for o in opts:
            merged = _merge_bounds(o, held, first, key)
            try:
                kept.append(self.node(merged, depth + 1))
            except NoValue as e:
                if e.schema is not merged:      # an empty schema inside the branch
                    raise
                empty = e
        if not kept:
            raise NoValue(str(empty), s)
        return Choice(tuple(kept))

    def _plain(self, s: dict, depth: int) -> Node:
        n = Node()
        t = s.get("type")
        if t is not None:
            names = [t] if isinstance(t, str) else t
            if not isinstance(names, list) or not names or not all(isinstance(x, str) for x in names):
                raise SchemaError("'type' must be a type name or a non-empty list of them")
            bad = [x for x in names if x not in ALL_TYPES]
            if bad:
                raise SchemaError(f"unknown JSON schema type {bad[0][:40]!r}; use one of {', '.join(TYPES)}")
            n.types = frozenset(names)
            if "integer" in n.types and "number" in n.types:
                n.types = n.types - {"integer"}   # number already allows integers
        self._int_range(s, n)                     # no type: any number is held too
        if "enum" in s or "const" in s:
            if "enum" in s and "const" in s:
                raise SchemaError("use either 'enum' or 'const', not both")
            values = s.get("enum") if "enum" in s else [s["const"]]
            if not isinstance(values, list) or not values:
                raise SchemaError("'enum' must be a non-empty list")
            if len(values) > MAX_ENUM_VALUES:
                raise SchemaError(f"'enum' may list at most {MAX_ENUM_VALUES} values")
            allowed = n.types | ({"integer"} if "number" in n.types else set())
            values = [v for v in values if _type_of(v) in allowed]
            if not values:
                raise SchemaError("no 'enum' or 'const' value has the schema's 'type'")
            integer_only = "number" not in n.types
            values = [v for v in values if within_bounds(s, v, integer_only)]
            if not values:
                raise NoValue("no 'enum' or 'const' number fits the schema's bounds "
                              "and 'multipleOf'", s)
            texts = [json.dumps(v, ensure_ascii=False).encode("utf-8") for v in values]
            n.literals = tuple(dict.fromkeys(texts))
        props = s.get("properties", {})
        if not isinstance(props, dict):
            raise SchemaError("'properties' must be an object")
        n.props = {name: self.node(sub, depth + 1) for name, sub in props.items()}
        req = s.get("required", [])
        if not isinstance(req, list) or not all(isinstance(r, str) for r in req):
            raise SchemaError("'required' must be a list of property names")
        n.required = frozenset(req)
        # required names that are not listed come from additionalProperties (checked below)
        names = list(props) + [r for r in dict.fromkeys(req) if r not in props]
        n.keys = tuple((_key_text(name), name) for name in names)
        extra = s.get("additionalProperties", not self.strict)
        if extra is False:
            n.extra = None
            missing = sorted(n.required - set(n.props))
            if missing:
                raise SchemaError(f"'required' names {missing[0][:60]!r}, which is not in "
                                  f"'properties', and additional properties are not allowed")
        else:
            n.extra = ANY if extra is True else self.node(extra, depth + 1)
        _order_keys(n)
        items = s.get("items", True)
        if isinstance(items, list):
            raise SchemaError("'items' as a list (tuple validation) is not supported")
        n.items = self.node(items, depth + 1)
        n.min_items, n.max_items = self._bounds(s, "minItems", "maxItems")
        n.min_len, n.max_len = self._bounds(s, "minLength", "maxLength")
        self._format(s, n)
        self._pattern(s, n)
        if n.literals is not None:
            # enum/const strings are written as they are: keep those the string keywords allow
            texts = tuple(t for t in n.literals
                          if t[:1] != b'"' or _string_fits(n, json.loads(t)))
            if not texts:
                raise SchemaError("no 'enum' or 'const' string fits the schema's 'format', "
                                  "'pattern', 'minLength' and 'maxLength'")
            n.literals = texts
        return n

    @staticmethod
    def _int_range(s: dict, n: Node) -> None:
        """Hold an integer-only type to its bounds and whole multipleOf, a number to its
        bounds (_num_range). A range with no integer in it drops "integer" from the types,
        and is a SchemaError when no other type is left."""
        if "number" in n.types:
            _num_range(s, n)
            return
        if "integer" not in n.types:
            return
        lo, hi = integer_bounds(s)
        step = integer_step(s)
        if lo is None and hi is None and step == 1:
            return
        # the least and the greatest multiple in range (None: that side is unbounded)
        first = None if lo is None else -(-lo // step) * step
        last = None if hi is None else hi // step * step
        if first is not None and last is not None and first > last:
            _no_value(s, n, "integer", ("integer",))
            return
        # Room for the bounds themselves, so that a far-off range is not cut off by the cap.
        # (and for the step's own multiples when a side is unbounded: -step, step)
        widest = max(len(str(x)) for x in (lo, hi, first, last, -step) if x is not None)
        n.int_range = (lo, hi, max(MAX_NUMBER_BYTES, widest), step)

    @staticmethod
    def _format(s: dict, n: Node) -> None:
        """A format we check (FORMATS) holds every string of n to it; any other is read as
        a plain string, as llama.cpp does (a JSON Schema validator need not check formats)."""
        name = s.get("format")
        if name is None:
            return
        if not isinstance(name, str):
            raise SchemaError("'format' must be a string")
        layouts = FORMATS.get(name)
        if layouts is None:
            return
        # Every layout has one length (ASCII, no escapes): keep those minLength and
        # maxLength allow, so that a string never starts down a layout it cannot finish.
        mask = 0
        for i, lay in enumerate(layouts):
            if len(lay) >= n.min_len and (n.max_len is None or len(lay) <= n.max_len):
                mask |= 1 << i
        if not mask:
            raise SchemaError(f"no string of format {name!r} fits 'minLength' and 'maxLength'")
        n.fmt, n.fmt_mask = layouts, mask

    def _pattern(self, s: dict, n: Node) -> None:
        """Hold every string of n to its pattern, together with minLength/maxLength."""
        source = s.get("pattern")
        if source is None:
            return
        if not isinstance(source, str):
            raise SchemaError("'pattern' must be a string")
        if n.fmt is not None:
            # Two scanners of one string would need a product of their states: not worth it
            # for a combination pydantic does not write.
            raise SchemaError(f"'pattern' next to 'format' {s['format']!r} is not supported; "
                              "use one of them")
        done = self.patterns
        key = (source, n.min_len, n.max_len)
        if key in done.compiled:
            n.pattern = done.compiled[key]
            return
        # Each pattern is bounded; so is their number only by MAX_SCHEMA_NODES, and 100
        # patterns near their bound took 10 s to compile. (Checked before compiling too:
        # a schema after the budget is spent costs nothing more.)
        if done.work <= MAX_SCHEMA_PATTERN_WORK:
            try:
                n.pattern = done.compiled[key] = Pattern(source, n.min_len, n.max_len)
            except PatternError as e:
                raise SchemaError(str(e)) from None
            done.work += n.pattern.work
        if done.work > MAX_SCHEMA_PATTERN_WORK:
            raise SchemaError("the schema's 'pattern's are too complex together (their "
                              f"automata cost more than {MAX_SCHEMA_PATTERN_WORK:,} steps to build)")

    @staticmethod
    def _bounds(s, lo_key, hi_key):
        out = []
        for key, default in ((lo_key, 0), (hi_key, None)):
            v = s.get(key, default)
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise SchemaError(f"'{key}' must be a non-negative integer")
            out.append(v)
        if out[1] is not None and out[1] < out[0]:
            raise SchemaError(f"'{hi_key}' is less than '{lo_key}': no value fits")
        return tuple(out)


def _no_value(s: dict, n: Node, what: str, types: tuple) -> None:
    """The bounds hold no value of `what`: drop those types, or refuse the schema when no
    other type is left."""
    if n.types <= set(types):
        keys = [k for k in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")
                if k in s]
        if "multipleOf" in s and (what == "number" or integer_step(s) > 1):
            keys.append("multipleOf")
        note = ""
        if what == "number" and "multipleOf" in s:
            note = (" (a number held to a 'multipleOf' is also held near 0, where "
                    "pydantic's float check accepts every multiple: within 1e6 for a step "
                    "such as 0.1, 2**52 for 0.5)")
        raise NoValue(f"no {what} fits {' and '.join(map(repr, keys))}{note}", s)
    n.types = n.types - set(types)


def _num_range(s: dict, n: Node) -> None:
    """Hold a number to its bounds and multipleOf (Node.num_range). A range with no number
    in it (within the byte cap) drops "number" and "integer" from the types."""
    if not any(k in s for k in BOUND_KEYS + ("multipleOf",)):
        return
    rng = number_range_of(s, MAX_NUMBER_BYTES)
    if rng is None:
        _no_value(s, n, "number", ("number", "integer"))
        return
    n.num_range = rng


def _merge_bounds(o, held: dict, first: str, key: str):
    """Branch o of an anyOf/oneOf with the bounds written beside it added: of a bound it
    has too, the stricter (compared as the decimals written; for an exclusive one the
    stricter decimal has the stricter double too), and the same multipleOf or a 400."""
    if o is True:
        return dict(held)
    if not isinstance(o, dict):
        return o                        # false, or not a schema: node() says which
    if "$ref" in o:
        raise SchemaError(f"{first!r} next to '{key}' with a '$ref' branch is not supported; "
                          f"put {first!r} inside the referenced schema")
    out = dict(o)
    for k, v in held.items():
        mine = out.get(k)
        if mine is None or isinstance(mine, bool) or not isinstance(mine, (int, float)) \
                or not math.isfinite(mine):
            out.setdefault(k, v)        # a bad value of the branch's own: node() says so
        elif k == "multipleOf":
            if decimal_of(mine) != decimal_of(v):
                raise SchemaError(f"'multipleOf' next to '{key}' and a different one in "
                                  "its branch is not supported; write one in each branch")
        elif k in ("minimum", "exclusiveMinimum"):
            out[k] = max(mine, v, key=decimal_of)
        else:
            out[k] = min(mine, v, key=decimal_of)
    return out


def _check_refs(refs) -> None:
    """A $ref or anyOf that reaches itself before any concrete schema would send the
    recognizer round in circles ({"$ref": "#"} at the root): refuse it."""
    def walk(x, seen):
        if isinstance(x, Ref):
            if x in seen:
                raise SchemaError(f"'$ref' {x.pointer[:80]!r} refers to itself")
            walk(x.target, seen | {x})
        elif isinstance(x, Choice):
            for o in x.options:
                walk(o, seen)
    for r in refs:
        walk(r, frozenset())


def compile_schema(schema, *, strict: bool = False, patterns: Patterns | None = None):
    """A JSON schema -> the grammar node for its values. strict: properties that are not
    listed are not allowed unless additionalProperties says otherwise (OpenAI's strict).
    patterns: the request's, when it compiles several schemas (see Patterns)."""
    c = _Compiler(schema, strict, patterns)
    try:
        node = c.node(schema, 0)
        _check_refs(c.refs.values())
    except RecursionError:  # a long chain of $refs, each compiled inside the one before
        raise SchemaError("the JSON schema is nested too deeply") from None
    return node


def only_objects(node):
    """node, narrowed to objects (a tool's arguments, a json_object reply). None when it
    allows no object."""
    node = _deref(node)
    if isinstance(node, Choice):
        opts = tuple(o for o in (only_objects(x) for x in node.options) if o is not None)
        return Choice(opts) if opts else None
    if "object" not in node.types or (node.literals is not None):
        return None
    if node.types == {"object"}:
        return node
    narrowed = Node(**{**node.__dict__, "types": frozenset({"object"})})
    return narrowed


def _deref(node):
    while isinstance(node, Ref):
        node = node.target
    return node


# ---- string formats -----------------------------------------------------------------------

# A format is a few layouts, each a fixed-length template: a lowercase letter is a field or
# a class of bytes, anything else the byte itself. Number fields are runs of one letter, with
# their range (the day's depends on the year and month before it); classes are one byte.
# Following llama.cpp's json-schema-to-grammar: date YYYY-MM-DD; time HH:MM:SS, optionally
# .fff (exactly 3 digits), then Z or +HH:MM/-HH:MM (the offset is required); date-time is
# date "T" time; uuid 8-4-4-4-12 hex digits, either case ("uuid1".."uuid5" too, as llama.cpp
# reads them; there the version digit and the RFC 4122 variant are checked, as pydantic's
# UUID1..UUID5 do). Stricter than llama.cpp in one way: a date must exist (no 02-30, no
# year 0000), so that every value parses (datetime.date.fromisoformat, pydantic).
_FIELD_RANGES = {"y": (1, 9999), "o": (1, 12), "d": (1, 31), "h": (0, 23), "i": (0, 59),
                 "s": (0, 59), "f": (0, 999), "u": (0, 23), "v": (0, 59)}
_CLASSES = {"x": frozenset(b"0123456789abcdefABCDEF"), "r": frozenset(b"89abAB"),
            "p": frozenset(b"+-")}
_DATE = "yyyy-oo-dd"
_TIMES = tuple(hms + frac + zone for hms in ("hh:ii:ss",) for frac in ("", ".fff")
               for zone in ("Z", "puu:vv"))


def _layout(template: str) -> tuple:
    """Per position: (template char, digits of its field before it, the field's width)."""
    out, pos = [], 0
    while pos < len(template):
        c, width = template[pos], 1
        if c in _FIELD_RANGES:
            while pos + width < len(template) and template[pos + width] == c:
                width += 1
            out += [(c, k, width) for k in range(width)]
        else:
            out.append((c, 0, 0))
        pos += width
    return tuple(out)


def _uuid(version: str = "x", variant: str = "x") -> str:
    return f"xxxxxxxx-xxxx-{version}xxx-{variant}xxx-xxxxxxxxxxxx"


_TEMPLATES = {"date": (_DATE,), "time": _TIMES, "date-time": tuple(_DATE + "T" + t for t in _TIMES),
              "uuid": (_uuid(),), **{f"uuid{v}": (_uuid(str(v), "r"),) for v in range(1, 6)}}
FORMATS = {name: tuple(_layout(t) for t in templates) for name, templates in _TEMPLATES.items()}


def _char_fits(t: str, b: int) -> bool:
    """Can byte b stand for template char t?"""
    if t in _FIELD_RANGES:
        return 0x30 <= b <= 0x39
    if t in _CLASSES:
        return b in _CLASSES[t]
    return b == ord(t)


def _field_viable(value: int, digits: int, width: int, lo: int, hi: int) -> bool:
    """Can a field whose first `digits` digits are `value` still end in lo..hi?"""
    span = 10 ** (width - digits)
    return value * span <= hi and value * span + span - 1 >= lo


def _fmt_byte(layouts, fs, b):
    """One byte of a formatted string's body (fs: (alive layouts as bits, position, the
    current field's value so far, the values of the fields done)). Returns the new state,
    or None. The layouts alive share every byte so far, and their templates differ at a
    position only in bytes that exclude each other (".", "Z", "+"), so the survivors of
    a byte agree on what it was."""
    mask, pos, cur, done = fs
    keep, c = 0, None
    for i, lay in enumerate(layouts):
        if mask >> i & 1 and pos < len(lay):
            if _char_fits(lay[pos][0], b):
                keep |= 1 << i
                c, k, w = lay[pos]
    if not keep:
        return None
    if c not in _FIELD_RANGES:
        return keep, pos + 1, 0, done
    lo, hi = _FIELD_RANGES[c]
    if c == "d":        # a date's day: the year and month are its first two fields
        hi = calendar.monthrange(done[0], done[1])[1]
    value = cur * 10 + (b - 0x30)
    if not _field_viable(value, k + 1, w, lo, hi):
        return None
    if k + 1 == w:
        return keep, pos + 1, 0, done + (value,)
    return keep, pos + 1, value, done


def _fmt_whole(layouts, fs) -> bool:
    """May the string close here (is it a whole value of one of the alive layouts)?"""
    mask, pos = fs[0], fs[1]
    return any(mask >> i & 1 and len(lay) == pos for i, lay in enumerate(layouts))


def _fmt_matches(layouts, mask: int, text: str) -> bool:
    fs = (mask, 0, 0, ())
    for b in text.encode("utf-8"):
        fs = _fmt_byte(layouts, fs, b)
        if fs is None:
            return False
    return _fmt_whole(layouts, fs)


def _string_fits(n: Node, s: str) -> bool:
    """Does the string s fit n's minLength, maxLength, format and pattern? (for enum and
    const)"""
    if len(s) < n.min_len or (n.max_len is not None and len(s) > n.max_len):
        return False
    if n.pattern is not None and not n.pattern.matches(s):
        return False
    return n.fmt is None or _fmt_matches(n.fmt, n.fmt_mask, s)


# The string scanner (_str_byte) checks a string's bytes; _pat_byte also rebuilds each
# character's code point from them (UTF-8 or an escape) and steps the pattern with it. A
# byte that starts a character is taken only if some code point it can still become
# leads on, so no byte dead-ends, not even the first byte of an escape or of a UTF-8
# sequence.
_ESCAPED_CP = {0x22: 0x22, 0x5C: 0x5C, 0x2F: 0x2F, 0x62: 0x08, 0x66: 0x0C, 0x6E: 0x0A,
               0x72: 0x0D, 0x74: 0x09}
_UTF8_LOW = {1: 0x80, 2: 0x800, 3: 0x10000}     # the least code point of a 2, 3, 4-byte form


def _pat_byte(node, ps, b):
    """One byte of a string held to node.pattern (ps: (the string scanner's state, the
    code point so far, the pattern's state)). Returns the new ps, True for the closing
    quote, or None."""
    ss, cp, at = ps
    pat = node.pattern
    r = _str_byte(ss, b, node.max_len)
    if r is None:
        return None
    if r is True:
        return True if pat.accept in at and ss[5] >= node.min_len else None
    if ss[2]:                           # a UTF-8 continuation byte: 6 more bits
        cp = cp << 6 | (b & 0x3F)
    elif ss[0] == 0:                    # a character's first byte: ASCII, or a lead's bits
        cp = b if b < 0x80 else b & (0x7F >> (r[2] + 1))
    elif ss[0] == 1:                    # after "\": the escaped character ("u": 0 so far)
        cp = _ESCAPED_CP.get(b, 0)
    else:                               # a \uXXXX digit
        cp = ss[1] * 16 + HEX[b]
    if r[0] == 0 and r[2] == 0:         # the character is whole
        nxt = pat.step(at, cp)
        return (r, 0, nxt) if nxt is not None and pat.ok(nxt, r[5]) else None
    lo, hi = _cp_left(r, cp)
    n_chars = r[5] if r[0] == 0 else r[5] + 1   # UTF-8 counts the character at its lead
    return (r, cp, at) if pat.can_take(at, lo, hi, n_chars) else None


def _cp_left(r, cp: int) -> tuple:
    """The code points a partly written character (scanner state r, bits so far cp) can
    still become: lo, hi."""
    esc, need = r[0], r[2]
    if need:                            # inside a UTF-8 sequence
        lo = cp << 6 * need
        return max(lo, _UTF8_LOW[need]), min(lo + (1 << 6 * need) - 1, MAX_CP)
    if esc == 1:                        # after "\": an escape writes up to U+FFFF
        return 0, 0xFFFF
    left_bits = 4 * (6 - esc)           # \u and esc - 2 digits: 6 - esc digits to come
    return cp << left_bits, (cp << left_bits) + (1 << left_bits) - 1


# ---- grammars: where a reply starts ------------------------------------------------------

# Frame tags. A frame is a tuple whose first item is its tag; a stack is (frame, below).
(VALUE, OBJ_FIRST, OBJ_KEY, KEY_FREE, KEY_LIT, OBJ_COLON, OBJ_NEXT, ARR_FIRST, ARR_NEXT,
 STR, NUM, LIT, RAW, END, FMT, IRANGE, PAT, NRANGE) = range(18)
# A bounded integer's and number's scanners: (step, whole), from runtime/number_range.py.
RANGED = {IRANGE: (int_step, int_whole), NRANGE: (num_step, num_whole)}
# Number phases; a number may end in the ENDABLE ones.
MINUS, ZERO, INT, DOT, FRAC, EXP_MARK, EXP_SIGN, EXP = range(8)
ENDABLE = frozenset({ZERO, INT, FRAC, EXP})
WS = frozenset(b" \t\n\r")   # \r is JSON whitespace but never written here: see _ws
HEX = {c: int(chr(c), 16) for c in b"0123456789abcdefABCDEF"}
ESCAPES = frozenset(b'"\\/bfnrt')
STR0 = (0, 0, 0, 0, 0, 0)   # string scanner: (escape, hex value, utf8 bytes needed, lo, hi, chars)
_END_STACK = ((END,), None)


def value_grammar(node) -> tuple:
    """The start state for a reply that is one JSON value of `node`."""
    return (((VALUE, node, 0), _END_STACK), 0),


def wrapped_grammar(node, wrappers) -> tuple:
    """The start state for a reply that is `prefix + value + suffix`, for any of the
    (prefix, suffix) pairs given; ("", "") is the bare value."""
    alts = []
    for prefix, suffix in wrappers:
        stack = _END_STACK
        if suffix:
            stack = ((RAW, suffix.encode("utf-8"), 0, False), stack)
        stack = ((VALUE, node, 0), stack)
        if prefix:
            stack = ((RAW, prefix.encode("utf-8"), 0, True), stack)
        alts.append((stack, 0))
    return tuple(alts)


# ---- the recognizer -----------------------------------------------------------------------

def _ws(ws: int, b: int, end: bool = False) -> int:
    """The whitespace run after byte b (ws: its state, 0 before the run, else 1 + the
    spaces after a newline, or _WS_DONE), or -1 if b may not extend it. After the whole
    value (end) a single whitespace byte is allowed."""
    if b == 0x0A:
        return 1 if ws == 0 else -1
    if b == 0x20 or b == 0x09:
        if ws == 0:
            return _WS_DONE
        if ws <= MAX_INDENT and not end:
            return ws + 1
    return -1


def _str_byte(ss, b, max_len):
    """One byte of a string's body. Returns the new scanner state, True for the closing
    quote, or None when the byte cannot come here."""
    esc, hexv, need, lo, hi, n = ss
    if need:
        if lo <= b <= hi:
            return (0, 0, need - 1, 0x80, 0xBF, n)
        return None
    if esc == 0:
        if b == 0x22:
            return True
        if max_len is not None and n >= max_len:
            return None
        if b == 0x5C:
            return (1, 0, 0, 0, 0, n)
        if b < 0x20:
            return None
        if b < 0x80:
            return (0, 0, 0, 0, 0, n + 1)
        # UTF-8 lead bytes, with the ranges that exclude overlong forms and surrogates
        if 0xC2 <= b <= 0xDF:
            return (0, 0, 1, 0x80, 0xBF, n + 1)
        if b == 0xE0:
            return (0, 0, 2, 0xA0, 0xBF, n + 1)
        if b == 0xED:
            return (0, 0, 2, 0x80, 0x9F, n + 1)
        if 0xE1 <= b <= 0xEF:
            return (0, 0, 2, 0x80, 0xBF, n + 1)
        if b == 0xF0:
            return (0, 0, 3, 0x90, 0xBF, n + 1)
        if 0xF1 <= b <= 0xF3:
            return (0, 0, 3, 0x80, 0xBF, n + 1)
        if b == 0xF4:
            return (0, 0, 3, 0x80, 0x8F, n + 1)
        return None
    if esc == 1:
        if b in ESCAPES:
            return (0, 0, 0, 0, 0, n + 1)
        if b == 0x75:  # \u
            return (2, 0, 0, 0, 0, n)
        return None
    d = HEX.get(b)
    if d is None:
        return None
    hexv = hexv * 16 + d
    if esc < 5:
        return (esc + 1, hexv, 0, 0, 0, n)
    if 0xD800 <= hexv <= 0xDFFF:
        return None
    return (0, 0, 0, 0, 0, n + 1)


def _start_value(node, depth, b, below, out):
    """The first byte of a value of `node` (whitespace is handled by the caller)."""
    node = _deref(node)
    if isinstance(node, Choice):
        for opt in node.options:
            _start_value(opt, depth, b, below, out)
        return
    if node.literals is not None:
        cands = tuple(t for t in node.literals if t[0] == b)
        if cands:
            _lit(cands, 1, below, out)
        return
    types = node.types
    if b == 0x7B:  # {
        if "object" in types and depth < MAX_DEPTH:
            out.append((((OBJ_FIRST, node, NO_KEYS, depth + 1), below), 0))
    elif b == 0x5B:  # [
        if "array" in types and depth < MAX_DEPTH:
            out.append((((ARR_FIRST, node, depth + 1), below), 0))
    elif b == 0x22:  # "
        if "string" in types and node.pattern is not None:
            out.append((((PAT, node, (STR0, 0, node.pattern.start)), below), 0))
        elif "string" in types and node.fmt is not None:
            out.append((((FMT, node, (node.fmt_mask, 0, 0, ())), below), 0))
        elif "string" in types:
            out.append((((STR, node, STR0), below), 0))
    elif b == 0x2D or b in DIGITS:
        if node.int_range is not None:
            got = int_step(node.int_range, False, 0, 0, b)
            if got is not None:
                out.append((((IRANGE, node.int_range) + got, below), 0))
        elif node.num_range is not None:
            got = num_step(node.num_range, False, 0, 0, -1, b)
            if got is not None:
                out.append((((NRANGE, node.num_range) + got, below), 0))
        elif "number" in types or "integer" in types:
            phase = MINUS if b == 0x2D else ZERO if b == 0x30 else INT
            out.append((((NUM, "number" not in types, phase, 1), below), 0))
    elif b == 0x74 and "boolean" in types:
        _lit((b"true",), 1, below, out)
    elif b == 0x66 and "boolean" in types:
        _lit((b"false",), 1, below, out)
    elif b == 0x6E and "null" in types:
        _lit((b"null",), 1, below, out)


def _lit(cands, pos, below, out):
    if len(cands) == 1 and len(cands[0]) == pos:
        out.append((below, 0))          # the one literal is whole: the value is done
    else:
        out.append((((LIT, cands, pos), below), 0))


def _start_key(node, seen, depth, below, out):
    """The opening quote of a key. An (ordered) object's keys come in the schema's order:
    after listed key i-1, the next is one of keys i .. the next required one (optional
    keys may be skipped, required ones not); unlisted keys only once no required key is
    left, and no listed key after them. A subset of what the schema allows, in the order
    OpenAI's strict mode writes (llama.cpp's grammars fix an order too: required keys,
    then optional ones, then unlisted ones). A model cannot write a key twice, dither
    between keys, or wander into made-up keys while one it must write is missing.
    A listed key is spelt as json.dumps writes it, except where unlisted keys may come:
    there a key is read as any string, and a listed name (even escaped) is that key."""
    i, names = seen
    if node.ordered:
        stop = node.req_next[i]
        if stop == len(node.keys) and node.extra is not None:
            out.append((((KEY_FREE, node, seen, depth, b"", STR0), below), 0))
        elif i < len(node.keys):
            out.append((((KEY_LIT, node, seen, depth, node.entries[i:stop + 1], 0), below), 0))
    elif node.extra is None or not node.required <= names:
        cands = tuple((text, node.props.get(name, node.extra), (0, names | {name}))
                      for text, name in node.keys if name not in names)
        if cands:
            out.append((((KEY_LIT, node, seen, depth, cands, 0), below), 0))
    else:
        out.append((((KEY_FREE, node, seen, depth, b"", STR0), below), 0))


def _free_key(node, seen, name):
    """A key read as any string (KEY_FREE) -> (its value's node, the progress after it),
    or None when it may not come here."""
    i, names = seen
    if node.ordered:
        j = node.index.get(name)
        if j is not None:       # a listed name: at its place, or not at all
            return (node.entries[j][1], (j + 1, names)) if j >= i else None
        if name in names:
            return None
        return node.extra, (len(node.keys), names | {name})
    value = node.props.get(name, node.extra)
    if name in names or value is None:
        return None
    return value, (0, names | {name})


def _more_keys(node, seen) -> bool:
    i, names = seen
    if node.extra is not None:
        return True
    if node.ordered:
        return i < len(node.keys)
    return any(name not in names for _, name in node.keys)


def _can_close(node, seen) -> bool:
    """May the object end here (is every required key written)?"""
    i, names = seen
    if node.ordered:
        return node.req_next[i] == len(node.keys)
    return node.required <= names


def _step(stack, ws, b, raw_only, out):
    """Every (stack, ws) that byte b leads to from (stack, ws), appended to out. raw_only:
    the byte comes from a special token, which may only spell a prefix/suffix literal."""
    while True:
        frame, below = stack
        tag = frame[0]
        if raw_only and tag != RAW:
            return
        is_ws = b in WS
        if tag == RAW:
            text, pos, lead_ws = frame[1], frame[2], frame[3]
            if b == text[pos]:
                pos += 1
                out.append((((RAW, text, pos, False), below) if pos < len(text) else below, 0))
            elif lead_ws and pos == 0 and is_ws and _ws(ws, b) >= 0:
                out.append((stack, _ws(ws, b)))
            return
        if tag == STR:
            r = _str_byte(frame[2], b, frame[1].max_len)
            if r is True:
                if frame[2][5] >= frame[1].min_len:
                    out.append((below, 0))
            elif r is not None:
                out.append((((STR, frame[1], r), below), 0))
            return
        if tag == PAT:
            r = _pat_byte(frame[1], frame[2], b)
            if r is True:
                out.append((below, 0))
            elif r is not None:
                out.append((((PAT, frame[1], r), below), 0))
            return
        if tag == FMT:
            node, fs = frame[1], frame[2]
            if b == 0x22:
                if _fmt_whole(node.fmt, fs):
                    out.append((below, 0))
            else:
                fs = _fmt_byte(node.fmt, fs, b)
                if fs is not None:
                    out.append((((FMT, node, fs), below), 0))
            return
        if tag == NUM:
            _, int_only, phase, n = frame
            nxt = None
            if b in DIGITS:
                if phase == MINUS:
                    nxt = ZERO if b == 0x30 else INT
                elif phase == INT:
                    nxt = INT
                elif phase in (DOT, FRAC):
                    nxt = FRAC
                elif phase in (EXP_MARK, EXP_SIGN, EXP):
                    nxt = EXP
            elif b == 0x2E and not int_only and phase in (ZERO, INT):
                nxt = DOT
            elif b in (0x65, 0x45) and not int_only and phase in (ZERO, INT, FRAC):
                nxt = EXP_MARK
            elif b in (0x2B, 0x2D) and phase == EXP_MARK:
                nxt = EXP_SIGN
            if nxt is not None:
                # A phase that cannot end needs room for one more digit.
                if n + (1 if nxt in ENDABLE else 2) <= MAX_NUMBER_BYTES:
                    out.append((((NUM, int_only, nxt, n + 1), below), 0))
                return
            if phase not in ENDABLE:
                return
            stack = below     # the number ended just before b: b belongs to what follows
            continue
        if tag in RANGED:     # (tag, rng, *its state): see runtime/number_range.py
            step, whole = RANGED[tag]
            got = step(frame[1], *frame[2:], b)
            if got is not None:
                out.append((((tag, frame[1]) + got, below), 0))
                return
            if not whole(frame):
                return
            stack = below     # the number ended just before b: b belongs to what follows
            continue
        if tag == LIT:
            cands, pos = frame[1], frame[2]
            nc = tuple(c for c in cands if len(c) > pos and c[pos] == b)
            if nc:
                _lit(nc, pos + 1, below, out)
            if not any(len(c) == pos for c in cands):
                return
            stack = below     # a whole literal (a number among longer ones) ended before b
            continue
        if is_ws and tag not in (KEY_FREE, KEY_LIT):
            ws = _ws(ws, b, tag == END)
            if ws >= 0:
                out.append((stack, ws))
            return
        if tag == VALUE:
            _start_value(frame[1], frame[2], b, below, out)
        elif tag == END:
            return
        elif tag == OBJ_FIRST or tag == OBJ_KEY:
            node, seen, depth = frame[1], frame[2], frame[3]
            if b == 0x22:
                _start_key(node, seen, depth, below, out)
            elif b == 0x7D and tag == OBJ_FIRST and _can_close(node, seen):
                out.append((below, 0))
        elif tag == KEY_LIT:
            _, node, seen, depth, cands, pos = frame
            nc = tuple(c for c in cands if len(c[0]) > pos and c[0][pos] == b)
            if nc:
                out.append((((KEY_LIT, node, seen, depth, nc, pos + 1), below), 0))
            if b == 0x22:
                for text, value, after in cands:
                    if len(text) == pos:
                        out.append((((OBJ_COLON, node, after, depth, value), below), 0))
        elif tag == KEY_FREE:
            _, node, seen, depth, raw, ss = frame
            if ss[0] == 0 and ss[2] == 0 and b != 0x22 and len(raw) >= MAX_KEY_BYTES:
                return
            r = _str_byte(ss, b, None)
            if r is True:
                got = _free_key(node, seen, json.loads(b'"' + raw + b'"'))
                if got is not None:
                    out.append((((OBJ_COLON, node, got[1], depth, got[0]), below), 0))
            elif r is not None:
                out.append((((KEY_FREE, node, seen, depth, raw + bytes((b,)), r), below), 0))
        elif tag == OBJ_COLON:
            if b == 0x3A:
                _, node, seen, depth, value = frame
                out.append((((VALUE, value, depth), ((OBJ_NEXT, node, seen, depth), below)), 0))
        elif tag == OBJ_NEXT:
            _, node, seen, depth = frame
            if b == 0x2C and _more_keys(node, seen):
                out.append((((OBJ_KEY, node, seen, depth), below), 0))
            elif b == 0x7D and _can_close(node, seen):
                out.append((below, 0))
        elif tag == ARR_FIRST:
            _, node, depth = frame
            if b == 0x5D:
                if node.min_items == 0:
                    out.append((below, 0))
            elif node.max_items != 0:
                _start_value(node.items, depth, b, ((ARR_NEXT, node, 1, depth), below), out)
        elif tag == ARR_NEXT:
            _, node, count, depth = frame
            if b == 0x2C and (node.max_items is None or count < node.max_items):
                out.append((((VALUE, node.items, depth), ((ARR_NEXT, node, count + 1, depth), below)), 0))
            elif b == 0x5D and count >= node.min_items:
                out.append((below, 0))
        return


def feed(state: tuple, data: bytes, raw_only: bool = False):
    """The state after `data`, or None if the grammar allows no text that starts so."""
    for b in data:
        out: list = []
        for stack, ws in state:
            _step(stack, ws, b, raw_only, out)
        if not out:
            return None
        if len(out) > 1:
            out = list(dict.fromkeys(out))[:MAX_ALTS]
        state = tuple(out)
    return state


def can_end(state: tuple) -> bool:
    """Is the text so far a whole reply (nothing more is needed)?"""
    for stack, _ in state:
        while True:
            frame, below = stack
            tag = frame[0]
            if tag == END:
                return True
            if (tag == NUM and frame[2] in ENDABLE) or (tag in RANGED and RANGED[tag][1](frame)) or \
                    (tag == LIT and any(len(c) == frame[2] for c in frame[1])):
                stack = below
                continue
            break
    return False


def first_bytes(state: tuple) -> np.ndarray:
    """bool[256]: which bytes may come next."""
    ok = np.zeros(256, dtype=bool)
    for b in range(256):
        out: list = []
        for stack, ws in state:
            _step(stack, ws, b, False, out)
            if out:
                ok[b] = True
                break
    return ok


PAIR_REFINE_MAX = 16   # refine by the second byte when at most this many first bytes fit


def _head_table(state: tuple) -> np.ndarray:
    """bool[256, 257]: may a token start with bytes (b0, b1)? Column 256: a one-byte
    token. The second byte is looked at (256 checks each) after whitespace, which starts
    a third of a BPE vocabulary (" word"), and after every first byte when few fit; when
    many fit (inside a string) most tokens are allowed anyway."""
    ok0 = first_bytes(state)
    table = np.repeat(ok0[:, None], 257, axis=1)
    fits = np.flatnonzero(ok0).tolist()
    refine = fits if len(fits) <= PAIR_REFINE_MAX else [b for b in fits if b in WS]
    for b0 in refine:
        table[b0, :256] = first_bytes(feed(state, bytes((b0,))))
    return table


# ---- tokens -------------------------------------------------------------------------------

class Vocab:
    """What the constraint needs to know of each token, cached once per tokenizer: its
    bytes, and whether it is a special token (which may only spell a literal prefix or
    suffix, such as Qwen's <tool_call>, never a piece of the JSON)."""

    def __init__(self, tokenizer, n_vocab: int):
        self.tokenizer = tokenizer
        self.n_vocab = n_vocab
        self._info: dict[int, tuple[bytes, bool]] = {}
        # int16 [n_vocab] each: a token's first byte (-1: no text) and second (256: none)
        self._head: tuple[np.ndarray, np.ndarray] | None = None

    def info(self, tok: int) -> tuple[bytes, bool]:
        got = self._info.get(tok)
        if got is None:
            got = self._info[tok] = self._lookup(tok)
        return got

    def _lookup(self, tok: int) -> tuple[bytes, bool]:
        try:
            piece = self.tokenizer.token_to_piece(tok)
        except (IndexError, ValueError, KeyError):
            return b"", False       # an embedding row past the tokenizer's vocabulary
        if isinstance(piece, str):
            piece = piece.encode("utf-8")
        is_special = getattr(self.tokenizer, "is_special", None)
        # Gemma's newline and tab runs are added tokens too: whitespace is just text.
        special = bool(is_special and is_special(tok)) and bool(piece.strip())
        return piece, special

    def heads(self) -> tuple[np.ndarray, np.ndarray]:
        """Every token's first two bytes, for the search past the model's top tokens.
        Read once per tokenizer from its shared table of every token's bytes
        (runtime/token_bytes.py: 0.06-0.1 s for Qwen's 151,936 tokens, nothing when DRY
        built it first), where a control token has none, as token_to_piece gives it."""
        if self._head is None:
            first = np.full(self.n_vocab, -1, dtype=np.int16)
            second = np.full(self.n_vocab, 256, dtype=np.int16)
            table = table_of(self.tokenizer, self.n_vocab)
            n = min(len(table), self.n_vocab)     # rows past the vocabulary: no bytes
            starts, lengths = table.starts[:n], table.lengths[:n]
            lengths = np.where(table.hidden[:n], 0, lengths)
            has = np.flatnonzero(lengths > 0)
            first[has] = table.data[starts[has]]
            two = np.flatnonzero(lengths > 1)
            second[two] = table.data[starts[two] + 1]
            self._head = first, second
        return self._head


_VOCABS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def vocab_of(tokenizer, n_vocab: int) -> Vocab:
    try:
        v = _VOCABS.get(tokenizer)
    except TypeError:               # not weak-referenceable: no cache
        return Vocab(tokenizer, n_vocab)
    if v is None or v.n_vocab != n_vocab:
        v = _VOCABS[tokenizer] = Vocab(tokenizer, n_vocab)
    return v


class TokenConstraint:
    """One request's constraint: which tokens may come next, given those accepted so far.

    `allows(tok)` is cheap and remembers its answer until `accept(tok)` moves on, so the
    sampler can ask about candidates in its own order. An end-of-generation token is
    allowed only once the value is complete; a token with no text never is otherwise."""

    def __init__(self, start: tuple, tokenizer, eog_ids, n_vocab: int):
        self.state = start
        self.vocab = vocab_of(tokenizer, n_vocab)
        self.eog_ids = frozenset(eog_ids)
        self._next: dict[int, tuple | None] = {}
        self._complete: bool | None = None
        self._first_ok: np.ndarray | None = None
        # Whether the one whitespace byte may follow the value: only when an
        # end-of-generation token can come after it (see no_end_token).
        self.ws_after_value = True

    def no_end_token(self) -> None:
        """No end-of-generation token can be sampled (ignore_eos bans them all): then the
        reply must stop exactly where the value ends. The whitespace byte otherwise allowed
        after the value would be a dead end (nothing may follow it) that the reply would
        end on, a stray byte after the JSON."""
        self.ws_after_value = False
        self._next = {}
        self._first_ok = None

    @property
    def complete(self) -> bool:
        if self._complete is None:
            self._complete = can_end(self.state)
        return self._complete

    def _after(self, tok: int):
        if tok in self._next:
            return self._next[tok]
        piece, special = self.vocab.info(tok)
        nxt = feed(self.state, piece, raw_only=special) if piece else None
        if nxt is not None and not self.ws_after_value:
            # drop the alternatives (stack, ws) whose value is done, with whitespace after
            nxt = tuple((stack, ws) for stack, ws in nxt if not (stack[0][0] == END and ws)) or None
        self._next[tok] = nxt
        return nxt

    def allows(self, tok: int) -> bool:
        tok = int(tok)
        if tok in self.eog_ids:
            return self.complete
        return self._after(tok) is not None

    def accept(self, tok: int) -> None:
        tok = int(tok)
        if tok not in self.eog_ids:
            nxt = self._after(tok)
            if nxt is None:
                raise ValueError(f"token {tok} is not allowed here")
            self.state = nxt
        self._next = {}
        self._complete = None
        self._first_ok = None

    def candidates(self) -> np.ndarray:
        """bool [n_vocab]: tokens whose first two bytes may come next, plus
        end-of-generation when the value is complete. A superset of the allowed tokens,
        for the rare search past the model's top choices: where only "{" or whitespace
        may come, it leaves out the tens of thousands of " word" tokens."""
        if self._first_ok is None:
            self._first_ok = _head_table(self.state)
        first, second = self.vocab.heads()
        mask = np.zeros(first.shape[0], dtype=bool)
        has = first >= 0
        mask[has] = self._first_ok[first[has], second[has]]
        if self.complete:
            for t in self.eog_ids:
                if 0 <= t < mask.shape[0]:
                    mask[t] = True
        return mask


def make_constraint(model, start: tuple) -> TokenConstraint:
    return TokenConstraint(start, model.tokenizer, getattr(model, "eog_ids", ()) or (),
                           int(model.n_vocab))
