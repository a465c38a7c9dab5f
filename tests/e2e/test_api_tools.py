"""Tool calls in /v1/chat/completions replies, through the real `openai` client and raw HTTP.

The tiny fixture models write random text, which is never a call. So most tests serve
the real app (build_app + wrap_app, on a real socket in this process) with a fake
"parrot" model: its greedy reply is the last message's content, byte by byte. A test
then makes the model write any reply it wants, in any model family's format, and the
expected calls are the ones written in that reply. The prompt goes through the real
Qwen 2.5 chat template, so a tool-call round trip is rendered as for a real model.
A test runs the tiny real model, for the hold-back of streamed text with a real
tokenizer. The last ones run tiny-gemma3, whose built-in chat template cannot show tools:
the prompt gets them in llama.cpp's generic format, and a forced call is written in it.
"""
import codecs
import json
import threading

import numpy as np
import pytest

from tests.conftest import FIXTURES
from tests.e2e.conftest import (MODELS, http_request, post_json, sse_events, start_server,
                                tiny_4k, with_context_length)
from tests.runtime.test_engine import FakeSession

openai = pytest.importorskip("openai", reason="the openai client is not installed")

QWEN_TEMPLATE = (FIXTURES / "templates" / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
EOS = 256                       # tokens 0..255 are bytes
REPLY_START, REPLY_END = 2, 3   # bytes that frame the reply script in the prompt
N_CTX = 4096

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]


# ---- the parrot model --------------------------------------------------------------------

class ByteDecoder:
    def __init__(self):
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def push(self, tok):
        return self._utf8.decode(bytes([tok])) if tok < 256 else ""

    def flush(self):
        return self._utf8.decode(b"", final=True)


class ByteTokenizer:
    bos_id = None
    n_vocab = 257

    def decoder(self, continuation=False):
        return ByteDecoder()

    def token_to_piece(self, tok, special=False):
        return bytes([tok]) if tok < 256 else b""


class ParrotSession(FakeSession):
    """Greedy next token: the next byte of the script framed by REPLY_START..REPLY_END at
    the end of the prompt, then EOS. (Rewinds as test_engine's FakeSession does.)"""

    def __init__(self, n_ctx):
        self.n_ctx, self.tokens = n_ctx, []

    def _logits_at(self, n):
        toks = self.tokens[:n]
        end = max((i for i, t in enumerate(toks) if t == REPLY_END), default=-1)
        start = max((i for i, t in enumerate(toks[:end]) if t == REPLY_START), default=-1)
        script, done = toks[start + 1:end], n - end - 1
        x = np.full(EOS + 1, -10.0, np.float32)
        x[script[done] if end >= 0 and done < len(script) else EOS] = 10.0
        return x

    def eval(self, ids, all_logits=False):
        first = len(self.tokens)
        self.tokens += list(ids)
        rows = [self._logits_at(first + i + 1) for i in range(len(ids))]
        return np.stack(rows) if all_logits else rows[-1]


class ParrotModel:
    name, arch, n_ctx_train, chat_template = "parrot", "parrot", N_CTX, QWEN_TEMPLATE
    n_vocab = EOS + 1
    eog_ids = frozenset({EOS})

    def __init__(self):
        self.tokenizer = ByteTokenizer()
        self.prompts = []            # every rendered chat prompt, for the round-trip test

    def tokenize(self, text, add_special=True, parse_special=False):
        return list(text.encode("utf-8"))

    def chat_prompt(self, messages, add_generation_prompt=True, tools=None):
        from runtime.chat_template import render
        text = render(QWEN_TEMPLATE, messages, add_generation_prompt=add_generation_prompt,
                      tools=tools)
        self.prompts.append(text)
        return text + chr(REPLY_START) + (messages[-1].get("content") or "") + chr(REPLY_END)

    def session(self, n_ctx):
        return ParrotSession(n_ctx)


@pytest.fixture(scope="module")
def parrot():
    """(url, model): the real server app on a real socket, serving the parrot."""
    yield from serve_parrot()


def serve_parrot(model=None):
    """Yields (url, model) while the real server app serves `model` (a ParrotModel unless
    given) on a real socket."""
    from runtime import connections, server
    from runtime.engine import Engine
    model = model or ParrotModel()
    st = server.State(model_path="parrot.gguf", n_ctx=N_CTX, model=model, model_id="parrot")
    st.engine = Engine(model, N_CTX)
    httpd, port = connections.bind("127.0.0.1", 0)
    httpd.set_app(server.wrap_app(server.build_app(st), st))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", model
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def client(parrot):
    return openai.OpenAI(base_url=parrot[0] + "/v1", api_key="x", max_retries=0, timeout=30)


