"""response_format, llama-server's json_schema, tool_choice "required"/named and logit_bias,
through the real server on the tiny fixture model, with plain HTTP and the real `openai`
client.

The tiny model's weights are random: left alone it writes byte soup, never JSON (the first
test shows it). So a reply that parses, and fits its schema, is the constraint's doing.
Schemas here bound their strings (maxLength, enum): a random model in a free string may
never close it before max_tokens, which is the model's failing, not the constraint's.
"""
import json
import math

import numpy as np
import pytest

from tests.e2e.conftest import http_request, post_json, sse_events, start_server, tiny_4k

openai = pytest.importorskip("openai", reason="the openai client is not installed")


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="x", max_retries=0, timeout=60)


MSGS = [{"role": "user", "content": "Describe a user account as JSON."}]
PERSON = {"type": "object", "additionalProperties": False,
          "properties": {"name": {"type": "string", "maxLength": 10},
                         "age": {"type": "integer"},
                         "admin": {"type": "boolean"},
                         "role": {"enum": ["dev", "ops"]},
                         "tags": {"type": "array", "items": {"type": "string", "maxLength": 4},
                                  "maxItems": 2}},
          "required": ["name", "age", "admin", "role", "tags"]}
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                   "required": ["city"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "get_time", "parameters": {"type": "object", "additionalProperties": False,
                                           "properties": {"zone": {"enum": ["utc", "local"]}},
                                           "required": ["zone"]}}}]


def check(value, schema, where="$"):
    """A small JSON Schema validator for the keywords used here (independent of the
    server's recognizer)."""
    kinds = {"object": dict, "array": list, "string": str, "integer": int, "boolean": bool,
             "null": type(None), "number": (int, float)}
    if "enum" in schema:
        assert value in schema["enum"], (where, value)
    t = schema.get("type")
    if t:
        assert isinstance(value, kinds[t]), (where, value)
        assert not (t in ("integer", "number") and isinstance(value, bool)), (where, value)
    if t == "object":
        props = schema.get("properties", {})
        assert set(schema.get("required", [])) <= set(value), (where, value)
        if schema.get("additionalProperties") is False:
            assert set(value) <= set(props), (where, value)
        for k, v in value.items():
            if k in props:
                check(v, props[k], f"{where}.{k}")
    if t == "array":
        assert len(value) <= schema.get("maxItems", math.inf), (where, value)
        for i, v in enumerate(value):
            check(v, schema.get("items", {}), f"{where}[{i}]")
    if t == "string":
        assert len(value) <= schema.get("maxLength", math.inf), (where, value)


def parses(text):
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


# ---- response_format -----------------------------------------------------------------------

def test_without_a_constraint_the_tiny_model_writes_no_json(client):
    r = client.chat.completions.create(model="x", messages=MSGS, temperature=0, max_tokens=60)
    assert not parses(r.choices[0].message.content)


def test_json_object_reply_is_one_object(client):
    r = client.chat.completions.create(model="x", messages=MSGS, temperature=0, max_tokens=200,
                                       response_format={"type": "json_object"})
    c = r.choices[0]
    assert c.finish_reason == "stop"
    assert isinstance(json.loads(c.message.content), dict)


@pytest.mark.parametrize("seed", range(4))
def test_sampled_json_schema_replies_fit_the_schema(client, seed):
    r = client.chat.completions.create(
        model="x", messages=MSGS, temperature=1.0, seed=seed, max_tokens=220,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "person", "schema": PERSON, "strict": True}})
    c = r.choices[0]
    assert c.finish_reason == "stop", c.message.content
    check(json.loads(c.message.content), PERSON)


