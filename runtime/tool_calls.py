"""Tool calls in a model's reply: find them in the formats models are trained to write,
and hand them back in OpenAI's shape.

A chat template tells the model about the request's tools, but the model answers with
plain text: each model family writes its calls its own way. OpenAI clients (agent loops)
only look at `message.tool_calls`, so the server turns that text into calls:

- Hermes, Qwen 2.5 / Qwen 3, SmolLM3: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
  blocks, possibly after some text;
- Mistral: `[TOOL_CALLS]` then a JSON array of {"name", "arguments"}, or the newer
  `[TOOL_CALLS]name[ARGS]{...}`; `[TOOL_CALLS]` is a control token that our decoder drops,
  so a whole reply that is such an array counts too;
- Llama 3.1 / 3.2: the whole reply is `{"name": ..., "parameters": {...}}`, optionally after
  `<|python_tag|>` (also a control token, usually dropped);
- a bare whole-reply {"name", "arguments"} object (Qwen2.5-Coder-0.5B writes that);
- any of these inside a Markdown code fence (```json, ```xml or ```), as llama.cpp's
  Hermes parser takes them: Qwen2.5-Coder-0.5B fences about half of its calls;
- llama.cpp's "generic" format, which we ask for when the chat template cannot show the
  model its tools (runtime/chat_template.py puts them in the system text then): the whole
  reply is {"tool_call": {"name", "arguments"}}, {"tool_calls": [...]} or, for an answer
  to the user, {"response": "..."}.

Only the request's declared tool names make a call: a reply that merely is JSON stays
content. Anything that does not parse stays content too: a model's malformed call must
never fail the request. The {"response": ...} answer is unwrapped only when the caller
says which template wrote the prompt and it is one that gets the generic format (for
another model such a reply may be the JSON the user asked for).

The streaming side (`CallHold`, fed the reply piece by piece as it grows; `held_from`
gives the same answer for a whole reply at once) tells the server how much of the reply
so far could be the start of a call, so that it holds that text back instead of
streaming it as content.
"""
from __future__ import annotations

import bisect
import json
import uuid
from collections import deque
from dataclasses import dataclass

import regex

from runtime import json_constraint as jc

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
MISTRAL_CALLS, MISTRAL_ARGS = "[TOOL_CALLS]", "[ARGS]"
PYTHON_TAG = "<|python_tag|>"
# Texts after which the rest of a reply may be a call (see held_from).
MARKERS = (HERMES_OPEN, MISTRAL_CALLS, PYTHON_TAG)
# A whole reply that starts with one of these may be a bare JSON call (or array of calls).
JSON_STARTS = ("{", "[")

# Markdown code fences: a line of three or more backticks, then an info string on an
# opening one. Only fences of these info strings may hold a call.
FENCE = "```"
_FENCE_LINE = regex.compile(r"^[ \t]*(`{3,})[ \t]*([^\s`]*)[^`\n]*$", regex.M)  # (info: first word)
_CALL_FENCE_INFOS = ("", "json", "xml")

# llama.cpp's generic format: the keys of a whole-reply object.
GENERIC_CALL, GENERIC_CALLS, GENERIC_RESPONSE = "tool_call", "tool_calls", "response"

_decoder = json.JSONDecoder()


def uses_generic_format(template: str | None) -> bool:
    """Whether the model is shown its tools in llama.cpp's generic format: its chat
    template does not show them itself (runtime.chat_template.with_generic_tools).
    False for an unknown template ("" or None)."""
    if not template:
        return False
    from runtime.chat_template import tool_support  # (jinja2: loaded when first needed)
    return not tool_support(template).tools


def declared_names(tools: list | None) -> set:
    """The function names a request declares. OpenAI's shape is {"type": "function",
    "function": {"name": ...}}; a bare {"name": ...} is accepted as well, since the
    templates render either."""
    return {spec["name"] for spec in _specs(tools)}