def ask(text):
    return [{"role": "user", "content": text}]


def calls_of(message):
    """[(name, arguments as an object)] of an openai message object."""
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]


HERMES = ('Let me check.\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
          '</tool_call>')
BARE = '{"name": "get_weather", "arguments": {"city": "Zürich"}}'
TWO = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
       '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')


# ---- the tests -------------------------------------------------------------------------

def test_the_parrot_says_what_it_is_told(client):
    # The premise of the other tests: without tools, the reply is the message, verbatim.
    r = client.chat.completions.create(model="x", messages=ask(HERMES), temperature=0)
    assert r.choices[0].message.content == HERMES


@pytest.mark.parametrize("reply, content, calls", [
    (HERMES, "Let me check.", [("get_weather", {"city": "Paris"})]),
    (BARE, None, [("get_weather", {"city": "Zürich"})]),
    (TWO, None, [("get_weather", {"city": "Paris"}), ("get_time", {})]),
])
def test_calls_in_the_reply_come_back_as_tool_calls(client, reply, content, calls):
    r = client.chat.completions.create(model="x", messages=ask(reply), tools=TOOLS, temperature=0)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls"
    assert c.message.content == content
    assert calls_of(c.message) == calls
    assert all(t.type == "function" and t.id.startswith("call_") for t in c.message.tool_calls)
    assert len({t.id for t in c.message.tool_calls}) == len(calls)


@pytest.mark.parametrize("reply", [HERMES, BARE, TWO])
def test_streamed_calls_assemble_into_the_same_reply(client, reply):
    kw = dict(model="x", messages=ask(reply), tools=TOOLS, temperature=0)
    whole = client.chat.completions.create(**kw).choices[0]
    with client.chat.completions.stream(**kw) as stream:
        streamed = stream.get_final_completion().choices[0]
    assert streamed.finish_reason == whole.finish_reason == "tool_calls"
    assert calls_of(streamed.message) == calls_of(whole.message)
    assert (streamed.message.content or None) == whole.message.content