def test_json_schema_reply_fits_and_streams_the_same(client, tiny_server):
    kw = dict(model="x", messages=MSGS, temperature=0, max_tokens=220,
              response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}})
    whole = client.chat.completions.create(**kw).choices[0]
    assert whole.finish_reason == "stop"
    check(json.loads(whole.message.content), PERSON)
    chunks = list(client.chat.completions.create(**kw, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == \
        whole.message.content


def test_text_response_format_changes_nothing(client):
    kw = dict(model="x", messages=MSGS, temperature=0, max_tokens=30)
    plain = client.chat.completions.create(**kw).choices[0].message.content
    text = client.chat.completions.create(**kw, response_format={"type": "text"})
    assert text.choices[0].message.content == plain


def test_llama_server_json_schema_fields(tiny_server):
    array = {"type": "array", "items": {"type": "integer"}, "maxItems": 3}
    status, r = post_json(tiny_server.url + "/completion",
                          {"prompt": "Numbers:", "json_schema": array, "temperature": 0,
                           "n_predict": 150})
    assert status == 200 and r["stop_type"] == "eos", r
    check(json.loads(r["content"]), array)
    body = {"prompt": "User:", "temperature": 0, "n_predict": 200,
            "response_format": {"type": "json_object", "schema": PERSON}}
    status, r = post_json(tiny_server.url + "/completion", body)
    assert status == 200 and r["stop_type"] == "eos", r
    check(json.loads(r["content"]), PERSON)
    # and OpenAI's /v1/completions
    status, r = post_json(tiny_server.url + "/v1/completions", {
        **body, "max_tokens": 200, "response_format": {
            "type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}})
    assert status == 200 and r["choices"][0]["finish_reason"] == "stop", r
    check(json.loads(r["choices"][0]["text"]), PERSON)


def test_a_reply_cut_by_max_tokens_is_left_as_it_is(client):
    full = client.chat.completions.create(model="x", messages=MSGS, temperature=0, max_tokens=220,
                                          response_format={"type": "json_schema", "json_schema": {
                                              "name": "p", "schema": PERSON}})
    cut = client.chat.completions.create(model="x", messages=MSGS, temperature=0, max_tokens=8,
                                         response_format={"type": "json_schema", "json_schema": {
                                             "name": "p", "schema": PERSON}})
    c = cut.choices[0]
    assert c.finish_reason == "length"
    assert not parses(c.message.content)
    assert full.choices[0].message.content.startswith(c.message.content)


# ---- tool_choice -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tool_client(tmp_path_factory):
    """tiny-llama has no chat template: its built-in one cannot show tools, so they go into
    the system text (docs/api.md), longer than the tiny model's trained 256 tokens. A copy
    that says 4096 holds them (its weights are random: later positions are no worse)."""
    model = tiny_4k(tmp_path_factory.mktemp("tools"))
    h = start_server(model)
    yield openai.OpenAI(base_url=h.url + "/v1", api_key="x", max_retries=0, timeout=60)
    h.stop()


def calls_of(message):
    return [(t.function.name, json.loads(t.function.arguments)) for t in message.tool_calls or []]


def test_tool_choice_required_forces_a_call(tool_client):
    client = tool_client
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    plain = client.chat.completions.create(model="x", messages=ask, tools=TOOLS, temperature=0,
                                           max_tokens=60).choices[0]
    assert plain.finish_reason != "tool_calls"       # the random model calls nothing by itself
    c = client.chat.completions.create(model="x", messages=ask, tools=TOOLS, temperature=0,
                                       max_tokens=200, tool_choice="required").choices[0]
    assert c.finish_reason == "tool_calls"
    ((name, args),) = calls_of(c.message)
    spec = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    check(args, spec[name])


@pytest.mark.parametrize("name", ["get_weather", "get_time"])
def test_a_named_tool_choice_calls_that_tool(tool_client, name):
    client = tool_client
    ask = [{"role": "user", "content": "Help me."}]
    kw = dict(model="x", messages=ask, tools=TOOLS, temperature=0, max_tokens=200,
              tool_choice={"type": "function", "function": {"name": name}})
    c = client.chat.completions.create(**kw).choices[0]
    assert c.finish_reason == "tool_calls"
    ((got, args),) = calls_of(c.message)
    assert got == name
    check(args, next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name))
    with client.chat.completions.stream(**kw) as stream:
        streamed = stream.get_final_completion().choices[0]
    assert streamed.finish_reason == "tool_calls" and calls_of(streamed.message) == calls_of(c.message)


# ---- logit_bias ------------------------------------------------------------------------------

def biased_greedy(model, ids, n, bias):
    """The reference: our Model's greedy ids with `bias` added to the logits."""
    s = model.session(model.n_ctx_train)
    x = s.eval(ids)
    out = []
    for _ in range(n):
        z = x.copy()
        for t, b in bias.items():
            z[t] += b
        tok = int(np.argmax(z))
        if tok in model.eog_ids:
            break
        out.append(tok)
        x = s.eval([tok])
    return out


def test_logit_bias_bans_and_forces_tokens(client, tiny_server, tiny_model):
    from runtime.engine import chat_prompt_ids, tokenize_prompt
    ids = chat_prompt_ids(tiny_model, MSGS)[1]
    greedy = biased_greedy(tiny_model, ids, 12, {})
    first = greedy[0]
    # -100 through the OpenAI client: the reply is the greedy one without that token
    r = client.chat.completions.create(model="x", messages=MSGS, temperature=0, max_tokens=12,
                                       logit_bias={str(first): -100})
    banned = biased_greedy(tiny_model, ids, 12, {first: -100.0})
    assert first not in banned and banned != greedy
    assert r.choices[0].message.content == tiny_model.detokenize(banned)
    # false (llama-server): never that token, in any position
    prompt = tokenize_prompt(tiny_model, "Once upon a time")
    status, plain = post_json(tiny_server.url + "/completion",
                              {"prompt": prompt, "temperature": 0, "n_predict": 16})
    tok = plain["tokens"][0]
    for bias in ([[tok, False]], {str(tok): False}, {str(tok): -100}):
        status, r = post_json(tiny_server.url + "/completion", {
            "prompt": prompt, "temperature": 0, "n_predict": 16, "logit_bias": bias})
        assert status == 200 and tok not in r["tokens"] and r["tokens"] != plain["tokens"]
    # +100 makes greedy pick a token ("hello" is one of the tiny vocabulary's words)
    hello = next(t for t in range(tiny_model.n_vocab)
                 if tiny_model.tokenizer.token_to_piece(t) == b"hello")
    assert hello not in greedy
    r = client.chat.completions.create(model="x", messages=MSGS, temperature=0, max_tokens=5,
                                       logit_bias={str(hello): 100})
    assert r.choices[0].message.content == "hello" * 5
    # a text's bias goes to each token of its tokenization (" he", "l", "l", "o" here)
    pieces = tiny_model.tokenize("hello", add_special=False)
    assert len(set(pieces)) > 1
    status, r = post_json(tiny_server.url + "/completion", {
        "prompt": prompt, "temperature": 0, "n_predict": 8, "logit_bias": [["hello", 100]]})
    assert status == 200 and set(r["tokens"]) <= set(pieces), r


def test_logit_bias_and_a_constraint_together(client, tiny_model):
    # Banning whitespace leaves the constraint its compact JSON.
    ws = {str(t): False for t in range(tiny_model.n_vocab)
          if tiny_model.tokenizer.token_to_piece(t) in (b" ", b"\t", b"\n")}
    r = client.chat.completions.create(model="x", messages=MSGS, temperature=0, max_tokens=200,
                                       logit_bias=ws, response_format={
                                           "type": "json_schema", "json_schema": {
                                               "name": "p", "schema": PERSON}})
    text = r.choices[0].message.content
    check(json.loads(text), PERSON)
    assert not any(ch in text for ch in "\t\n") and not text.startswith(" ")


# ---- bad requests ----------------------------------------------------------------------------

BAD = [
    ({"logit_bias": {"999999": 1}}, "token id 999999 is out of range [0, 512)"),
    ({"logit_bias": {"-1": 1}}, "token id -1 is out of range"),
    ({"logit_bias": {"1": "x"}}, "a bias must be a number between -100 and 100, or false"),
    ({"logit_bias": {"1": True}}, "a bias must be a number"),
    ({"logit_bias": {"1": 100.5}}, "a bias must be a number between -100 and 100"),
    ({"logit_bias": {"": 1}}, "the text has no tokens"),  # other texts: as llama-server
    ({"logit_bias": [[1]]}, "must be a [token id or text, bias] pair"),
    ({"logit_bias": [[1.5, 1]]}, "the first item must be a token id or a text"),
    ({"logit_bias": [[600, 1]]}, "token id 600 is out of range"),
    ({"logit_bias": {str(i): 1 for i in range(1025)}}, "at most 1024 entries"),
    ({"logit_bias": {str(i): False for i in range(512)}}, "bans every token"),
    ({"logit_bias": 3}, "'logit_bias' must be an object"),
    ({"response_format": {"type": "xml"}}, "'response_format' must be"),
    ({"response_format": "json"}, "'response_format' must be"),
    ({"response_format": {"type": "json_schema"}}, "'response_format.json_schema' must be an object"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "patternProperties": {}}}}},
     "unsupported JSON schema keyword 'patternProperties'"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "string", "format": "date", "maxLength": 9}}}},
     "'response_format.json_schema.schema': no string of format 'date' fits"),
    ({"response_format": {"type": "json_object", "schema": {"type": "array"}}},
     "this schema allows no object"),
    ({"json_schema": {"type": "thing"}}, "'json_schema': unknown JSON schema type 'thing'"),
    ({"json_schema": {}, "response_format": {"type": "json_object"}}, "give either"),
]


