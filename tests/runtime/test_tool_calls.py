"""runtime.tool_calls.parse on replies written the way each model family writes its calls,
and held_from, which decides what a streamed reply may send before it ends.

The inputs are hand-written in each family's format (as its chat template asks for it);
the expected calls are the names and arguments written in them. The last tests are about
llama.cpp's generic format, which models whose template cannot show tools are asked for.
"""
import json
import re
from pathlib import Path

import pytest

from runtime.tool_calls import held_from, parse

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
             "type": "object", "properties": {"city": {"type": "string"}}}}},
         {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]


def calls_of(text, tools=TOOLS):
    """(content, [(name, arguments as an object)]), checking each call's OpenAI shape."""
    content, calls = parse(text, tools)
    out = []
    for c in calls:
        assert set(c) == {"id", "type", "function"} and c["type"] == "function"
        assert re.fullmatch(r"call_[0-9a-f]{24}", c["id"])
        assert set(c["function"]) == {"name", "arguments"}
        assert isinstance(c["function"]["arguments"], str)
        out.append((c["function"]["name"], json.loads(c["function"]["arguments"])))
    return content, out


def calls_of_t(text, template):
    """calls_of, for a reply to a prompt rendered by `template` (None: unknown)."""
    content, calls = parse(text, TOOLS, template)
    assert all(set(c) == {"id", "type", "function"} for c in calls)
    return content, [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


PARIS = ("get_weather", {"city": "Paris"})


@pytest.mark.parametrize("text", [
    # Hermes / Qwen 2.5 / Qwen 3 / SmolLM3
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    # Mistral, the JSON-array form, and with the [TOOL_CALLS] control token dropped
    '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]',
    '[{"name": "get_weather", "arguments": {"city": "Paris"}}]',
    # Mistral's newer form
    '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}',
    # Llama 3.1 / 3.2, with and without <|python_tag|>
    '{"name": "get_weather", "parameters": {"city": "Paris"}}',
    '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
    # a bare object with "arguments" (Qwen2.5-Coder-0.5B), whitespace around it
    '\n {"name": "get_weather", "arguments": {"city": "Paris"}} \n',
    # in a code fence, as Qwen2.5-Coder-0.5B writes half of its calls (llama.cpp's
    # Hermes parser takes ```json / ```xml fences too), and once bare then fenced again
    '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
    '```\n[{"name": "get_weather", "arguments": {"city": "Paris"}}]\n```\n',
    '```xml\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n```',
    '{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
    '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
])
def test_each_format_gives_one_call_and_no_content(text):
    assert calls_of(text) == (None, [PARIS])


def test_several_calls_keep_their_order():
    hermes = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
              '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>')
    mistral = ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, '
               '{"name": "get_time", "arguments": {"zone": "CET"}}]')
    newer = '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{"zone": "CET"}'
    for text in (hermes, mistral, newer):
        assert calls_of(text) == (None, [PARIS, ("get_time", {"zone": "CET"})]), text
    ids = [c["id"] for c in parse(hermes, TOOLS)[1]]
    assert len(set(ids)) == 2


def test_text_before_a_call_is_the_content():
    text = ('I will look it up.\n\n<tool_call>\n{"name": "get_weather", "arguments": '
            '{"city": "Paris"}}\n</tool_call>')
    assert calls_of(text) == ("I will look it up.", [PARIS])
    text = 'Checking.[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]'
    assert calls_of(text) == ("Checking.", [PARIS])
    # Qwen 3 thinks first: the thought stays in the content
    text = ('<think>\nThe user wants weather.\n</think>\n\n<tool_call>\n{"name": "get_weather", '
            '"arguments": {"city": "Paris"}}\n</tool_call>')
    assert calls_of(text) == ("<think>\nThe user wants weather.\n</think>", [PARIS])


def test_a_last_block_without_its_closing_tag_still_counts():
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
    assert calls_of(text) == (None, [PARIS])


