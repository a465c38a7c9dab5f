"""Chat templates rendered exactly as transformers' ``apply_chat_template`` renders them,
inside a sandbox that a hostile template cannot escape, hang or use to flood memory.

The environment is the one transformers builds: jinja2's ``ImmutableSandboxedEnvironment``
with ``trim_blocks``, ``lstrip_blocks``, the ``loopcontrols`` extension, a ``{% generation %}``
tag, and the globals ``raise_exception`` and ``strftime_now`` plus a ``tojson`` filter that
keeps non-ASCII text. The template sees ``messages``, ``tools``, ``documents``,
``add_generation_prompt``, ``bos_token``, ``eos_token`` and any extra keyword arguments.

On top of jinja's sandbox (which blocks ``_``-attributes, function internals and
mutation of lists/dicts, and caps ``range()`` at 100000 items) we add limits, because the
sandbox alone lets ``'x' * 10**10`` or a loop nest of 10**10 iterations run:

* a deadline, checked at every attribute/item lookup, call, filter, operator, output
  expression and loop iteration (an AST rewrite adds a tick to each loop body), so a
  render stops soon after its time limit without needing a thread;
* size caps applied *before* the value is built: string/list repetition, ``+``, ``~``,
  ``%``/``format`` widths, ``center``/``indent``/``replace``/``join``-style filters and str
  methods, big integers; and a budget on all output produced, including output captured
  by ``{% set %}`` blocks and macros;
* a cap on call depth, so recursive macros fail cleanly long before Python's own limit;
* on compiling: a size cap, caps on block nesting and on the number of tags, and a budget
  of work (profiler events).

Every failure surfaces as ``TemplateError``.
"""
from __future__ import annotations

import datetime
import functools
import json
import os
import re
import stat
import string
import sys
import threading
import time
import types
from collections import abc
from dataclasses import dataclass
from typing import Any, Callable, Collection

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, generate_lorem_ipsum
from jinja2.visitor import NodeTransformer


class TemplateError(ValueError):
    """A chat template could not be compiled or rendered. ``template_message`` holds the
    template's own message when it called ``raise_exception``."""

    def __init__(self, message: str, template_message: str | None = None):
        super().__init__(message)
        self.template_message = template_message


@dataclass(frozen=True)
class Limits:
    """Bounds on one render. ``max_output_chars`` is raised automatically to 4x the size
    of the input (messages, tools, extra), since output legitimately scales with input."""

    time_s: float = 2.0
    max_output_chars: int = 1_000_000
    max_call_depth: int = 64
    max_template_chars: int = 128 * 1024
    max_int_bits: int = 16_384
    # Compiling is bounded by work, not time, so the model's own template never fails on a
    # busy machine: ~50 profiler events per byte for real templates (Qwen3's 4 KB: 0.23M).
    max_compile_events: int = 3_000_000
    compile_time_s: float = 10.0  # a backstop for time spent in C (Python's compile())


DEFAULT_LIMITS = Limits()

# The wall clock strftime_now reads; tests replace it or pass clock= to render().
now: Callable[[], datetime.datetime] = datetime.datetime.now

# Output may be re-emitted (a macro's output is counted inside the macro and again by its
# caller), so the budget on everything emitted is a few times the final-output cap.
_EMIT_FACTOR = 8
# Item counts (slices, batch padding): the same bound the sandbox puts on range().
_MAX_ITEMS = 100_000
_MAX_JSON_INDENT = 64


class _LimitExceeded(Exception):
    """Raised inside a render when a limit is hit; turned into TemplateError."""


class _RaisedByTemplate(Exception):
    """What raise_exception() raises; carries the template's message."""


class _NotAtCompileTime(Exception):
    """Refuses jinja's compile-time constant folding of filters (see _guard_filter)."""


@dataclass
class _RenderState:
    deadline: float
    time_s: float
    max_chars: int
    max_emit_chars: int
    max_depth: int
    max_int_bits: int
    clock: Callable[[], datetime.datetime]
    emitted_chars: int = 0
    built_chars: int = 0
    depth: int = 0

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise _LimitExceeded(f"chat template took longer than {self.time_s:g} s")

    def check_size(self, n_chars: int, what: str) -> None:
        if n_chars > self.max_chars:
            raise _LimitExceeded(
                f"chat template tried to build {what} of over {self.max_chars} characters")

    def check_result(self, result: Any) -> None:
        """Counts every string/list an operation builds. Each is capped on its own, but
        many of them kept alive at once (``range(100000)|map('center', 900000)|list``)
        would still flood memory; the running total is what bounds that."""
        if isinstance(result, (str, bytes, list, tuple)):
            self.check_size(len(result), "a value")
            self.built_chars += len(result)
            if self.built_chars > self.max_emit_chars:
                raise _LimitExceeded(f"chat template built over {self.max_emit_chars} "
                                     "characters of intermediate values")


_local = threading.local()


def _active() -> _RenderState | None:
    return getattr(_local, "state", None)


# --------------------------------------------------------------------------- size estimates

_EXIT = object()  # marks, on _weight's stack, the end of a container's children


def _children(v: Any) -> Any:
    if isinstance(v, (list, tuple, set, frozenset, abc.KeysView, abc.ValuesView)):
        return v
    if isinstance(v, (dict, abc.Mapping, abc.ItemsView)):
        return list(v.items())
    if isinstance(v, Namespace):
        return list(v._Namespace__attrs.items())  # type: ignore[attr-defined]
    return None


def _flat_weight(children: Any) -> int | None:
    """The weight of a container holding only scalars of one kind, summed in C (the
    common big case); None otherwise."""
    kinds = set(map(type, children))
    if kinds <= {str}:
        return 2 * len(children) + sum(map(len, children))  # quotes around each
    if kinds <= {int, bool}:
        return len(children) + sum(map(int.bit_length, children)) // 3
    if kinds <= {float, type(None), bool}:
        return len(children)
    return None