@pytest.mark.parametrize("extra, message", BAD)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/completion"])
def test_bad_constraint_fields_are_a_400(tiny_server, path, extra, message):
    body = {"messages": MSGS} if path == "/v1/chat/completions" else {"prompt": "hi"}
    status, r = post_json(tiny_server.url + path, {**body, "max_tokens": 2, **extra})
    assert status == 400, r
    assert message in r["error"]["message"], r
    assert r["error"]["type"] == "invalid_request_error"
    assert "\n" not in r["error"]["message"]


@pytest.mark.parametrize("extra, message", [
    *BAD[:3], BAD[15],
    ({"tool_choice": "required"}, "'tool_choice' \"required\" needs 'tools'"),
    ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "not in 'tools'"),
])
def test_the_openai_client_sees_the_400s(client, extra, message):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="x", messages=MSGS, max_tokens=2, **extra)
    assert message in str(e.value)


def test_streamed_constrained_chunks_are_json_and_end_once(tiny_server):
    status, _, data = http_request("POST", tiny_server.url + "/v1/chat/completions", {
        "messages": MSGS, "temperature": 0, "max_tokens": 200, "stream": True,
        "response_format": {"type": "json_object"}})
    assert status == 200
    evs = sse_events(data)
    assert evs[-1] == "[DONE]"
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in evs[:-1])
    assert isinstance(json.loads(text), dict)
    assert [e["choices"][0]["finish_reason"] for e in evs[:-1]][-1] == "stop"