@pytest.mark.parametrize("text", [
    '<tool_call>\n{"name": "delete_files", "arguments": {"path": "/"}}\n</tool_call>',
    '{"name": "delete_files", "arguments": {}}',
    '[TOOL_CALLS][{"name": "delete_files", "arguments": {}}]',
    '[TOOL_CALLS]delete_files[ARGS]{}',
    # JSON that is an answer, not a call
    '{"city": "Paris", "temperature": 21}',
    '[1, 2, 3]',
    # one of two is not a call: the array is not taken apart
    '[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "nope", "arguments": {}}]',
    # a call followed by more text is not a whole-reply call
    '{"name": "get_weather", "arguments": {"city": "Paris"}} and then some',
    'The weather in Paris is nice; call get_weather if you like.',
    '',
])
def test_no_call_leaves_the_text_unchanged(text):
    assert parse(text, TOOLS) == (text, [])


def test_without_declared_tools_nothing_is_a_call():
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert parse(text, None) == (text, [])
    assert parse(text, []) == (text, [])
    # tools given as bare {"name": ...} objects count as declared too
    assert calls_of(text, [{"name": "get_weather"}]) == (None, [PARIS])


@pytest.mark.parametrize("text", [
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"\n</tool_call>',
    '<tool_call>\nnot json at all\n</tool_call>',
    '<tool_call>\n{"name": "get_weather", "arguments": [1]}\n</tool_call>',
    '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": ',
    '[TOOL_CALLS]get_weather[ARGS]{"city": ',
    '<|python_tag|>{"name": "get_weather", "parameters": ',
    '{"name": "get_weather", "arguments": {"city": "Paris"}',
])
def test_malformed_calls_stay_content(text):
    assert parse(text, TOOLS) == (text, [])


def test_a_malformed_block_stays_while_a_good_one_is_taken():
    bad = '<tool_call>\n{"name": "get_weather", "arguments": {\n</tool_call>'
    good = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    assert calls_of(bad + "\n" + good) == (bad, [("get_time", {})])


def test_arguments_as_a_string_are_kept_and_as_an_object_serialised():
    as_string = '{"name": "get_weather", "arguments": "{\\"city\\":\\"Paris\\"}"}'
    assert parse(as_string, TOOLS)[1][0]["function"]["arguments"] == '{"city":"Paris"}'
    as_object = '{"name": "get_weather", "arguments": {"city":"Paris"}}'
    assert parse(as_object, TOOLS)[1][0]["function"]["arguments"] == json.dumps({"city": "Paris"})
    # no arguments at all: a call without arguments
    assert calls_of('{"name": "get_time"}') == (None, [("get_time", {})])


def test_non_ascii_arguments_are_kept_as_written():
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich 東京"}}\n</tool_call>'
    content, calls = parse(text, TOOLS)
    assert calls[0]["function"]["arguments"] == '{"city": "Zürich 東京"}'
    escaped = '{"name": "get_weather", "arguments": {"city": "Z\\u00fcrich"}}'
    assert parse(escaped, TOOLS)[1][0]["function"]["arguments"] == '{"city": "Zürich"}'


# ---- streaming: what may be sent before the reply ends -----------------------------------

@pytest.mark.parametrize("text, sendable", [
    ("Hello there", "Hello there"),
    ("Hello there ", "Hello there"),             # the space may come before a call
    ("Let me check.\n<tool", "Let me check."),   # may become <tool_call>
    ("Let me check. <tool_call>\n{\"na", "Let me check."),
    ("a < b", "a < b"),                          # "< b" can't begin a marker
    ("x [TOOL", "x"),
    ("x <|python", "x"),
    ("x [TOOL_CALLS] anything after", "x"),
    ("   ", ""),                                  # may precede a whole-reply JSON call
    ('  {"name": "get_', ""),
    ("[1, 2", ""),
    ("Use {braces} here", "Use {braces} here"),  # not the first character
    # a code fence may hold a call until its body shows it does not
    ("Sure:\n```json\n{\"na", "Sure:"),
    ("Sure:\n```", "Sure:"),
    ("Sure:\n``", "Sure:"),
    ("Sure:\n```python\nprint(1)\n", "Sure:\n```python\nprint(1)"),
    ("Sure:\n```\nls -l\n", "Sure:\n```\nls -l"),
    ("See:\n```python\nx = 1\n```\nDone.", "See:\n```python\nx = 1\n```\nDone."),
])
def test_held_from(text, sendable):
    assert text[:held_from(text)] == sendable