def _weight(value: Any, budget: int, st: "_RenderState | None" = None) -> int:
    """Roughly how many characters str(value) takes. Stops counting once past budget, so
    it costs O(budget) at most; a structure that contains itself counts each cycle once
    (repr prints it as '[...]'), while shared references count every time, as repr does."""
    total = 0
    on_path: set[int] = set()
    stack: list[Any] = [value]
    while stack:
        v = stack.pop()
        if v is _EXIT:
            on_path.discard(stack.pop())
            continue
        if isinstance(v, (str, bytes, bytearray)):
            total += len(v) + 2
        elif isinstance(v, int):
            total += v.bit_length() // 3 + 3
        elif v is None or isinstance(v, float):
            total += 3
        else:
            children = _children(v)
            if children is None:
                total += 8
            elif id(v) in on_path:
                total += 5
            else:
                total += 2 + 2 * len(children)
                if total + 2 * len(children) > budget:  # every item weighs 2 or more
                    return total + 2 * len(children)
                flat = _flat_weight(children)
                if flat is not None:
                    total += flat
                    if total > budget:
                        return total
                    continue
                on_path.add(id(v))
                stack += (id(v), _EXIT)
                # Scalars are counted inline: pushing each one costs twice as much.
                for c in children:
                    kind = type(c)
                    if kind is str:
                        total += len(c) + 2
                    elif kind is int:
                        total += c.bit_length() // 3 + 3
                    elif kind is float or kind is bool or c is None:
                        total += 3
                    else:
                        stack.append(c)
                if st is not None:
                    st.tick()
        if total > budget:
            return total
    return total


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _ints_in(args: Any) -> list[int]:
    if isinstance(args, abc.Mapping):
        args = list(args.values())
    elif not isinstance(args, (tuple, list)):
        args = [args]
    return [a for a in args if isinstance(a, int)]


def _check_percent_format(st: _RenderState, fmt: str, args: Any) -> None:
    """'%0999999999d' % 1 would allocate a gigabyte: check widths before formatting."""
    for m in _PERCENT_SPEC.finditer(fmt):
        for num in (m.group(1), m.group(2)):
            if num == "*":
                for a in _ints_in(args):
                    st.check_size(abs(a), "a formatted field")
            elif num:
                st.check_size(int(num), "a formatted field")


def _check_brace_format(st: _RenderState, fmt: str, args: Any, kwargs: Any) -> None:
    """Same for str.format: '{:>9999999999}'.format(1)."""
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # the real format call reports the malformed string
    for _literal, _field, spec, _conv in parsed:
        if not spec:
            continue
        for num in re.findall(r"\d+", spec):
            st.check_size(int(num), "a formatted field")
        if "{" in spec:  # width taken from an argument
            for a in _ints_in(list(args) + list(_ints_in(kwargs))):
                st.check_size(abs(a), "a formatted field")


def _check_str_method(st: _RenderState, owner: Any, name: str, args: tuple, kwargs: dict) -> None:
    """Checks for the C methods of str/bytes that can build a result much bigger than
    their inputs."""
    if not isinstance(owner, (str, bytes)):
        return
    n = len(owner)
    if name in ("center", "ljust", "rjust", "zfill") and args and isinstance(args[0], int):
        st.check_size(args[0], "a padded string")
    elif name == "expandtabs":
        tab = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(tab, int):
            st.check_size(n + owner.count("\t" if isinstance(owner, str) else b"\t") * tab,
                          "an expanded string")
    elif name == "replace" and len(args) >= 2:
        old, new = args[0], args[1]
        if isinstance(old, (str, bytes)) and isinstance(new, (str, bytes)):
            hits = (n + 1) if not old else owner.count(old)
            st.check_size(n + hits * max(0, len(new) - len(old)), "a replaced string")
    elif name == "join" and args:
        items = args[0]
        if isinstance(items, (list, tuple)):
            st.check_size(_weight(items, st.max_chars, st) + len(items) * n, "a joined string")
    elif name == "translate" and args and isinstance(args[0], abc.Mapping):
        longest = max((len(v) for v in args[0].values() if isinstance(v, (str, bytes))),
                      default=1)
        st.check_size(n * max(1, longest), "a translated string")


# --------------------------------------------------------------------------- the environment