def test_streamed_tool_call_chunks_have_openai_shape(parrot):
    status, _, data = http_request("POST", parrot[0] + "/v1/chat/completions", {
        "messages": ask(TWO), "tools": TOOLS, "stream": True, "temperature": 0})
    assert status == 200
    evs = sse_events(data)
    assert evs[-1] == "[DONE]"
    chunks = [e["choices"][0] for e in evs[:-1]]
    # No piece of a call may have been streamed as content.
    assert "".join(c["delta"].get("content") or "" for c in chunks) == ""
    deltas = [d for c in chunks for d in c["delta"].get("tool_calls", [])]
    assert [d["index"] for d in deltas] == [0, 1]
    assert [d["function"]["name"] for d in deltas] == ["get_weather", "get_time"]
    assert all(d["type"] == "function" and d["id"].startswith("call_") for d in deltas)
    assert [c["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["tool_calls"]


def test_text_that_only_looked_like_a_call_streams_whole(client):
    # "<tool" and a leading "{" are held back; they turn out to be no call.
    for reply in ("Use the <tool_call> tag like this: <tool_call>{oops}</tool_call>",
                  '{"answer": 42}', "Paris is sunny <tool"):
        kw = dict(model="x", messages=ask(reply), tools=TOOLS, temperature=0)
        chunks = list(client.chat.completions.create(**kw, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply
        assert chunks[-1].choices[0].finish_reason == "stop"
        whole = client.chat.completions.create(**kw).choices[0]
        assert whole.message.content == reply and not whole.message.tool_calls
        assert whole.finish_reason == "stop"


def test_text_before_a_call_streams_before_the_reply_ends(parrot):
    status, _, data = http_request("POST", parrot[0] + "/v1/chat/completions", {
        "messages": ask(HERMES), "tools": TOOLS, "stream": True, "temperature": 0})
    contents = [e["choices"][0]["delta"].get("content") for e in sse_events(data)[:-1]]
    # A chunk per token (byte) up to the call, not one held-back chunk at the end; only
    # a space waits for the next token (it may come before a call).
    assert [c for c in contents if c] == ["L", "e", "t", " m", "e", " c", "h", "e", "c", "k", "."]


def _no_tools_stream(url, body):
    _, _, data = http_request("POST", url + "/v1/chat/completions", {**body, "stream": True})
    return [e["choices"][0]["delta"].get("content") for e in sse_events(data)[:-1] if e["choices"]]


@pytest.mark.parametrize("extra", [{}, {"tools": TOOLS, "tool_choice": "none"}])
def test_without_tools_or_with_tool_choice_none_the_reply_is_text(parrot, extra):
    url = parrot[0]
    body = {"messages": ask(HERMES), "temperature": 0, **extra}
    status, r = post_json(url + "/v1/chat/completions", body)
    assert status == 200
    c = r["choices"][0]
    assert c["message"] == {"role": "assistant", "content": HERMES}
    assert c["finish_reason"] == "stop"
    # Streamed as it always was: every token's text as soon as it is there.
    assert _no_tools_stream(url, body)[1:-1] == list(HERMES)  # (between role and finish)


def test_tool_choice_auto_required_and_named_find_the_calls(client):
    for choice in ("auto", "required", {"type": "function", "function": {"name": "get_weather"}}):
        r = client.chat.completions.create(model="x", messages=ask(BARE), tools=TOOLS,
                                           tool_choice=choice, temperature=0)
        assert r.choices[0].finish_reason == "tool_calls", choice
        assert calls_of(r.choices[0].message) == [("get_weather", {"city": "Zürich"})]


@pytest.mark.parametrize("choice, message", [
    ("sometimes", "'tool_choice' must be"),
    (3, "'tool_choice' must be"),
    ({"type": "function"}, "'tool_choice' must be"),
    ({"type": "other", "function": {"name": "get_weather"}}, "'tool_choice' must be"),
    ({"type": "function", "function": {"name": "launch"}}, "not in 'tools'"),
])
def test_a_bad_tool_choice_is_a_400(parrot, client, choice, message):
    status, r = post_json(parrot[0] + "/v1/chat/completions",
                          {"messages": ask(BARE), "tools": TOOLS, "tool_choice": choice})
    assert status == 400 and message in r["error"]["message"], r
    assert r["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="x", messages=ask(BARE), tools=TOOLS,
                                       tool_choice=choice)


def test_a_tool_call_round_trip(client, parrot):
    # The agent loop: the model calls a tool, the client runs it and sends the assistant
    # message back with the tool's result; the template renders both, the model answers.
    from runtime.chat_template import render
    model = parrot[1]
    first = client.chat.completions.create(model="x", messages=ask(HERMES), tools=TOOLS,
                                           temperature=0).choices[0].message
    call = first.tool_calls[0]
    messages = ask(HERMES) + [first.model_dump(exclude_none=True),
                              {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 °C"}]
    r = client.chat.completions.create(model="x", messages=messages, tools=TOOLS, temperature=0)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == "sunny, 21 °C"       # the parrot repeats the result
    # The prompt is the template's rendering with the call's arguments as an object.
    expected = [*ask(HERMES),
                {"role": "assistant", "content": first.content,
                 "tool_calls": [{"id": call.id, "type": "function", "function": {
                     "name": "get_weather", "arguments": json.loads(call.function.arguments)}}]},
                messages[-1]]
    assert model.prompts[-1] == render(QWEN_TEMPLATE, expected, tools=TOOLS)
    assert call.function.arguments.replace(" ", "") in model.prompts[-1].replace(" ", "")


def test_streamed_logprobs_with_tools_cover_every_token(parrot):
    body = {"messages": ask(HERMES), "tools": TOOLS, "stream": True, "temperature": 0,
            "logprobs": True}
    _, _, data = http_request("POST", parrot[0] + "/v1/chat/completions", body)
    lps = [t for e in sse_events(data)[:-1] for t in ((e["choices"][0].get("logprobs") or {})
                                                       .get("content") or [])]
    assert "".join(t["token"] for t in lps) == HERMES


def test_tools_on_a_real_model_stream_and_answer_alike(server_factory, tmp_path):
    # A real tokenizer and random text: nothing held back may be lost or doubled.
    # (tiny-llama has no template: its built-in one gets the tools in the system text.)
    h = server_factory(tiny_4k(tmp_path))
    body = {"messages": ask("What is the weather in Paris?"), "tools": TOOLS,
            "temperature": 0, "max_tokens": 24}
    status, r = post_json(h.url + "/v1/chat/completions", body)
    assert status == 200
    c = r["choices"][0]
    _, _, data = http_request("POST", h.url + "/v1/chat/completions", {**body, "stream": True})
    evs = sse_events(data)[:-1]
    streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in evs)
    calls = [d for e in evs for d in e["choices"][0]["delta"].get("tool_calls", [])]
    assert streamed == (c["message"]["content"] or "")
    assert [d["function"] for d in calls] == [t["function"] for t in c["message"].get("tool_calls", [])]
    assert evs[-1]["choices"][0]["finish_reason"] == c["finish_reason"]


# ---- a model whose chat template cannot show tools ---------------------------------------
# tiny-gemma3 has no template of its own, so it gets the built-in Gemma one, which never
# reads `tools`: the tools go into the system text (folded into the first user turn, as
# Gemma has no system role) in llama.cpp's generic format, and a forced call is written
# in that format: {"tool_call": {"name": ..., "arguments": {...}}}.

GEMMA3 = MODELS / "tiny-gemma3-q8_0.gguf"
CITY_TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}},
                   "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {}, "additionalProperties": False}}}]


@pytest.fixture(scope="module")
def gemma_server():
    h = start_server(GEMMA3)
    yield h
    h.stop()


@pytest.fixture(scope="module")
def gemma_server_4k(tmp_path_factory):
    """tiny-gemma3 with room for the tool text (see _with_context_length)."""
    path = with_context_length(GEMMA3, tmp_path_factory.mktemp("gemma") / "gemma-4k.gguf",
                                "gemma3", 4096)
    h = start_server(path)
    yield h
    h.stop()


def test_a_template_without_tools_gets_them_in_the_system_text(gemma_server):
    status, r = post_json(gemma_server.url + "/apply-template", {
        "messages": ask("weather?"), "tools": CITY_TOOLS})
    assert status == 200, r
    prompt = r["prompt"]
    user_turn = prompt[prompt.index("<start_of_turn>user\n"):prompt.index("<end_of_turn>")]
    # Gemma has no system role: the tool text opens the first user turn, the question ends it.
    assert "<start_of_turn>system" not in prompt and user_turn.endswith("\n\nweather?")
    listed = json.loads(user_turn[user_turn.index("["):user_turn.index("\n]") + 2])
    assert listed == CITY_TOOLS                     # every tool with its schema, as JSON
    assert '{"tool_call": {"name": ' in user_turn and '{"response": ' in user_turn
    assert prompt.endswith("<start_of_turn>model\n")
    # Without tools the prompt is what it always was.
    status, plain = post_json(gemma_server.url + "/apply-template", {"messages": ask("weather?")})
    assert plain["prompt"].endswith("<start_of_turn>user\nweather?<end_of_turn>\n"
                                    "<start_of_turn>model\n")


def test_a_tool_round_trip_renders_in_gemma_roles(gemma_server):
    messages = ask("weather?") + [
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 °C"}]
    status, r = post_json(gemma_server.url + "/apply-template",
                          {"messages": messages, "tools": CITY_TOOLS})
    assert status == 200, r
    prompt = r["prompt"]
    assert "<start_of_turn>tool" not in prompt      # no such role in Gemma
    assert ('<start_of_turn>model\n{"tool_call": {"name": "get_weather", "arguments": '
            '{"city": "Paris"}}}<end_of_turn>\n') in prompt
    assert ('<start_of_turn>user\n{"tool_response": {"tool": "get_weather", "content": '
            '"sunny, 21 °C", "tool_call_id": "call_1"}}<end_of_turn>\n'
            '<start_of_turn>model\n') in prompt


@pytest.mark.parametrize("choice, names", [
    ("required", {"get_weather", "get_time"}),
    ({"type": "function", "function": {"name": "get_weather"}}, {"get_weather"}),
])
def test_a_forced_call_on_a_template_without_tools_is_a_tool_call(gemma_server_4k, choice,
                                                                   names):
    url = gemma_server_4k.url
    # Room for the whitespace JSON allows between tokens, which a random model writes a lot
    # of (the arguments are an enum or nothing, so the call itself is short).
    body = {"messages": ask("What is the weather in Paris?"), "tools": CITY_TOOLS,
            "tool_choice": choice, "temperature": 0, "max_tokens": 512}
    status, r = post_json(url + "/v1/chat/completions", {**body, "logprobs": True})
    assert status == 200, r
    c = r["choices"][0]
    assert c["finish_reason"] == "tool_calls", c
    assert c["message"]["content"] is None
    [call] = c["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    name, args = call["function"]["name"], json.loads(call["function"]["arguments"])
    assert name in names
    assert args == {} if name == "get_time" else args in ({"city": "Paris"}, {"city": "Rome"})
    # What the model wrote (its tokens, from logprobs) is the format its prompt asked for.
    written = "".join(t["token"] for t in c["logprobs"]["content"])
    assert json.loads(written) == {"tool_call": {"name": name, "arguments": args}}, written
    # ... and that prompt held the tool description: far longer than the question alone.
    _, plain = post_json(url + "/v1/chat/completions", {
        "messages": body["messages"], "temperature": 0, "max_tokens": 1})
    assert r["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"] + 300
    # Streamed: the same call, as tool_calls deltas.
    _, _, data = http_request("POST", url + "/v1/chat/completions", {**body, "stream": True})
    evs = sse_events(data)[:-1]
    deltas = [d for e in evs for d in e["choices"][0]["delta"].get("tool_calls", [])]
    assert [d["function"] for d in deltas] == [call["function"]]
    assert evs[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_a_generic_response_is_the_answer_and_none_hides_the_tools(gemma_server_4k):
    """Told the generic format, a model answers {"response": TEXT}: the client gets TEXT
    (with "auto" the reply is held to a call or that answer, as llama.cpp's generic grammar
    does). A request's own JSON response_format is its JSON, never unwrapped. With
    tool_choice "none" the model is not shown the tools, since that text asks for JSON
    nothing would read."""
    from runtime.model import Model
    url = gemma_server_4k.url
    # The random model always calls: ban every token with a "t" in it, so that only
    # {"response": ...} can be written ("tool_call" needs a t, "response" has none).
    vocab = Model.load(GEMMA3, vocab_only=True).tokenizer
    no_t = [[i, False] for i in range(vocab.n_vocab) if b"t" in vocab.token_to_piece(i)]
    body = {"messages": ask("Hello!"), "tools": CITY_TOOLS, "temperature": 0,
            "max_tokens": 200, "logit_bias": no_t}
    status, r = post_json(url + "/v1/chat/completions", {**body, "logprobs": True})
    assert status == 200, r
    c = r["choices"][0]
    written = json.loads("".join(t["token"] for t in c["logprobs"]["content"]))
    assert set(written) == {"response"} and c["finish_reason"] == "stop", written
    assert "tool_calls" not in c["message"] and c["message"]["content"] == written["response"]
    _, _, data = http_request("POST", url + "/v1/chat/completions", {**body, "stream": True})
    evs = sse_events(data)[:-1]
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in evs) == written["response"]
    # The request's own format that happens to be {"response": ...}: the JSON, as asked.
    answer = {"type": "json_schema", "json_schema": {"name": "a", "strict": True, "schema": {
        "type": "object", "properties": {"response": {"type": "string", "maxLength": 8}},
        "required": ["response"], "additionalProperties": False}}}
    status, r = post_json(url + "/v1/chat/completions", {**body, "response_format": answer})
    content = r["choices"][0]["message"]["content"]
    assert status == 200 and set(json.loads(content)) == {"response"}, r
    # Without the ban, "auto" lets it call, in the generic format.
    del body["logit_bias"]
    status, r = post_json(url + "/v1/chat/completions", body)
    assert status == 200 and r["choices"][0]["finish_reason"] == "tool_calls", r
    # tool_choice "none": the prompt is the one without tools.
    plain = {"messages": ask("Hello!"), "temperature": 0, "max_tokens": 1}
    _, without = post_json(url + "/v1/chat/completions", plain)
    _, none = post_json(url + "/v1/chat/completions", {**plain, "tools": CITY_TOOLS,
                                                        "tool_choice": "none"})
    _, auto = post_json(url + "/v1/chat/completions", {**plain, "tools": CITY_TOOLS})
    assert none["usage"]["prompt_tokens"] == without["usage"]["prompt_tokens"]
    assert auto["usage"]["prompt_tokens"] > without["usage"]["prompt_tokens"] + 300
    # /apply-template shows the prompt the chat route would send, tool_choice included.
    shown = {c: post_json(url + "/apply-template", {"messages": ask("Hello!"), "tools": CITY_TOOLS,
                                                    **({"tool_choice": c} if c else {})})[1]
             for c in ("none", None)}
    assert "get_weather" not in shown["none"]["prompt"] and "get_weather" in shown[None]["prompt"]
    status, r = post_json(url + "/apply-template", {"messages": ask("Hello!"),
                                                   "tool_choice": "sometimes"})
    assert status == 400 and "tool_choice" in r["error"]["message"]