def test_streaming_by_held_from_gives_parse_of_the_whole_reply():
    # What the server does: send up to held_from as the reply grows, parse the rest at
    # the end. Content sent plus content parsed must equal the whole reply's content.
    for text in ('Sure.\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
                 'Plain answer with <b>tags</b> and [links] that never call.',
                 '{"name": "get_weather", "arguments": {"city": "Paris"}}',
                 'Checking.\n```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
                 'Code:\n```python\nprint("{x}")\n```\nand JSON:\n```json\n{"a": [1]}\n```\nbye',
                 # a closing fence is not an opening one (found by a review)
                 'Run:\n```python\nx=1\n```\n```json\n{"name": "get_time", "arguments": {"a": 1}}\n```',
                 '```python\nx=1\n```\n{"name": "get_time", "arguments": {}}\n```bash\nls\n```'):
        for tools in (TOOLS, None):  # the server passes the tools; without, more waits
            sent = 0
            for i in range(1, len(text) + 1):
                sent = max(sent, held_from(text[:i], tools))
            content, calls = parse(text[sent:], TOOLS)
            whole_content, whole_calls = parse(text, TOOLS)
            assert (text[:sent] + (content or "")) == (whole_content or ""), (text, tools)
            assert [c["function"] for c in calls] == [c["function"] for c in whole_calls]


# ---- llama.cpp's generic format (templates that cannot show tools) ----------------------

GEMMA = "gemma"  # stands for a template without tools: the built-in Gemma one


def _template(name):
    from runtime import chat_template as ct
    if name == GEMMA:
        return ct.GEMMA_TEMPLATE
    return (Path(__file__).resolve().parents[1] / "fixtures" / "templates" / name).read_text()


QWEN = "Qwen-Qwen2.5-7B-Instruct.jinja"
GENERIC_ONE = '{"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}'
GENERIC_TWO = ('{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "1"},'
               ' {"name": "get_time", "arguments": {"zone": "CET"}}]}')


@pytest.mark.parametrize("template", [None, GEMMA])
def test_generic_calls_are_calls(template):
    tpl = template and _template(template)
    assert calls_of_t(GENERIC_ONE, tpl) == (None, [PARIS])
    assert calls_of_t("\n" + GENERIC_ONE + " \n", tpl) == (None, [PARIS])
    assert calls_of_t(GENERIC_TWO, tpl) == (None, [PARIS, ("get_time", {"zone": "CET"})])
    # our rendering of an assistant's text beside its call (chat_template.generic_calls_text)
    with_text = '{"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}, "content": "On it."}'
    assert calls_of_t(with_text, tpl) == ("On it.", [PARIS])


@pytest.mark.parametrize("text", [
    '{"tool_call": {"name": "delete_files", "arguments": {}}}',            # not declared
    '{"tool_calls": [{"name": "get_weather", "arguments": {}}, {"name": "nope"}]}',
    '{"tool_calls": {"name": "get_weather", "arguments": {}}}',            # not a list
    '{"tool_call": {"name": "get_weather", "arguments": [1]}}',
    '{"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}',  # unfinished
    '{"tool_call": {"name": "get_weather"}} and more',
])
def test_generic_non_calls_stay_content(text):
    for template in (None, _template(GEMMA)):
        assert parse(text, TOOLS, template) == (text, [])


def test_a_generic_response_is_the_content_only_for_a_generic_template():
    for text, content in [('{"response": "It is sunny."}', "It is sunny."),
                          (' {"response": ""} ', ""),
                          ('{"response": {"temp": 21}}', '{\n  "temp": 21\n}')]:
        assert parse(text, TOOLS, _template(GEMMA)) == (content, [])
        # Unknown template, or one with its own tool format: JSON the user may have asked for.
        assert parse(text, TOOLS) == (text, [])
        assert parse(text, TOOLS, _template(QWEN)) == (text, [])
    # An object with more than the answer in it is not the generic answer: it stays JSON.
    text = '{"response": "x", "other": 1}'
    assert parse(text, TOOLS, _template(GEMMA)) == (text, [])


def test_a_template_with_its_own_format_gets_exactly_its_formats():
    qwen = _template(QWEN)
    assert parse(GENERIC_ONE, TOOLS, qwen) == (GENERIC_ONE, [])
    hermes = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    bare = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    for text in (hermes, bare):
        assert calls_of_t(text, qwen) == calls_of_t(text, None) == (None, [PARIS])
    # and a generic template still reads the other formats (a model may write them anyway)
    assert calls_of_t(bare, _template(GEMMA)) == (None, [PARIS])