class _ChatSandbox(ImmutableSandboxedEnvironment):
    """The transformers sandbox plus deadline/size/depth checks at every hook jinja
    offers: operators, calls, attribute and item lookups."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context, operator, left, right):
        st = _active()
        if st is not None:
            st.tick()
            self._check_binop(st, operator, left, right)
        result = self.binop_table[operator](left, right)
        if st is not None:
            st.check_result(result)
        return result

    @staticmethod
    def _check_binop(st: _RenderState, op: str, left: Any, right: Any) -> None:
        seq_types = (str, bytes, list, tuple)
        if op == "*":
            if isinstance(left, int) and isinstance(right, seq_types):
                left, right = right, left
            if isinstance(left, seq_types) and isinstance(right, int):
                if right > 0:
                    per_copy = (len(left) if isinstance(left, (str, bytes))
                                else _weight(left, st.max_chars, st))
                    st.check_size(per_copy * right, "a repeated value")
                    st.check_size(right if left else 0, "a repeated value")
            elif isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > st.max_int_bits:
                    raise _LimitExceeded("chat template tried to build a huge integer")
        elif op == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0:
                if max(1, left.bit_length()) * right > st.max_int_bits and abs(left) > 1:
                    raise _LimitExceeded("chat template tried to build a huge integer")
        elif op == "+":
            if isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
                st.check_size(_weight(left, st.max_chars, st) + _weight(right, st.max_chars, st),
                              "a list")
            elif isinstance(left, (str, bytes)) and isinstance(right, (str, bytes)):
                st.check_size(len(left) + len(right), "a string")
        elif op == "%" and isinstance(left, str):
            _check_percent_format(st, left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's convention)
        st = _active()
        if st is None:
            return super().call(__context, __obj, *args, **kwargs)
        st.tick()
        if isinstance(__obj, types.BuiltinMethodType):
            _check_str_method(st, __obj.__self__, __obj.__name__, args, kwargs)
            # C methods take sizes as ints (int.to_bytes(10**10), str.ljust...).
            for a in list(args) + list(kwargs.values()):
                if isinstance(a, int) and abs(a) > st.max_chars:
                    raise _LimitExceeded(
                        f"chat template passed {a} to {__obj.__name__}(), over the size limit")
        if st.depth >= st.max_depth:
            raise _LimitExceeded(
                f"chat template calls nested deeper than {st.max_depth} (runaway recursion?)")
        st.depth += 1
        try:
            result = super().call(__context, __obj, *args, **kwargs)
        finally:
            st.depth -= 1
        st.check_result(result)
        return result

    def getattr(self, obj, attribute):
        st = _active()
        if st is not None:
            st.tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj, argument):
        st = _active()
        if st is not None:
            st.tick()
        return super().getitem(obj, argument)

    def unsafe_undefined(self, obj, attribute):
        # jinja returns an Undefined that fails only when used, and renders as '' when
        # printed; we fail at the access itself, so probing a template can learn nothing.
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def wrap_str_format(self, value):
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__
        is_map = value.__name__ == "format_map"

        @functools.wraps(wrapped)
        def checked(*args, **kwargs):
            st = _active()
            if st is not None:
                st.tick()
                if is_map:
                    _check_brace_format(st, fmt, (), args[0] if args else {})
                else:
                    _check_brace_format(st, fmt, args, kwargs)
            return wrapped(*args, **kwargs)

        return checked

    def _parse(self, source, name, filename):
        tree = super()._parse(source, name, filename)
        tree = _Instrument().visit(tree)
        tree.set_environment(self)
        return tree


class _Instrument(NodeTransformer):
    """Rewrites the parsed template so the sandbox sees what jinja does not route through
    its hooks: loop iterations, ``~`` concatenation and every ``{{ }}`` output."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        tick = nodes.ExprStmt(_filter_node("chatfile_tick", nodes.Const(0), [], node.lineno),
                              lineno=node.lineno)
        node.body.insert(0, tick)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _filter_node("chatfile_concat", node.nodes[0], node.nodes[1:], node.lineno)

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        node.nodes = [
            child if isinstance(child, nodes.TemplateData)
            else _filter_node("chatfile_emit", child, [], child.lineno)
            for child in node.nodes
        ]
        return node


def _filter_node(name: str, value: nodes.Expr, args: list, lineno: int) -> nodes.Filter:
    return nodes.Filter(value, name, list(args), [], None, None, lineno=lineno)


# Filters wired straight into the compiled code by _Instrument (direct calls, not through
# the sandbox's call(), so they are cheap and cannot be shadowed by template variables).

def _tick_filter(_unused: Any) -> None:
    st = _active()
    if st is None:
        raise _NotAtCompileTime()
    st.tick()


def _concat_filter(*values: Any) -> str:
    st = _active()
    if st is None:
        raise _NotAtCompileTime()
    st.tick()
    total = 0
    for v in values:
        total += len(v) if isinstance(v, str) else _weight(v, st.max_chars, st)
        st.check_size(total, "a string")
    result = "".join(map(str, values))  # what jinja's str_join does
    st.check_result(result)
    return result


def _emit_filter(value: Any) -> Any:
    st = _active()
    if st is None:
        raise _NotAtCompileTime()
    st.tick()
    st.emitted_chars += len(value) if isinstance(value, str) else _weight(value, st.max_chars, st)
    if st.emitted_chars > st.max_emit_chars:
        raise _LimitExceeded(
            f"chat template output exceeds {st.max_emit_chars} characters in total")
    return value


# --------------------------------------------------------------------------- filter guards

def _arg(args: tuple, kwargs: dict, pos: int, name: str, default: Any) -> Any:
    if len(args) > pos:
        return args[pos]
    return kwargs.get(name, default)


def _pre_center(st, args, kwargs):
    width = _arg(args, kwargs, 1, "width", 80)
    if isinstance(width, int):
        st.check_size(width, "a padded string")


def _pre_indent(st, args, kwargs):
    text = str(args[0])
    width = _arg(args, kwargs, 1, "width", 4)
    per_line = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    st.check_size(len(text) + (text.count("\n") + 1) * per_line, "an indented string")


def _pre_format(st, args, kwargs):
    _check_percent_format(st, str(args[0]), kwargs or args[1:])


def _pre_replace(st, args, kwargs):
    text = str(args[0]) if not isinstance(args[0], str) else args[0]
    old = str(_arg(args, kwargs, 1, "old", ""))
    new = str(_arg(args, kwargs, 2, "new", ""))
    hits = (len(text) + 1) if not old else text.count(old)
    st.check_size(len(text) + hits * max(0, len(new) - len(old)), "a replaced string")


def _pre_wordwrap(st, args, kwargs):
    text = str(args[0])
    width = _arg(args, kwargs, 1, "width", 79)
    wrap = _arg(args, kwargs, 3, "wrapstring", None) or "\n"
    lines = len(text) // max(1, width if isinstance(width, int) else 1) + text.count("\n") + 1
    st.check_size(len(text) + lines * len(str(wrap)), "a wrapped string")


def _pre_count(pos: int, name: str):
    def check(st, args, kwargs):
        n = _arg(args, kwargs, pos, name, 0)
        if isinstance(n, int) and n > _MAX_ITEMS:
            raise _LimitExceeded(f"chat template asked for {n} {name}, over {_MAX_ITEMS}")
    return check


def _pre_value_size(st, args, kwargs):
    # Filters whose output is a few times their input at most (escaping, repr, json).
    st.check_size(_weight(args[0], st.max_chars, st), "a value")