def _specs(tools: list | None) -> list:
    """The function specs (dicts with a string 'name') of a request's tools."""
    out = []
    for t in tools or []:
        fn = t.get("function") if isinstance(t, dict) else None
        spec = fn if isinstance(fn, dict) else t
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            out.append(spec)
    return out


def _arguments_node(spec: dict, patterns):
    """A tool's `parameters` as a grammar node; any object when the schema uses something
    the constraint does not support (a call with unchecked arguments beats a refused
    request, and the client validates them anyway).

    Compiled as strict: arguments the tool does not list are allowed only if its schema
    says so (additionalProperties). A function's parameters are its signature, and small
    models, once allowed, add made-up ones ("country", "date") until max_tokens.
    `patterns`: the request's (jc.Patterns), which all its tools' schemas share."""
    params = spec.get("parameters")
    if params is None:
        return jc.any_object()
    try:
        node = jc.only_objects(jc.compile_schema(params, strict=True, patterns=patterns))
    except jc.SchemaError:
        node = None
    return node or jc.any_object()


def call_grammar(tools: list, names: set | None, template: str, answer: bool = False) -> tuple:
    """The start state of a constraint under which the reply is one call to one of `names`
    (None: any declared tool): {"name": NAME, "arguments": {...}} with the arguments
    following that tool's schema, bare, or in a Hermes <tool_call> block when the chat
    template shows the model that format. Both forms stay open because models differ:
    Qwen2.5-Coder-0.5B answers bare JSON although its template asks for the block.

    When the template cannot show tools, the prompt asked for llama.cpp's generic format,
    and the call is written in it: {"tool_call": {"name": NAME, "arguments": {...}}}
    (llama.cpp's grammar for tool_choice "required" without parallel calls). With
    `answer` (tool_choice "auto" there), {"response": TEXT} is allowed as well, as
    llama.cpp's generic grammar does: the model either calls or answers, in the JSON
    its prompt asked for (parse reads both back)."""
    calls, seen, patterns = [], set(), jc.Patterns()
    for spec in _specs(tools):
        name = spec["name"]
        if (names is not None and name not in names) or name in seen:
            continue
        seen.add(name)
        calls.append(jc.object_node({"name": jc.const_node(name),
                                     "arguments": _arguments_node(spec, patterns)}))
    if not calls:
        raise ValueError("no tool to call")
    node = calls[0] if len(calls) == 1 else jc.Choice(tuple(calls))
    if uses_generic_format(template):
        call = jc.object_node({GENERIC_CALL: node})
        if not answer:
            return jc.value_grammar(call)
        reply = jc.object_node({GENERIC_RESPONSE: jc.compile_schema({"type": "string"})})
        return jc.value_grammar(jc.Choice((call, reply)))
    wrappers = [("", "")]
    if HERMES_OPEN in (template or ""):
        wrappers.append((HERMES_OPEN + "\n", "\n" + HERMES_CLOSE))
    return jc.wrapped_grammar(node, wrappers)


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def _openai_call(obj, names: set) -> dict | None:
    """{"name", "arguments" | "parameters"} -> an OpenAI tool call, or None if obj is not
    a call to a declared tool. OpenAI's `arguments` is a JSON string: an object is
    serialised (keeping non-ASCII as is), a string is taken to be that JSON already."""
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, dict):
        args = json.dumps(args, ensure_ascii=False)
    elif not isinstance(args, str):
        return None
    return {"id": new_call_id(), "type": "function",
            "function": {"name": obj["name"], "arguments": args}}


def _json_value(text: str):
    """The one JSON value `text` is (surrounding whitespace allowed), or None."""
    try:
        value, end = _decoder.raw_decode(text.strip())
    except (ValueError, RecursionError):
        return None
    return value if end == len(text.strip()) else None


def _calls_of(value, names: set) -> list:
    """A call object or a list of them -> calls; [] unless every element is a call, so a
    JSON answer that mentions a tool's name is not half taken for a call."""
    items = value if isinstance(value, list) else [value]
    calls = [_openai_call(v, names) for v in items]
    return calls if calls and all(calls) else []