def test_streaming_a_generic_reply_holds_it_whole():
    # A generic reply starts with "{": nothing of it streams before it is parsed.
    for text in (GENERIC_ONE, '{"response": "Hi"}'):
        assert all(held_from(text[:i]) == 0 for i in range(1, len(text) + 1))


def test_a_forced_call_follows_the_templates_format():
    from runtime import json_constraint as jc
    from runtime.tool_calls import call_grammar, uses_generic_format
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
             {"type": "function", "function": {"name": "get_time", "parameters": {
                 "type": "object", "properties": {}, "additionalProperties": False}}}]

    def whole(text, state):
        s = jc.feed(state, text.encode())
        return None if s is None else jc.can_end(s)
    bare = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    hermes = '<tool_call>\n' + bare + '\n</tool_call>'
    generic = '{"tool_call": ' + bare + '}'
    assert uses_generic_format(_template(GEMMA)) and not uses_generic_format(_template(QWEN))
    assert not uses_generic_format("") and not uses_generic_format(None)
    start = call_grammar(tools, None, _template(GEMMA))
    assert whole(generic, start) is True
    assert whole('{"tool_call": {"name": "get_time", "arguments": {}}}', start) is True
    assert whole(generic[:-1], start) is False            # the outer object must close
    assert whole(bare, start) is None and whole(hermes, start) is None
    assert whole('{"response": "no"}', start) is None     # a forced call is a call
    assert whole('{"tool_call": {"name": "get_weather", "arguments": {"town"', start) is None
    named = call_grammar(tools, {"get_time"}, _template(GEMMA))
    assert whole(generic, named) is None
    # What the grammar lets through, parse reads as the call (the server passes no template).
    assert calls_of_t(generic, None) == (None, [PARIS])
    # Qwen's template: bare or Hermes, as before; not the generic wrapper.
    start = call_grammar(tools, None, _template(QWEN))
    assert whole(bare, start) is True and whole(hermes, start) is True
    assert whole(generic, start) is None
    # tool_choice "auto" on the generic format: a call or an answer, both as JSON.
    either = call_grammar(tools, None, _template(GEMMA), answer=True)
    assert whole(generic, either) is True and whole('{"response": "It is sunny."}', either) is True
    assert whole('It is sunny.', either) is None and whole('{"response": 1}', either) is None
    assert whole(bare, either) is None


def test_fences_that_hold_no_call_stay_content():
    for text in ('```json\n{"name": "unknown_tool", "arguments": {}}\n```',
                 'Example:\n```json\n{"city": "Paris"}\n```',
                 '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```\n```\nnot a call\n```'):
        content, calls = calls_of(text)
        if "unknown" in text or "Example" in text:
            assert (content, calls) == (text, [])
        else:  # the call is taken, the other fence stays as written
            assert calls == [PARIS] and content == "```\nnot a call\n```"
    # Text around a fenced call is the content; two fenced calls keep their order.
    text = ('Let me look.\n```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```\n'
            '```json\n{"name": "get_time", "arguments": {}}\n```')
    assert calls_of(text) == ("Let me look.", [PARIS, ("get_time", {})])


def test_fences_pair_by_lines():
    """Found by a review: a closing fence was read as an opening one, and a ``` inside a
    call's JSON string ended its fence."""
    text = 'Run:\n```python\nx=1\n```\n```json\n{"name": "get_time", "arguments": {"a": 1}}\n```'
    assert calls_of(text) == ("Run:\n```python\nx=1\n```", [("get_time", {"a": 1})])
    titled = 'Code:\n```python title="x.py"\nx=1\n```\n```json\n{"name": "get_time", "arguments": {}}\n```'
    assert calls_of(titled) == ('Code:\n```python title="x.py"\nx=1\n```', [("get_time", {})])
    inner = '```json\n{"name": "get_time", "arguments": {"content": "```py\\nx\\n```"}}\n```'
    assert calls_of(inner) == (None, [("get_time", {"content": "```py\nx\n```"})])
    # A closed fence that holds no call lets what follows it stream.
    for text in ('Example:\n```json\n{"a": 1}\n```\nNow a long explanation',
                 'Code:\n```python\nx = [1]\n```\n[1]: a footnote'):
        assert held_from(text, TOOLS) == len(text), text
    # Without the tools, a closed JSON fence might be a call: it waits.
    assert held_from('Example:\n```json\n{"a": 1}\n```\nmore') == len("Example:")