# ---- key order -------------------------------------------------------------------------------

# Listed on purpose out of alphabetical order, required and optional keys mixed.
ORDERED = {"type": "object",
           "properties": {"zone": {"enum": ["utc", "local"]},
                          "count": {"enum": [1, 2, 3]},
                          "flag": {"type": "boolean"},
                          "note": {"type": "string", "maxLength": 4},
                          "id": {"enum": [7, 8]}},
           "required": ["zone", "flag", "id"]}


def in_schema_order(value, schema):
    """The keys of a parsed object (dicts keep the order they were written in): the
    listed ones in the order of `properties`, and any others after them all."""
    listed = list(schema["properties"])
    keys = list(value)
    n = sum(1 for k in keys if k in schema["properties"])
    return keys[:n] == [k for k in listed if k in value] and not any(
        k in schema["properties"] for k in keys[n:])


@pytest.mark.parametrize("strict", [False, True])
def test_json_schema_keys_come_in_the_schemas_order(client, strict):
    # Unlisted keys are not allowed here: a random model in a free key (any string) may
    # not close it before max_tokens. tests/runtime/test_json_constraint.py has them.
    schema = {**ORDERED, "additionalProperties": False} if not strict else ORDERED
    replies = []
    for seed in [None, *range(6)]:
        kw = {"temperature": 0} if seed is None else {"temperature": 1.0, "seed": seed}
        r = client.chat.completions.create(
            model="x", messages=MSGS, max_tokens=200, **kw,
            response_format={"type": "json_schema", "json_schema": {
                "name": "o", "schema": schema, "strict": strict}})
        c = r.choices[0]
        assert c.finish_reason == "stop", c.message.content
        value = json.loads(c.message.content)
        check(value, schema)
        replies.append(value)
    assert all(in_schema_order(v, schema) for v in replies), [list(v) for v in replies]