def _content(*parts: str) -> str | None:
    text = "".join(parts).strip()
    return text or None


def _parse_hermes(text: str, names: set) -> tuple[str | None, list]:
    """<tool_call> blocks anywhere in the text. The last one may lack its closing tag
    (the model reached end-of-generation right after the JSON). A block that is not a
    valid call stays in the content, as written."""
    kept, calls = [], []
    pos = 0
    while (start := text.find(HERMES_OPEN, pos)) >= 0:
        body_at = start + len(HERMES_OPEN)
        close = text.find(HERMES_CLOSE, body_at)
        body_end = close if close >= 0 else len(text)
        end = body_end + len(HERMES_CLOSE) if close >= 0 else body_end
        call = _openai_call(_json_value(text[body_at:body_end]), names)
        kept.append(text[pos:start] if call else text[pos:end])
        if call:
            calls.append(call)
        pos = end
    kept.append(text[pos:])
    return (_content(*kept), calls) if calls else (text, [])


def _parse_mistral(text: str, names: set) -> tuple[str | None, list]:
    """[TOOL_CALLS] followed by a JSON array, or by name[ARGS]{...} (one per marker)."""
    before, _, rest = text.partition(MISTRAL_CALLS)
    calls = _calls_of(_json_value(rest), names)
    if not calls and MISTRAL_ARGS in rest:
        calls = _mistral_named(rest.split(MISTRAL_CALLS), names)
    return (_content(before), calls) if calls else (text, [])


def _mistral_named(segments: list, names: set) -> list:
    calls = []
    for seg in segments:
        name, sep, args = seg.partition(MISTRAL_ARGS)
        value = _json_value(args)
        ok = sep and isinstance(value, dict)
        call = _openai_call({"name": name.strip(), "arguments": value}, names) if ok else None
        if call is None:
            return []
        calls.append(call)
    return calls


def _parse_whole(text: str, names: set, after: str = "") -> tuple[str | None, list]:
    """The reply (from `after` on, if given) is one JSON call or an array of calls."""
    before, _, rest = text.partition(after) if after else ("", "", text)
    calls = _calls_of(_json_value(rest), names)
    return (_content(before), calls) if calls else (text, [])


def _parse_generic(text: str, names: set, response: bool) -> tuple[str | None, list] | None:
    """The whole reply in llama.cpp's generic format -> (content, calls); None if it is
    not. {"tool_call": call} or {"tool_calls": [calls]}, each call to a declared tool
    (its "id", if the model wrote one, is replaced by ours), with the "content" key our
    rendering of past calls adds beside them, if any, as the content. With `response`:
    {"response": ...} is an answer, its text the content (a value that is not a string
    as JSON, as llama.cpp does)."""
    value = _json_value(text)
    if not isinstance(value, dict):
        return None
    if GENERIC_CALLS in value or GENERIC_CALL in value:
        items = value[GENERIC_CALLS] if GENERIC_CALLS in value else [value[GENERIC_CALL]]
        calls = _calls_of(items, names) if isinstance(items, list) else []
        if not calls:
            return None
        content = value.get("content")
        return (_content(content) if isinstance(content, str) else None), calls
    if response and set(value) == {GENERIC_RESPONSE}:  # an object with more is not that
        answer = value[GENERIC_RESPONSE]
        return (answer if isinstance(answer, str)
                else json.dumps(answer, ensure_ascii=False, indent=2)), []
    return None