def _pre_tojson(st, args, kwargs):
    _pre_value_size(st, args, kwargs)
    indent = _arg(args, kwargs, 2, "indent", None)
    size = len(indent) if isinstance(indent, str) else indent if isinstance(indent, int) else 0
    if size > _MAX_JSON_INDENT:
        raise _LimitExceeded(f"tojson indent {size} is over {_MAX_JSON_INDENT}")


# name -> check(state, args without the pass_* argument, kwargs)
_FILTER_PRECHECKS: dict[str, Callable] = {
    "center": _pre_center,
    "indent": _pre_indent,
    "format": _pre_format,
    "replace": _pre_replace,
    "wordwrap": _pre_wordwrap,
    "slice": _pre_count(1, "slices"),
    "batch": _pre_count(1, "linecount"),
    "tojson": _pre_tojson,
    **{name: _pre_value_size for name in (
        "string", "pprint", "escape", "e", "forceescape", "urlencode", "urlize",
        "striptags", "title", "capitalize", "upper", "lower", "trim", "truncate", "xmlattr")},
}


def _guard_filter(name: str, func: Callable) -> Callable:
    """Wraps a filter with the deadline tick and size checks. Also refuses to run at
    compile time: jinja folds filters on constant arguments into the compiled code, which
    would let ``'x'|center(10**6)`` repeated in a template bloat the compiled module."""
    skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0
    precheck = _FILTER_PRECHECKS.get(name)
    is_join = name == "join"

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        st = _active()
        if st is None:
            raise _NotAtCompileTime()
        st.tick()
        if is_join and len(args) > skip:
            # do_join accepts any iterable: materialize it to measure before joining.
            items = list(args[skip])
            sep = str(_arg(args[skip:], kwargs, 1, "d", ""))
            st.check_size(_weight(items, st.max_chars, st) + len(items) * len(sep),
                          "a joined string")
            args = args[:skip] + (items,) + args[skip + 1:]
        elif precheck is not None and len(args) > skip:
            precheck(st, args[skip:], kwargs)
        result = func(*args, **kwargs)
        st.check_result(result)
        return result

    return guarded


# --------------------------------------------------------------------------- globals

def _raise_exception(message: Any) -> None:
    raise _RaisedByTemplate(str(message))


def _strftime_now(fmt: str) -> str:
    st = _active()
    clock = st.clock if st is not None else now
    return clock().strftime(fmt)


def _tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # transformers replaces jinja's tojson (which HTML-escapes) with plain json.dumps.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:  # noqa: A002
    if not all(isinstance(v, int) for v in (n, min, max)) or n > 100 or max > 1000:
        raise _LimitExceeded("lipsum() asked for too much text")
    return generate_lorem_ipsum(n, html, min, max)


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: transformers marks assistant text with it
    for training masks; when rendering a prompt it only outputs its body. Built as a call
    block like transformers' so its scoping is identical."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_generation_support")
        return nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _generation_support(self, caller):
        return caller()


