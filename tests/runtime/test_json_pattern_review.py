"""Costs of JSON Schema `pattern` (runtime/string_pattern.py, runtime/json_constraint.py)
found by an adversarial review: what a pattern or a schema of them can make the server do
per character and per request is bounded. Work is counted, never timed."""
import random

import pytest

from runtime import json_constraint as jc
from runtime import string_pattern
from runtime.string_pattern import Pattern

# a class of 450 characters that are not neighbours (450 ranges), repeated 300 times
WIDE_CLASS = "[" + "".join(chr(0x100 + 2 * i) for i in range(450)) + "]"


def naive_moves(p, at):
    """The set's transitions, code point piece by piece (what moves() must equal)."""
    qs = [q for q in at if q != p.accept]
    points = sorted({x for q in qs for lo, hi in p.ranges[q] for x in (lo, hi + 1)})
    out = []
    for lo, nxt in zip(points, points[1:]):
        target = frozenset().union(*(p.after[q] for q in qs if string_pattern._cp_in(p.ranges[q], lo)))
        if not target:
            continue
        if out and out[-1][1] == lo - 1 and out[-1][2] == target:
            out[-1] = (out[-1][0], nxt - 1, target)
        else:
            out.append((lo, nxt - 1, target))
    return tuple(out)


@pytest.mark.parametrize("source", [r"^(a|b)*c?[^ab]{1,3}$", "x[a-z]+y|^[^x]*$", r"[\d\s]?.é|😀",
                                    "^(?:[^a]|[^b]|[a-c])+$", WIDE_CLASS + "{0,3}"])
def test_a_sets_moves_are_its_states_moves_merged(source):
    p = Pattern(source)
    rng = random.Random(0)
    at = p.start
    for _ in range(8):
        moves = p.moves(at)
        assert moves == naive_moves(p, at)
        if not moves:           # only the match: "$" reached
            break
        lo, hi, at = moves[rng.randrange(len(moves))]


def test_a_repeated_wide_class_is_not_tested_once_per_state_and_piece(monkeypatch):
    """Each set of WIDE_CLASS{0,300} holds up to 300 copies of the class: testing each
    copy on each of its 900 pieces took 0.8 s a character (53 s for 300)."""
    p = Pattern(WIDE_CLASS + "{0,300}$")
    calls = []
    real = string_pattern._cp_in
    monkeypatch.setattr(string_pattern, "_cp_in", lambda r, c: calls.append(1) or real(r, c))
    at = p.start
    for _ in range(40):     # the match may start at any of them: 40 copies in the set
        at = p.step(at, 0x100)
    assert len(at) > 40 and len(calls) < 10_000


def test_the_caches_hold_a_bounded_number_of_states(monkeypatch):
    """[ab]*a[ab]{1000} makes a new set (every a in the last 1000 characters) at each
    character: remembering them all grew by 60 MB per 1000 characters."""
    monkeypatch.setattr(string_pattern, "MAX_PATTERN_HELD", 10_000)
    p = Pattern("[ab]*a[ab]{1000}$")
    rng = random.Random(1)
    at = p.start
    for _ in range(400):
        at = p.step(at, ord(rng.choice("ab")))
        held = sum(len(s) for s in p._moves) + sum(len(t) for m in p._moves.values() for *_, t in m)
        assert held <= 10_000 + 4 * 1002
    assert p.step(at, ord("a")) is not None        # it still works after starting over


def test_a_schemas_patterns_share_a_budget():
    """Each pattern is bounded (about 0.1 s at worst); 100 of them took 10 s."""
    heavy = [{"type": "string", "pattern": f"(a?){{{300 - i}}}$"} for i in range(20)]
    with pytest.raises(jc.SchemaError, match="'pattern's are too complex together"):
        jc.compile_schema({"anyOf": heavy})


def test_a_pattern_repeated_in_a_schema_is_compiled_once():
    same = {"type": "string", "pattern": "(a?){300}$"}
    node = jc.compile_schema({"type": "object", "properties": {f"p{i}": same for i in range(50)}})
    assert len({id(n.pattern) for n in node.props.values()}) == 1


def test_a_requests_tools_share_one_pattern_budget(monkeypatch):
    """Each tool's parameters is a schema of its own: with a budget per schema, 40 tools
    of heavy patterns took 12 s to compile. Past the request's budget, a tool's patterns
    are not compiled at all (its arguments go unchecked, as for any schema refused)."""
    from runtime import tool_calls
    built = []

    def counted(*args):
        built.append(Pattern(*args))
        return built[-1]
    monkeypatch.setattr(jc, "Pattern", counted)
    tools = [{"type": "function", "function": {"name": f"t{i}", "parameters": {
        "type": "object", "properties": {"s": {"type": "string", "pattern": f"(a?){{{300 - i}}}$"}}}}}
        for i in range(40)]
    assert tool_calls.call_grammar(tools, None, "") is not None
    most = max(p.work for p in built)
    assert sum(p.work for p in built) <= jc.MAX_SCHEMA_PATTERN_WORK + most
    assert len(built) < 40