def parse(text: str, tools: list | None, template: str | None = None) -> tuple[str | None, list]:
    """(content, calls) of a reply. With calls: the content is the text around them,
    stripped, or None when nothing is left. Without: the text unchanged and [] (but see
    {"response": ...} below).

    `template` is the chat template that rendered the prompt (None: unknown). For a
    template with a tool format of its own, every format above but the generic one is
    read, as before the generic one existed. For a template that got the generic format,
    all of them, and a {"response": ...} reply comes back as its text. For an unknown
    template, all of them too, but {"response": ...} stays as written: the calls name
    declared tools, so reading them costs nothing, while the answer may be JSON the user
    asked for. The server passes the template in effect (api.template_in_effect)."""
    names = declared_names(tools)
    if not names:
        return text, []
    generic = None if not template else uses_generic_format(template)
    if FENCE in text:
        content, calls = _parse_fenced(text, names, generic)
        if calls:
            return content, calls
    return _parse_unfenced(text, names, generic)


@dataclass
class _Fence:
    start: int        # where the opening fence's line begins
    body_start: int   # just after that line's newline
    body_end: int     # where the closing fence's line begins (the end of the text if open)
    end: int          # just after the closing fence (the end of the text if open)
    info: str         # the opening fence's info string, e.g. "json"
    closed: bool
    info_done: bool   # the opening line has its newline (its info string is complete)


def _fences(text: str) -> list[_Fence]:
    """The text's code fences, in order: an opening fence line, then the next line that is
    a bare fence of at least as many backticks closes it (so a JSON string holding ``` is
    no end: it cannot hold a raw newline). The last one may still be open."""
    out, open_ = [], None
    for m in _FENCE_LINE.finditer(text):
        ticks, info = m.group(1), m.group(2)
        if open_ is None:
            done = m.end() < len(text)  # the line's newline has arrived
            open_ = (m, ticks, info, done)
        elif not info and len(ticks) >= len(open_[1]):
            o = open_[0]
            out.append(_Fence(o.start(), o.end() + 1, m.start(), m.end(), open_[2].lower(), True, True))
            open_ = None
    if open_ is not None:
        o = open_[0]
        out.append(_Fence(o.start(), min(o.end() + 1, len(text)), len(text), len(text),
                          open_[2].lower(), False, open_[3]))
    return out


def _fence_calls(text: str, f: _Fence, names: set, generic: bool | None) -> list:
    """The calls a closed fence holds, its whole body being calls; [] if it is not so."""
    if not f.closed or f.info not in _CALL_FENCE_INFOS:
        return []
    inner, found = _parse_unfenced(text[f.body_start:f.body_end], names, generic)
    return found if inner is None else []


def _parse_fenced(text: str, names: set, generic: bool | None) -> tuple[str | None, list]:
    """Code fences whose whole body is calls (in any format but the generic {"response"})
    become calls; the text outside them is read as a reply of its own and is the content.
    A call written both bare and fenced (the model repeating itself) counts once."""
    kept, calls, pos = [], [], 0
    for f in _fences(text):
        found = _fence_calls(text, f, names, generic)
        if found:
            kept.append(text[pos:f.start])
            calls += found
            pos = f.end
    if not calls:
        return text, []
    kept.append(text[pos:])
    content, before = _parse_unfenced("".join(kept), names, generic)
    if not before:
        return _content(*kept), calls
    seen = {(c["function"]["name"], c["function"]["arguments"]) for c in before}
    return content, before + [c for c in calls
                              if (c["function"]["name"], c["function"]["arguments"]) not in seen]


def _parse_unfenced(text: str, names: set, generic: bool | None) -> tuple[str | None, list]:
    if generic is not False and text.lstrip().startswith("{"):
        found = _parse_generic(text, names, response=generic is True)
        if found is not None:
            return found
    if HERMES_OPEN in text:
        return _parse_hermes(text, names)
    if MISTRAL_CALLS in text:
        return _parse_mistral(text, names)
    if PYTHON_TAG in text:
        return _parse_whole(text, names, after=PYTHON_TAG)
    if text.lstrip().startswith(JSON_STARTS):
        return _parse_whole(text, names)
    return text, []


# ---- streaming --------------------------------------------------------------------------