# ---- held_from read incrementally (CallHold) against the algorithm it replaced -----------

def old_held_from(text, tools=None):
    """held_from as it was before CallHold: it read the whole reply at every call, which
    a streamed reply made quadratic. Kept as the reference for the same answers."""
    from runtime import tool_calls as tc
    if not text.strip() or text.lstrip().startswith(tc.JSON_STARTS):
        return 0
    found = [i for i in (text.find(m) for m in tc.MARKERS) if i >= 0]
    fence = _old_fence_call_at(text, tc.declared_names(tools) if tools is not None else None)
    if fence is not None:
        found.append(fence)
    cut = min(found) if found else len(text) - _old_marker_prefix_len(text)
    return len(text[:cut].rstrip())


def _old_marker_prefix_len(text):
    from runtime.tool_calls import MARKERS
    for k in range(min(len(text), max(map(len, MARKERS)) - 1), 0, -1):
        if any(m.startswith(text[-k:]) for m in MARKERS):
            return k
    return 0


def _old_fence_call_at(text, names):
    from runtime import tool_calls as tc
    for f in tc._fences(text):
        if f.closed:
            body = text[f.body_start:f.body_end].lstrip()
            if f.info in tc._CALL_FENCE_INFOS and (
                    tc._fence_calls(text, f, names, None) if names is not None
                    else body.startswith((*tc.JSON_STARTS, tc.HERMES_OPEN))):
                return f.start
            continue
        info_ok = (f.info in tc._CALL_FENCE_INFOS if f.info_done
                   else any(i.startswith(f.info) for i in tc._CALL_FENCE_INFOS))
        body = text[f.body_start:].lstrip()
        if info_ok and (not body or body.startswith(tc.JSON_STARTS)
                        or tc.HERMES_OPEN.startswith(body[:len(tc.HERMES_OPEN)])):
            return f.start
        return None
    last = text[text.rfind("\n") + 1:]
    return len(text) - len(last) if last.strip(" \t") in ("`", "``") else None


CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
# Pieces of replies: fence lines of every kind, markers and their beginnings, calls,
# whitespace that str.isspace and regex's \s see differently (\x1c), NBSP, \r, a letter
# whose lower case is longer (İ), and plain words.
FRAGMENTS = ["```", "````", "``", "`", "```json", "```JSON", "```xml", "```js", "```python",
             "``` json", "```\tjson x", "```jsonx", "```İ", "\n", "\n\n", " ", "\t", "  ",
             "\r", "\x0b", "\x1c", "\u00a0", "\u2028", "<tool_call>", "</tool_call>",
             "<tool", "_call>", "[TOOL_CALLS]", "[TOOL", "<|python_tag|>", "<|py", "{", "[",
             "}", "]", CALL, '{"a": 1}', "[1, 2]", "Sure.", "x", "Let me check", "ls -l",
             "get_weather", "[ARGS]", '{"tool_call": ' + CALL + "}", "<", "|", "#"]


def random_reply(rng):
    return "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 14)))


def random_pieces(rng, text):
    """text cut where a tokenizer might cut it: 1 to 6 characters at a time."""
    out, i = [], 0
    while i < len(text):
        n = rng.randint(1, 6)
        out.append(text[i:i + n])
        i += n
    return out


def check_streamed(text, pieces, tools):
    from runtime.tool_calls import CallHold
    hold, so_far = CallHold(tools), ""
    for piece in pieces:
        so_far += piece
        got = hold.push(piece)
        assert got == old_held_from(so_far, tools), (so_far, tools)
    assert so_far == text


def test_call_hold_agrees_with_the_old_held_from_on_random_replies():
    import random
    rng = random.Random(1234)
    for _ in range(3000):
        text = random_reply(rng)
        tools = rng.choice((TOOLS, None, []))
        check_streamed(text, random_pieces(rng, text), tools)
        assert held_from(text, tools) == old_held_from(text, tools), (text, tools)


