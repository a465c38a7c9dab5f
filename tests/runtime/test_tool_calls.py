"""runtime.tool_calls.parse on replies written the way each model family writes its calls,
and held_from, which decides what a streamed reply may send before it ends.

The inputs are hand-written in each family's format (as its chat template asks for it);
the expected calls are the names and arguments written in them.
"""
import json
import re

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
])
def test_held_from(text, sendable):
    assert text[:held_from(text)] == sendable


def test_streaming_by_held_from_gives_parse_of_the_whole_reply():
    # What the server does: send up to held_from as the reply grows, parse the rest at
    # the end. Content sent plus content parsed must equal the whole reply's content.
    for text in ('Sure.\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
                 'Plain answer with <b>tags</b> and [links] that never call.',
                 '{"name": "get_weather", "arguments": {"city": "Paris"}}'):
        sent = 0
        for i in range(1, len(text) + 1):
            sent = max(sent, held_from(text[:i]))
        content, calls = parse(text[sent:], TOOLS)
        whole_content, whole_calls = parse(text, TOOLS)
        assert (text[:sent] + (content or "")) == (whole_content or "")
        assert [c["function"] for c in calls] == [c["function"] for c in whole_calls]