MARKER_MAX = max(map(len, MARKERS))
MARKER_HEADS = frozenset(m[0] for m in MARKERS)


def _marker_prefix_len(text: str) -> int:
    """Length of the longest end of `text` that a marker starts with: the next token may
    complete the marker (as engine.py's stop strings are held back)."""
    tail = text[-(MARKER_MAX - 1):]
    for i, ch in enumerate(tail):  # the longest end first
        if ch in MARKER_HEADS and any(m.startswith(tail[i:]) for m in MARKERS):
            return len(tail) - i
    return 0


def held_from(text: str, tools: list | None = None) -> int:
    """Where, in the reply so far, a tool call could begin: text before this index can
    stream as content, the rest must wait for the end of the reply. len(text) when
    nothing needs to wait. `tools`: the request's, which tell a closed code fence that
    holds a call from one that does not (without them, any closed JSON fence waits).

    The whitespace just before a possible call waits too, so that a streamed reply's
    content ends where parse() strips it.

    It reads the whole text: a server that streams should push each new piece into one
    CallHold instead, which reads each character a bounded number of times over the
    whole reply (calling this at every token is quadratic in the reply's length)."""
    return CallHold(tools).push(text)


# _FenceLine phases: leading blanks, the backticks, blanks after them, the info string's
# first word, the rest of the line; SHORT: one or two backticks and blanks (a line that
# may be becoming a fence); DEAD: the line is no fence, whatever follows.
LEAD, TICKS, GAP, WORD, REST, SHORT, DEAD = range(7)
_BLANK = " \t"
_SPACE = regex.compile(r"\s")  # what _FENCE_LINE's \s matches
INFO_KEEP = 5  # more than the longest of _CALL_FENCE_INFOS: a longer word is none of them


class _FenceLine:
    """The reply's last line, read piece by piece as _FENCE_LINE reads a whole line:
    blanks, three or more backticks, blanks, an info string's first word (`word`, its
    first INFO_KEEP characters), and no backtick after them. Each character is looked at
    once at most, and none once the line cannot be a fence."""
    __slots__ = ("phase", "ticks", "word")

    def __init__(self):
        self.phase, self.ticks, self.word = LEAD, 0, ""

    def feed(self, seg: str) -> None:
        """Read more of the line (seg holds no newline)."""
        i, n = 0, len(seg)
        while i < n and self.phase != DEAD:
            ph, ch = self.phase, seg[i]
            if ph == REST:  # only a backtick matters now
                if seg.find("`", i) >= 0:
                    self.phase = DEAD
                return
            if ph == LEAD:
                if ch == "`":
                    self.phase, self.ticks = TICKS, 1
                elif ch not in _BLANK:
                    self.phase = DEAD
            elif ph == TICKS:
                if ch == "`":
                    self.ticks += 1
                elif self.ticks < 3:
                    self.phase = SHORT if ch in _BLANK else DEAD
                else:
                    self.phase = GAP
                    continue  # ch is read again, after the backticks
            elif ph == SHORT:
                if ch not in _BLANK:
                    self.phase = DEAD
            elif ch == "`":  # GAP or WORD: a backtick after the fence's own
                self.phase = DEAD
            elif ph == GAP:
                if ch not in _BLANK:
                    if _SPACE.match(ch):
                        self.phase = REST
                    else:
                        self.phase, self.word = WORD, ch
            elif _SPACE.match(ch):  # WORD
                self.phase = REST
            else:
                self.word += ch
                if len(self.word) == INFO_KEEP:  # too long to be a call fence's: where
                    self.phase = REST            # it ends changes nothing any more
            i += 1

    @property
    def is_fence(self) -> bool:
        return self.phase in (GAP, WORD, REST) or (self.phase == TICKS and self.ticks >= 3)

    @property
    def info(self) -> str:
        """The info string as _fences keeps it (lower case); exact up to INFO_KEEP."""
        return self.word.lower()

    @property
    def short(self) -> bool:
        """One or two backticks and blanks: `last.strip(" \t") in ("`", "``")`."""
        return self.phase == SHORT or (self.phase == TICKS and self.ticks < 3)