@functools.lru_cache(maxsize=1)
def _environment() -> _ChatSandbox:
    env = _ChatSandbox(trim_blocks=True, lstrip_blocks=True,
                       extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.filters = {name: _guard_filter(name, f) for name, f in env.filters.items()}
    env.filters.update(chatfile_tick=_tick_filter, chatfile_concat=_concat_filter,
                       chatfile_emit=_emit_filter)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["lipsum"] = _lipsum
    return env


# --------------------------------------------------------------------------- compile, render

def _template_line(exc: BaseException) -> int | None:
    """The template line an error came from: jinja rewrites tracebacks so frames of the
    compiled template carry the filename '<template>' and template line numbers."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _translate(exc: BaseException) -> TemplateError:
    if isinstance(exc, TemplateError):
        return exc
    if isinstance(exc, _LimitExceeded):
        return TemplateError(str(exc))
    if isinstance(exc, _RaisedByTemplate):
        return TemplateError(f"chat template error: {exc}", template_message=str(exc))
    if isinstance(exc, TemplateSyntaxError):
        return TemplateError(f"chat template syntax error on line {exc.lineno}: {exc.message}")
    line = _template_line(exc)
    where = f" (line {line})" if line else ""
    if isinstance(exc, SecurityError):
        return TemplateError(f"template tried to access something unsafe{where}: {exc}")
    if isinstance(exc, RecursionError):
        return TemplateError("chat template nests too deeply")
    if isinstance(exc, MemoryError):
        return TemplateError("chat template ran out of memory")
    if isinstance(exc, jinja2.TemplateError):
        return TemplateError(f"chat template error{where}: {exc}")
    return TemplateError(f"chat template failed{where}: {type(exc).__name__}: {exc}")


MAX_BLOCK_DEPTH = 32
MAX_TAGS = 2000  # block and expression tags in one template
_BLOCK_TAGS = frozenset({"for", "if", "macro", "call", "filter", "with", "block",
                         "generation", "autoescape", "set"})


def _check_nesting(source: str) -> None:
    """Refuses deeply nested blocks before compiling: Python's compiler, which jinja's
    output goes through, spends seconds on such code (uninterruptibly) and then fails
    anyway. Real chat templates nest a handful of blocks deep."""
    depth = 0
    n_tags = 0
    statement: list[tuple[str, str]] = []
    in_block = False
    for lineno, kind, value in _environment().lex(source):
        if kind in ("block_begin", "variable_begin"):
            # Real templates have under a hundred tags; thousands of them only make the
            # compiler (uninterruptible C) spend seconds.
            n_tags += 1
            if n_tags > MAX_TAGS:
                raise TemplateError(f"chat template has more than {MAX_TAGS} tags (line {lineno})")
        if kind == "block_begin":
            in_block, statement = True, []
        elif kind == "block_end" and in_block:
            in_block = False
            if not statement or statement[0][0] != "name":
                continue
            tag = statement[0][1]
            if tag.startswith("end"):
                depth -= 1
            elif tag in _BLOCK_TAGS and not (tag == "set" and ("operator", "=") in statement):
                depth += 1
                if depth > MAX_BLOCK_DEPTH:
                    raise TemplateError(f"chat template nests blocks more than "
                                        f"{MAX_BLOCK_DEPTH} deep (line {lineno})")
        elif in_block and kind != "whitespace":
            statement.append((kind, value))


class _CompileTimeout(BaseException):
    """Raised by the profile hook when compiling costs too much. A BaseException because
    jinja's constant folder swallows Exception, and the hook fires only once."""


@functools.lru_cache(maxsize=32)
def _compile_cached(source: str, max_events: int, time_s: float) -> jinja2.Template:
    # Compiling is jinja's Python code (lexer, parser, code generator) plus Python's own
    # compile(); a hundred KB of machine-made template takes tens of seconds. jinja has no
    # hooks there, so a profile function counts calls and checks the clock instead.
    deadline = time.monotonic() + time_s
    events = 0

    def count_work(frame, event, arg):
        nonlocal events
        events += 1
        if events & 0x3FF == 0 and (events > max_events or time.monotonic() > deadline):
            raise _CompileTimeout()

    if sys.getprofile() is not None:  # a profiler or debugger owns the hook: leave it be
        _check_nesting(source)
        return _environment().from_string(source)
    sys.setprofile(count_work)
    try:
        _check_nesting(source)
        return _environment().from_string(source)
    finally:
        sys.setprofile(None)


def compile_template(source: str, limits: Limits = DEFAULT_LIMITS) -> jinja2.Template:
    """Compiles (once per distinct string) or raises TemplateError."""
    if not isinstance(source, str):
        raise TemplateError(f"chat template must be a string, not {type(source).__name__}")
    if len(source) > limits.max_template_chars:
        raise TemplateError(f"chat template is {len(source)} characters, over the "
                            f"{limits.max_template_chars} limit")
    try:
        return _compile_cached(source, limits.max_compile_events, limits.compile_time_s)
    except _CompileTimeout:
        raise TemplateError("chat template is too costly to compile (over "
                            f"{limits.max_compile_events} steps or "
                            f"{limits.compile_time_s:g} s)") from None
    except SyntaxError as exc:  # Python's compiler on jinja's output, e.g. deep nesting
        raise TemplateError(f"chat template cannot be compiled: {exc.msg}") from None
    except Exception as exc:
        raise _translate(exc) from None


def render(template: str, messages: Any, *, add_generation_prompt: bool = True,
           bos_token: str = "", eos_token: str = "", tools: Any = None,
           clock: Callable[[], datetime.datetime] | None = None,
           limits: Limits = DEFAULT_LIMITS, generic_tools: bool = True,
           fold_system: bool = False, **extra: Any) -> str:
    """Renders ``template`` as transformers' apply_chat_template(tokenize=False) would.

    ``tools`` is passed even when None (templates test ``if tools`` / ``tools is none``),
    as is ``documents`` (None unless given in ``extra``). ``clock`` overrides the time
    ``strftime_now`` reads. Raises TemplateError on any failure.

    One exception, on by default (``generic_tools=False`` turns it off): where the
    template cannot show the request's tools, an assistant message's tool calls or a
    tool's result (see tool_support), those parts are written into the messages as
    llama.cpp's "generic" tool format does (see with_generic_tools), so the model still
    learns about its tools. Templates that render them get them exactly as transformers
    would pass them.

    ``fold_system=True`` (what the server and the terminal chat ask for): where the
    template has no system role, system text opens the next user turn (see
    fold_system_messages) instead of failing or being dropped.
    """
    compiled = compile_template(template, limits)
    if not isinstance(messages, (list, tuple)) or not all(
            isinstance(m, abc.Mapping) for m in messages):
        raise TemplateError("messages must be a list of {'role': ..., 'content': ...} dicts")
    if generic_tools:
        messages, tools = with_generic_tools(template, messages, tools)
    if fold_system:
        messages = fold_system_messages(template, messages)
    return _render_compiled(compiled, messages, tools=tools, extra=extra,
                            add_generation_prompt=add_generation_prompt, bos_token=bos_token,
                            eos_token=eos_token, clock=clock, limits=limits)


def _render_compiled(compiled: jinja2.Template, messages: Any, *, tools: Any, extra: dict,
                     add_generation_prompt: bool, bos_token: str, eos_token: str,
                     clock: Callable[[], datetime.datetime] | None, limits: Limits) -> str:
    context = dict(extra)
    context.setdefault("documents", None)
    context.update(messages=messages, tools=tools, add_generation_prompt=add_generation_prompt,
                   bos_token=bos_token, eos_token=eos_token)

    input_chars = _weight(context, 1 << 62)
    max_chars = max(limits.max_output_chars, 4 * input_chars)
    state = _RenderState(
        deadline=time.monotonic() + limits.time_s, time_s=limits.time_s,
        max_chars=max_chars, max_emit_chars=_EMIT_FACTOR * max_chars,
        max_depth=limits.max_call_depth, max_int_bits=limits.max_int_bits,
        clock=clock or now)

    previous = _active()
    _local.state = state
    chunks: list[str] = []
    total_chars = 0
    try:
        for chunk in compiled.generate(context):
            total_chars += len(chunk)
            if total_chars > max_chars:
                raise _LimitExceeded(f"chat template output exceeds {max_chars} characters")
            chunks.append(chunk)
            state.tick()
    except Exception as exc:
        raise _translate(exc) from None
    finally:
        _local.state = previous
    return "".join(chunks)


# --------------------------------------------------------------------------- files, fallbacks

MAX_TEMPLATE_FILE_BYTES = 1 << 20


def load_template_file(path: str | os.PathLike) -> str:
    """Reads a user's template override (UTF-8, a leading BOM dropped) and checks that it
    compiles. Raises TemplateError for a missing, unreadable, oversized or broken file,
    and for a FIFO or a device, whose read would wait until something writes to it."""
    try:
        info = os.stat(path)
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
            raise TemplateError(f"chat template file {path} is not a regular file (a pipe or "
                                f"a device); give a file that holds the template")
        size_bytes = info.st_size
        if size_bytes > MAX_TEMPLATE_FILE_BYTES:
            raise TemplateError(f"chat template file {path} is {size_bytes} bytes, over the "
                                f"{MAX_TEMPLATE_FILE_BYTES} byte limit")
        with open(path, "rb") as f:
            raw = f.read(MAX_TEMPLATE_FILE_BYTES + 1)
    except TemplateError:
        raise
    except FileNotFoundError:
        raise TemplateError(f"chat template file not found: {path}") from None
    except IsADirectoryError:
        raise TemplateError(f"chat template path is a directory: {path}") from None
    except OSError as exc:
        raise TemplateError(f"cannot read chat template file {path}: {exc.strerror or exc}") \
            from None
    try:
        source = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TemplateError(f"chat template file {path} is not UTF-8 "
                            f"(bad byte at offset {exc.start})") from None
    source = source.removeprefix("\ufeff")
    if not source.strip():  # it would read as "no template given" and the model's be used
        raise TemplateError(f"chat template file {path} is empty; give one that holds a "
                            f"template, or leave --chat-template out to use the model's own")
    try:
        compile_template(source)
    except TemplateError as exc:
        raise TemplateError(f"{path}: {exc}") from None
    return source


# The text of a message: a string, or the text parts of an OpenAI-style content list.
_CONTENT_MACRO = """\
{%- macro content_text(content) -%}
{%- if content is string -%}{{ content }}
{%- elif content is iterable and content is not mapping -%}
{%- for part in content if part is mapping and part.get('type') == 'text' -%}{{ part.get('text', '') }}{%- endfor -%}
{%- elif content is not none -%}{{ content }}
{%- endif -%}
{%- endmacro -%}
"""

# Gemma: no system role; the system text opens the first user turn, as Gemma's own
# templates do. The assistant is called "model".
GEMMA_TEMPLATE = _CONTENT_MACRO + """\
{{- bos_token -}}
{%- set ns = namespace(prefix='') -%}
{%- if messages and messages[0]['role'] == 'system' -%}
{%- set ns.prefix = content_text(messages[0]['content']) | trim + '\n\n' -%}
{%- set turns = messages[1:] -%}
{%- else -%}
{%- set turns = messages -%}
{%- endif -%}
{%- for message in turns -%}
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
{%- if ns.prefix and role != 'model' -%}
{{- '<start_of_turn>' + role + '\n' + ns.prefix -}}{%- set ns.prefix = '' -%}
{%- else -%}
{{- '<start_of_turn>' + role + '\n' -}}
{%- endif -%}
{{- content_text(message['content']) | trim + '<end_of_turn>\n' -}}
{%- endfor -%}
{%- if ns.prefix -%}
{{- '<start_of_turn>user\n' + ns.prefix | trim + '<end_of_turn>\n' -}}
{%- endif -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}
"""

LLAMA3_TEMPLATE = _CONTENT_MACRO + """\
{{- bos_token -}}
{%- for message in messages -%}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' -}}
{{- content_text(message['content']) | trim + '<|eot_id|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}{%- endif -%}
"""

CHATML_TEMPLATE = _CONTENT_MACRO + """\
{%- for message in messages -%}
{{- '<|im_start|>' + message['role'] + '\n' + content_text(message['content']) + '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}
"""


def fallback_template(arch: str, token_texts: Collection[str]) -> str:
    """The built-in template for a GGUF without ``tokenizer.chat_template``, chosen from
    the architecture name and the special tokens in its vocabulary."""
    vocab = token_texts if isinstance(token_texts, (set, frozenset, dict)) else set(token_texts)
    if (arch or "").lower().startswith("gemma") or "<start_of_turn>" in vocab:
        return GEMMA_TEMPLATE
    if "<|start_header_id|>" in vocab:
        return LLAMA3_TEMPLATE
    return CHATML_TEMPLATE


# --------------------------------------------------------------------------- tools a template cannot show
#
# Many chat templates never read `tools` (Gemma's, Phi-3's, our built-in ones above): a
# request's tools would reach the template and vanish, and the model could never call
# one. For those, we do what llama.cpp's server does for a template without native tool
# support (its "generic" chat format, with minja's polyfills): the tools go into the
# system message as JSON, with an instruction to answer in JSON, either
#     {"tool_call": {"name": ..., "arguments": {...}}}    (a call), or
#     {"response": "..."}                                  (a reply to the user),
# and the parts of a conversation the template cannot render are written as text in
# that same format: an assistant message's tool calls become its content, as the JSON
# the model was asked to write; a tool's result (role "tool") becomes a user message
# {"tool_response": {"tool": name, "content": ..., "tool_call_id": ...}} (several results
# in a row: one user message). A template without a system role gets that system text at
# the start of the first user turn. A template that shows the tools itself is left alone
# entirely: it has a format of its own (Qwen's <tool_call>, Llama's, Mistral's, ...).
# runtime/tool_calls.py reads the format back from the reply (parse) and constrains a
# forced call to it (call_grammar).
#
# Which parts a template handles is decided per template (tool_support), as minja does it:
# by rendering small probe conversations and looking for their marker texts in the output.
# Our built-in templates are known to handle none; a template that writes a tool format's
# own tokens (`<tool_call>`, `[TOOL_CALLS]`, ...) is taken to handle them all. A probe only
# runs when the source names the thing at all (`tools`, `tool_calls`, a 'tool' role
# literal), and a probe that fails counts as "handled", so a template that may handle
# tools keeps exactly the rendering it had.

@dataclass(frozen=True)
class ToolSupport:
    """What a chat template renders of a conversation's tool parts."""
    tools: bool         # the request's tools (the model is shown them)
    tool_calls: bool    # an assistant message's `tool_calls`
    tool_results: bool  # a message with role "tool", as a tool's result
    system_role: bool   # a system message's text (as its own turn or folded into one)


NATIVE_TOOLS = ToolSupport(tools=True, tool_calls=True, tool_results=True, system_role=True)
# Ours print `message['role']` as is (`<start_of_turn>tool`, which is no Gemma role) and
# drop tool_calls; Gemma's folds the system text into the first user turn itself.
_BUILTIN_SUPPORT = ToolSupport(tools=False, tool_calls=False, tool_results=False,
                               system_role=True)

# Texts of the tool formats runtime/tool_calls.py reads (Hermes/Qwen, Mistral, Llama 3.x).
# A template that writes one of them has a tool format of its own, whatever it does with
# `tools` (llama.cpp, too, picks its Hermes format by "<tool_call>" in the template).
TOOL_FORMAT_MARKERS = ("<tool_call>", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "<|python_tag|>")

_PROBE_TOOL = "chatfile_probe_tool"
_PROBE_ARG = "chatfile_probe_argument"
_PROBE_RESULT = "chatfile probe result"
_PROBE_SYSTEM = "chatfile probe system text"
# Probes of a real template take milliseconds; a slow one counts as failed (= handled).
_PROBE_LIMITS = Limits(time_s=0.5)
_MENTIONS_TOOLS = re.compile(r"\btools\b")
_MENTIONS_TOOL_ROLE = re.compile(r"""(['"])tool\1""")


def _probe_messages() -> tuple:
    user = {"role": "user", "content": "Hi"}
    system = {"role": "system", "content": _PROBE_SYSTEM}
    tool = {"type": "function", "function": {
        "name": _PROBE_TOOL, "description": "A tool.",
        "parameters": {"type": "object", "properties": {_PROBE_ARG: {"type": "string"}},
                       "required": [_PROBE_ARG]}}}
    # The id has the 9 alphanumeric characters Mistral's templates insist on.
    call = {"role": "assistant", "content": "", "tool_calls": [{
        "id": "chatfile1", "type": "function",
        "function": {"name": _PROBE_TOOL, "arguments": {_PROBE_ARG: "x"}}}]}
    result = {"role": "tool", "tool_call_id": "chatfile1", "name": _PROBE_TOOL,
              "content": _PROBE_RESULT}
    return user, system, tool, call, result


@functools.lru_cache(maxsize=32)
def tool_support(template: str) -> ToolSupport:
    """Which tool parts ``template`` renders (cached per template). Never raises."""
    if template in (GEMMA_TEMPLATE, LLAMA3_TEMPLATE, CHATML_TEMPLATE):
        return _BUILTIN_SUPPORT
    if any(marker in template for marker in TOOL_FORMAT_MARKERS):
        return NATIVE_TOOLS  # it writes a tool format's own tokens: it knows one
    try:
        compiled = compile_template(template)
    except TemplateError:
        return NATIVE_TOOLS  # it renders nothing at all: leave the messages alone

    refused = []  # the template's own raise_exception() messages

    def probe(messages: list, tools: Any = None) -> str | None:
        try:
            return _render_compiled(compiled, messages, tools=tools, extra={},
                                    add_generation_prompt=True, bos_token="", eos_token="",
                                    clock=None, limits=_PROBE_LIMITS)
        except TemplateError as exc:
            if exc.template_message is not None:
                refused.append(exc.template_message)
            return None

    user, system, tool, call, result = _probe_messages()
    shows_tools = False
    if _MENTIONS_TOOLS.search(template):
        outs = [probe(m, [tool]) for m in ([user], [system, user])]
        if any(o is not None and _PROBE_TOOL in o for o in outs):
            shows_tools = True
        elif all(o is None for o in outs):
            # Fails with tools. If it raised itself and renders without them, it refuses
            # tools (some templates raise "tools are not supported"): describe them
            # ourselves. Otherwise (a limit, a bug) we cannot tell: leave it as it is.
            shows_tools = not (refused and probe([user]) is not None)
    renders_calls = False
    if "tool_calls" in template:
        out = probe([user, call])
        renders_calls = out is None or _PROBE_ARG in out
    renders_results = False
    if _MENTIONS_TOOL_ROLE.search(template):
        out = probe([user, call if renders_calls else _generic_call_message(call), result])
        renders_results = out is None or _PROBE_RESULT in out
    out = probe([system, user])
    return ToolSupport(tools=shows_tools, tool_calls=renders_calls,
                       tool_results=renders_results,
                       system_role=out is not None and _PROBE_SYSTEM in out)


def _text(content: Any) -> str:
    """A message's content as text (OpenAI's content parts joined, as the templates do)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        return "".join(str(p.get("text", "")) for p in content
                       if isinstance(p, abc.Mapping) and p.get("type") == "text")
    return str(content)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _plain(value: Any) -> Any:
    """Mappings (the API's ToolArguments, say) as plain dicts, for json.dumps."""
    if isinstance(value, abc.Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def generic_tool_prompt(tools: Any) -> str:
    """The system text that shows a model without a tool format its tools, and the JSON
    it answers in (llama.cpp's generic format: `tool_call` or `response`). The tools are
    a JSON array, one tool per line: llama.cpp indents it by 2, which costs a model with
    a small context (and our CPU prefill) a quarter more tokens for the same text."""
    listing = "[\n" + ",\n".join(_json(t) for t in _plain(list(tools))) + "\n]"
    return ("You can call any of these tools to satisfy the user's requests (a tool's "
            "\"parameters\" is the JSON Schema of its arguments):\n" + listing + "\n\n"
            "Respond in JSON format, either with `tool_call` (a request to call a tool) or "
            "with `response` (your reply to the user's request), for example:\n"
            '{"tool_call": {"name": "tool_name", "arguments": {"arg1": "some_value"}}}\n'
            '{"response": "Your reply."}')


def generic_calls_text(calls: list, content: Any = None) -> str:
    """Calls ({"name", "arguments"} each) as the model writes them in the generic
    format: {"tool_call": {...}} for one, {"tool_calls": [...]} for several; an
    assistant's text beside them goes in "content"."""
    obj: dict = {"tool_call": calls[0]} if len(calls) == 1 else {"tool_calls": calls}
    text = _text(content)
    if text.strip():
        obj["content"] = text
    return _json(obj)


def _calls(message: abc.Mapping) -> list:
    """A message's tool_calls, if it has a list of them."""
    calls = message.get("tool_calls")
    return list(calls) if isinstance(calls, (list, tuple)) else []


def _generic_call_message(message: abc.Mapping) -> dict:
    calls = []
    for c in _calls(message):
        fn = c.get("function") if isinstance(c, abc.Mapping) else None
        fn = fn if isinstance(fn, abc.Mapping) else c
        if not isinstance(fn, abc.Mapping):
            continue
        args = fn.get("arguments", {})
        if isinstance(args, str):  # OpenAI's JSON text: shown as the object it is
            try:
                args = json.loads(args)
            except (ValueError, RecursionError):
                pass
        calls.append({"name": fn.get("name"), "arguments": _plain(args)})
    out = {k: v for k, v in message.items() if k != "tool_calls"}
    if calls:
        out["content"] = generic_calls_text(calls, message.get("content"))
    return out


def _generic_result_text(message: abc.Mapping, names_by_id: dict) -> str:
    res: dict = {}
    call_id = message.get("tool_call_id")
    name = message.get("name") or (names_by_id.get(call_id) if isinstance(call_id, str) else None)
    if isinstance(name, str):
        res["tool"] = name
    res["content"] = _text(message.get("content"))
    if message.get("tool_call_id") is not None:
        res["tool_call_id"] = message.get("tool_call_id")
    return _json({"tool_response": res})


def _with_system_text(messages: list, text: str, system_role: bool) -> list:
    """`text` added to the system message (after its own text), or as a new first system
    message; for a template without a system role, at the start of the first user turn."""
    if messages and messages[0].get("role") == "system":
        own = _text(messages[0].get("content"))
        messages = [{**messages[0], "content": own + "\n\n" + text if own else text},
                    *messages[1:]]
    else:
        messages = [{"role": "system", "content": text}, *messages]
    if system_role:
        return messages
    system, rest = _text(messages[0]["content"]), messages[1:]
    if rest and rest[0].get("role") == "user":
        user_text = _text(rest[0].get("content"))
        rest[0] = {**rest[0], "content": system + "\n\n" + user_text if user_text else system}
    else:
        rest.insert(0, {"role": "user", "content": system})
    return rest


def fold_system_messages(template: str, messages: list) -> list:
    """For a template without a system role (Gemma 2's refuses one, others drop it): each
    system message's text opens the next user turn, as llama.cpp's server does (minja's
    system-role polyfill) and as our own Gemma template does. Otherwise `--system`, or a
    system prompt set on the page, would make every request fail with such a model."""
    if not any(m.get("role") == "system" for m in messages):
        return messages
    if tool_support(template).system_role:
        return messages
    out: list = []
    pending: list[str] = []  # system text waiting for the next user turn
    at = 0  # where in `out` that text stood
    for m in messages:
        if m.get("role") == "system":
            text = _text(m.get("content"))
            if text:
                at = at if pending else len(out)
                pending.append(text)
            continue
        if pending and m.get("role") == "user":
            own = _text(m.get("content"))
            m = {**m, "content": "\n\n".join(pending + ([own] if own else []))}
            pending = []
        out.append(m)
    if pending:  # no user turn after it: the text is one, where the system message was
        out.insert(at, {"role": "user", "content": "\n\n".join(pending)})
    return out


def with_generic_tools(template: str, messages: Any, tools: Any) -> tuple[list, Any]:
    """(messages, tools) to render ``template`` with: as given when the template renders
    every tool part in them; otherwise the parts it cannot render written in llama.cpp's
    generic format (see the comment above ToolSupport), and ``tools`` None once they are
    in the system text."""
    has_tools = isinstance(tools, (list, tuple)) and len(tools) > 0
    has_calls = any(_calls(m) for m in messages)
    has_results = any(m.get("role") == "tool" for m in messages)
    if not (has_tools or has_calls or has_results):
        return messages, tools  # the common case: no probing, nothing to do
    support = tool_support(template)
    if support.tools:
        # A template that shows tools has a tool format of its own: it gets every tool
        # part as it always did, even those it drops (Granite 3.3 prints no tool_calls),
        # so that no text in our format is mixed into its own.
        return messages, tools
    fill_tools = has_tools
    fill_calls = has_calls and not support.tool_calls
    fill_results = has_results and not support.tool_results
    if not (fill_tools or fill_calls or fill_results):
        return messages, tools
    out: list = []
    names_by_id: dict = {}
    after_result = False
    for m in messages:
        for c in _calls(m):
            fn = c.get("function") if isinstance(c, abc.Mapping) else None
            if isinstance(fn, abc.Mapping) and isinstance(c.get("id"), str):
                names_by_id[c["id"]] = fn.get("name")
        if fill_calls and _calls(m):
            m = _generic_call_message(m)
        if fill_results and m.get("role") == "tool":
            text = _generic_result_text(m, names_by_id)
            if after_result:  # several results in a row: one user turn, so roles alternate
                out[-1] = {"role": "user", "content": out[-1]["content"] + "\n\n" + text}
            else:
                out.append({"role": "user", "content": text})
            after_result = True
            continue
        if after_result and m.get("role") == "user":
            # The user speaks right after a tool's result: one user turn, so that roles
            # still alternate (Gemma's own templates refuse two user turns in a row).
            text = _text(m.get("content"))
            out[-1] = {**m, "content": out[-1]["content"] + ("\n\n" + text if text else "")}
            after_result = False
            continue
        after_result = False
        out.append(m)
    if fill_tools:
        out = _with_system_text(out, generic_tool_prompt(tools), support.system_role)
        tools = None
    return out, tools