REAL_REPLIES = [
    'Sure.\n\n<tool_call>\n' + CALL + '\n</tool_call>',
    "I'll check the weather for you.\n<tool_call>\n" + CALL + '\n</tool_call>\n<tool_call>\n'
    '{"name": "get_time", "arguments": {}}\n</tool_call>',
    '```json\n' + CALL + '\n```',
    'To get the weather, I will call the tool:\n\n```json\n' + CALL + '\n```\n\nLet me know!',
    'Here is an example in Python:\n\n```python\nimport requests\nprint(requests.get("x"))\n```\n'
    '\nAnd the call:\n```\n' + CALL + '\n```',
    '```xml\n<tool_call>\n' + CALL + '\n</tool_call>\n```',
    '[TOOL_CALLS] [' + CALL + ']',
    '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}',
    '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
    'The weather in Paris is sunny, 21 °C. Use `get_weather` again if you need more.',
    'Steps:\n1. Run ``ls``\n2. Then ```cat```\n  ```\n  indented fence\n  ```\nDone.',
    '   \n\n  ' + CALL,
    'Code:\n```python title="x.py"\nx=1\n```\n```json\n{"name": "get_time", "arguments": {}}\n```',
    'Example:\n```json\n{"a": 1}\n```\nNow a long explanation',
]


@pytest.mark.parametrize("text", REAL_REPLIES)
def test_call_hold_agrees_with_the_old_held_from_on_real_replies(text):
    import random
    rng = random.Random(7)
    for tools in (TOOLS, None):
        check_streamed(text, list(text), tools)                 # a character at a time
        check_streamed(text, random_pieces(rng, text), tools)
        check_streamed(text, [text], tools)


LONG_BYTES = 200_000


def long_replies():
    """Replies of about LONG_BYTES, each the worst case of one part of CallHold."""
    line = "The quick brown fox jumps over the lazy dog, and then some more. "
    prose = line * (LONG_BYTES // len(line) + 1)
    return {
        "prose": prose,
        "open json fence": "Sure:\n```json\n{\"a\": [" + "1, " * (LONG_BYTES // 3) + "2]}",
        "one fence line": "Sure:\n```" + "x" * LONG_BYTES,          # no newline ever
        "many fences": "```python\nx = 1\n```\n" * (LONG_BYTES // 20 + 1),
        "many call fences": ("```json\n" + CALL + "\n```\n") * (LONG_BYTES // 60),
        "blank lines": "Hi" + "\n" * LONG_BYTES + "```",
        "spaces": "Hi" + " " * LONG_BYTES + "<tool",
        "after a marker": "Let me see. <tool_call>\n" + prose,
        "blank start": " " * LONG_BYTES + "{",
    }


@pytest.mark.parametrize("name", list(long_replies()))
def test_a_long_streamed_reply_is_read_in_bounded_work(name, monkeypatch):
    """Work is counted, not timed, over a reply of 200 KB pushed a few characters at a
    time: the characters CallHold cuts back out of the reply (_slice), those the call
    parser reads, and those its fence-line reader steps through. Beyond a bounded amount
    per push, each grows linearly with the reply. (At every token the old held_from read
    the whole reply: 11 GB of reading here.)"""
    import random
    from runtime import tool_calls as tc
    text = long_replies()[name]
    counts = {"slice": 0, "parse": 0, "line": 0}
    real_slice, real_parse, real_feed = tc.CallHold._slice, tc._parse_unfenced, tc._FenceLine.feed

    def counting_slice(self, a, b):
        out = real_slice(self, a, b)
        counts["slice"] += len(out)
        return out

    def counting_parse(body, names, generic):
        counts["parse"] += len(body)
        return real_parse(body, names, generic)

    def counting_feed(self, seg):
        counts["line"] += len(seg)
        return real_feed(self, seg)

    monkeypatch.setattr(tc.CallHold, "_slice", counting_slice)
    monkeypatch.setattr(tc, "_parse_unfenced", counting_parse)
    monkeypatch.setattr(tc._FenceLine, "feed", counting_feed)
    pieces = random_pieces(random.Random(3), text)
    hold = tc.CallHold(TOOLS)
    for piece in pieces:
        got = hold.push(piece)
    assert got == old_held_from(text, TOOLS)
    n, per_push = len(text), 40 * len(pieces)
    assert n >= LONG_BYTES
    assert counts["slice"] <= per_push + 2 * n, counts
    assert counts["parse"] <= 2 * n, counts
    assert counts["line"] <= n, counts