@dataclass
class _OpenFence:
    """A code fence opened by a complete line, not closed yet."""
    start: int        # where its opening line begins
    ns_end: int       # len(reply[:start].rstrip())
    ticks: int
    info: str
    body_start: int   # just after the opening line's newline
    body_ns: int | None = None   # the body's first non-whitespace character, once it came
    head: str = ""    # the body from body_ns on, up to len(HERMES_OPEN) characters


class CallHold:
    """held_from, for a reply that grows: push() each new piece, and get where a call
    could begin in the reply so far (as held_from of the whole of it says).

    held_from reads the whole reply, so calling it at every token of a streamed reply
    was quadratic in the reply's length. This reads each new character a bounded number
    of times: first occurrences of the markers, the reply's first non-whitespace
    character, the last non-whitespace ones, and the code fences line by line. A closed
    fence's body is parsed once (once more while its closing line is still the last one).
    The reply is kept in its pieces, never joined whole; `_slice` cuts the parts that are
    read again."""

    def __init__(self, tools: list | None = None):
        self.names = declared_names(tools) if tools is not None else None
        self.n = 0                    # characters so far
        self._pieces: list[str] = []
        self._starts: list[int] = []  # where each piece begins
        self.first = ""               # the first non-whitespace character, once it came
        self.marker_at: int | None = None    # the first marker, and the text's end before
        self.marker_ns_end = 0               # it without whitespace
        self.ns_end = 0               # len(reply.rstrip())
        self.recent_ns: deque = deque(maxlen=MARKER_MAX)  # last non-whitespace positions
        self.line_start = 0           # where the last (unfinished) line begins
        self.line = _FenceLine()
        self.line_ns_end = 0          # len(reply[:line_start].rstrip())
        self.open: _OpenFence | None = None
        self.fixed: tuple | None = None   # (start, ns_end): the first closed call fence
        self._closing: tuple = (-1, False)  # (line start, verdict) of a last closing line

    def _slice(self, a: int, b: int) -> str:
        """reply[a:b], from the pieces: costs b - a and a binary search."""
        out = []
        i = bisect.bisect_right(self._starts, a) - 1
        while a < b:
            at, piece = self._starts[i], self._pieces[i]
            out.append(piece[a - at:b - at])
            a, i = at + len(piece), i + 1
        return "".join(out)

    def push(self, piece: str) -> int:
        start = self.n
        if piece:
            self._pieces.append(piece)
            self._starts.append(start)
            self.n += len(piece)
            ns_end = self.ns_end
            self._see_text(piece, start)
            self._see_markers(start)
            if self.fixed is None:
                self._see_lines(piece, start, ns_end)
        return self._held()

    def _see_text(self, piece: str, start: int) -> None:
        if not self.first:
            rest = piece.lstrip()
            self.first = rest[:1]
        r = len(piece.rstrip())
        if r:
            self.ns_end = start + r
        found, i = [], r - 1   # the last MARKER_MAX non-whitespace positions, newest first
        while i >= 0 and len(found) < MARKER_MAX:
            if not piece[i].isspace():
                found.append(start + i)
            i -= 1
        self.recent_ns.extend(reversed(found))

    def _see_markers(self, start: int) -> None:
        """A marker's first occurrence, in the new text and the end of the old."""
        lo = max(0, start - MARKER_MAX + 1)
        window = self._slice(lo, self.n)
        hits = [i for i in (window.find(m) for m in MARKERS) if i >= 0]
        if hits and (self.marker_at is None or lo + min(hits) < self.marker_at):
            self.marker_at = lo + min(hits)
            self.marker_ns_end = len(self._slice(0, self.marker_at).rstrip())  # at most 3 times

    def _see_lines(self, piece: str, start: int, ns_end: int) -> None:
        """Feed the piece to the fence lines, line by line. ns_end: len(reply.rstrip())
        before the piece, kept up to date through it for each line's start."""
        pos = 0
        while self.fixed is None:
            nl = piece.find("\n", pos)
            seg = piece[pos:len(piece) if nl < 0 else nl]
            self.line.feed(seg)
            if self.open is not None:
                self._see_body(self.open, seg, start + pos)
            if nl < 0:
                return
            r = len(seg.rstrip())
            if r:
                ns_end = start + pos + r
            self._end_line(start + nl)
            self.line_start, self.line, self.line_ns_end = start + nl + 1, _FenceLine(), ns_end
            pos = nl + 1

    def _see_body(self, o: _OpenFence, seg: str, at: int) -> None:
        """The open fence's first non-whitespace character and the text after it."""
        if o.body_ns is None:
            lead = len(seg) - len(seg.lstrip())
            if lead < len(seg):
                o.body_ns = at + lead
        if o.body_ns is not None and len(o.head) < len(HERMES_OPEN):
            o.head = self._slice(o.body_ns, min(o.body_ns + len(HERMES_OPEN), self.n))

    def _end_line(self, end: int) -> None:
        """The line from line_start to the newline at `end` is complete."""
        line = self.line
        if not line.is_fence:
            return
        o = self.open
        if o is None:
            self.open = _OpenFence(self.line_start, self.line_ns_end, line.ticks, line.info, end + 1)
        elif not line.word and line.ticks >= o.ticks:
            if self._holds_call(o, self.line_start):
                self.fixed = (o.start, o.ns_end)
            self.open = None

    def _holds_call(self, o: _OpenFence, body_end: int) -> bool:
        """Does the fence, closed at body_end, hold calls? With the tools: its whole body
        is calls to them. Without: its body starts as a call would (JSON, <tool_call>)."""
        if o.info not in _CALL_FENCE_INFOS:
            return False
        body = self._slice(o.body_start, body_end)
        if self.names is not None:
            inner, found = _parse_unfenced(body, self.names, None)
            return bool(found) and inner is None
        return body.lstrip().startswith((*JSON_STARTS, HERMES_OPEN))

    def _fence_at(self) -> tuple | None:
        """(start, ns_end) of the first code fence that holds a call, or may still turn
        out to; None if there is none. A closed fence holds calls or not; an open one may
        while its info string can still become json or xml and its body is empty or
        starts as a call does. After an open fence that is no call, nothing is a fence
        (what follows is inside it); with no fence open, a last line of one or two
        backticks may be becoming one."""
        if self.fixed is not None:
            return self.fixed
        line, here = self.line, (self.line_start, self.line_ns_end)
        o = self.open
        if o is None:
            if line.is_fence:  # an opening line whose info string may still grow
                return here if any(i.startswith(line.info) for i in _CALL_FENCE_INFOS) else None
            return here if line.short else None
        if line.is_fence and not line.word and line.ticks >= o.ticks:  # the last line closes it
            if self._closing[0] != self.line_start:
                self._closing = (self.line_start, self._holds_call(o, self.line_start))
            return (o.start, o.ns_end) if self._closing[1] else None
        if o.info not in _CALL_FENCE_INFOS:
            return None
        if o.body_ns is None or o.head.startswith(JSON_STARTS) or HERMES_OPEN.startswith(o.head):
            return o.start, o.ns_end
        return None

    def _held(self) -> int:
        if not self.first or self.first in JSON_STARTS:
            return 0  # (so far) a whole-reply JSON call
        found = [] if self.marker_at is None else [(self.marker_at, self.marker_ns_end)]
        fence = self._fence_at()
        if fence is not None:
            found.append(fence)
        if found:
            return min(found)[1]
        cut = self.n - _marker_prefix_len(self._slice(max(0, self.n - MARKER_MAX), self.n))
        for p in reversed(self.recent_ns):
            if p < cut:
                return p + 1
        return 0
