"""What an OpenAI-client user or a llama-server user expects of the API's fields, through
the real `openai` client and plain HTTP against the tiny fixture server: logprobs under a
JSON constraint or a forced tool call, ignore_eos with JSON, n, stop strings, the token
limits, seeds, logit_bias, penalties, usage and stream_options, finish_reason, and the
prompt forms of /v1/completions. Every bad value must be a one-line 400 naming the field.

The tiny model's weights are random: expected texts come from the server's own greedy
reply without the field under test (or from our Model, itself checked against llama.cpp),
never written by hand.
"""
import json
import math

import pytest

from tests.e2e.conftest import http_request, post_json, sse_events

openai = pytest.importorskip("openai", reason="the openai client is not installed")

MSGS = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="x", max_retries=0, timeout=60)


def chat(url, **body):
    return post_json(url + "/v1/chat/completions", {"messages": MSGS, **body})


def bad_request(url, path, body, *needles):
    """The body is a 400 in OpenAI's error shape whose one-line message names `needles`."""
    status, _, data = http_request("POST", url + path, body)
    assert status == 400, (body, status, data[:300])
    err = json.loads(data)["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == 400
    assert "\n" not in err["message"] and "Traceback" not in err["message"]
    for n in needles:
        assert n in err["message"], (body, err["message"])
    return err["message"]


# ---- logprobs report the distribution the token was drawn from ---------------------------

def fits(start, data: bytes) -> bool:
    from runtime import json_constraint as jc
    return jc.feed(start, data) is not None


def check_logprobs(content, start, greedy):
    """Each chosen token and its alternatives are tokens the constraint allows after the
    text before them; the chosen one is in the distribution (greedy: the best of it),
    and the listed probabilities add up to at most 1."""
    prefix = b""
    for pos in content:
        tops = pos["top_logprobs"]
        assert tops, pos
        for alt in tops:
            assert fits(start, prefix + bytes(alt["bytes"])), (prefix, alt)
        assert sum(math.exp(a["logprob"]) for a in tops) <= 1 + 1e-6
        assert fits(start, prefix + bytes(pos["bytes"])) and pos["logprob"] > -1e29
        if greedy:
            assert (pos["token"], pos["logprob"]) == (tops[0]["token"], tops[0]["logprob"])
        prefix += bytes(pos["bytes"])


@pytest.mark.parametrize("temperature", [0, 1.0])
def test_logprobs_under_a_json_constraint_are_those_of_allowed_tokens(tiny_server, temperature):
    """Found by the last session: logprobs were the model's before the constraint, so the
    chosen token could have e^-10 of the mass while the list named tokens the constraint
    forbids ("s", "z" where only "{" or whitespace may come)."""
    from runtime import json_constraint as jc
    status, r = chat(tiny_server.url, response_format={"type": "json_object"}, max_tokens=24,
                     temperature=temperature, seed=3, logprobs=True, top_logprobs=5)
    assert status == 200, r
    content = r["choices"][0]["logprobs"]["content"]
    assert content
    check_logprobs(content, jc.value_grammar(jc.any_object()), greedy=temperature == 0)
    # the first token can only be "{" or whitespace: its list is those, renormalised
    first = {bytes(a["bytes"]) for a in content[0]["top_logprobs"]}
    assert first <= {b"{", b" ", b"\t", b"\n"} and b"{" in first
    # asking for logprobs changes nothing of the reply itself
    status, plain = chat(tiny_server.url, response_format={"type": "json_object"}, max_tokens=24,
                         temperature=temperature, seed=3)
    assert plain["choices"][0]["message"] == r["choices"][0]["message"]


@pytest.mark.parametrize("temperature", [0, 1.0])
def test_logprobs_change_nothing_of_a_free_reply(tiny_server, temperature):
    # (greedy without logprobs drafts tokens by prompt lookup; with them, one at a time)
    replies = [chat(tiny_server.url, max_tokens=40, temperature=temperature, seed=9, **kw)[1]
               for kw in ({}, {"logprobs": True, "top_logprobs": 3})]
    assert replies[0]["choices"][0]["message"] == replies[1]["choices"][0]["message"]
    content = replies[1]["choices"][0]["logprobs"]["content"]
    if temperature == 0:
        assert all(p["token"] == p["top_logprobs"][0]["token"] for p in content)


def test_completions_logprobs_under_a_json_constraint(tiny_server):
    status, r = post_json(tiny_server.url + "/v1/completions", {
        "prompt": "JSON:", "max_tokens": 12, "temperature": 0, "logprobs": 3,
        "response_format": {"type": "json_object"}})
    assert status == 200, r
    lp = r["choices"][0]["logprobs"]
    assert lp["tokens"] and "".join(lp["tokens"]).lstrip().startswith("{")
    for tok, tok_lp, tops in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert tok_lp == max(tops.values()) and tops.get(tok) == tok_lp     # greedy: the best


# A fake model that writes its last message's text (test_api_tools' parrot), forced to call
# a tool: every byte it wants is refused until the call's text lets it in.
@pytest.fixture(scope="module")
def parrot_url():
    from tests.e2e.test_api_tools import serve_parrot
    for url, _ in serve_parrot():
        yield url


def test_logprobs_of_a_forced_tool_call_are_those_of_allowed_tokens(parrot_url):
    from tests.e2e.test_api_tools import QWEN_TEMPLATE, TOOLS
    from runtime.tool_calls import call_grammar
    status, r = post_json(parrot_url + "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "no call here"}], "tools": TOOLS,
        "tool_choice": "required", "temperature": 0, "max_tokens": 40, "logprobs": True,
        "top_logprobs": 3})
    assert status == 200, r
    content = r["choices"][0]["logprobs"]["content"]
    check_logprobs(content, call_grammar(TOOLS, None, QWEN_TEMPLATE), greedy=True)
    # where the call's text leaves one byte possible, that byte is certain
    forced = [p for p in content if len(p["top_logprobs"]) == 1]
    assert forced and all(p["logprob"] == 0.0 for p in forced)


# ---- ignore_eos with a JSON constraint ends where the value ends ----------------------------

BOOL_OBJECT = {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"],
               "additionalProperties": False}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("fmt", [{"type": "json_object"},
                                 {"type": "json_schema", "json_schema": {"name": "b", "schema": BOOL_OBJECT}}])
def test_ignore_eos_with_json_is_the_value_and_nothing_after_it(tiny_server, fmt, stream):
    """Found by the last session: the reply ended with one stray whitespace byte, the one
    the constraint allows after the value, as end-of-generation was banned."""
    body = {"messages": MSGS, "response_format": fmt, "ignore_eos": True, "temperature": 0,
            "max_tokens": 120, "stream": stream}
    status, _, data = http_request("POST", tiny_server.url + "/v1/chat/completions", body)
    assert status == 200, data[:300]
    if stream:
        events = [e for e in sse_events(data) if e != "[DONE]"]
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
        finish = events[-1]["choices"][0]["finish_reason"]
    else:
        choice = json.loads(data)["choices"][0]
        text, finish = choice["message"]["content"], choice["finish_reason"]
    assert finish == "stop", text
    json.loads(text)
    assert text == text.rstrip() and text.endswith("}")


def test_ignore_eos_with_a_llama_json_schema(tiny_server):
    status, r = post_json(tiny_server.url + "/completion", {
        "prompt": "JSON:", "json_schema": BOOL_OBJECT, "ignore_eos": True, "n_predict": 120,
        "temperature": 0})
    assert status == 200, r
    assert r["content"] == r["content"].rstrip() and isinstance(json.loads(r["content"])["a"], bool)
    assert r["stop_type"] == "eos" and not r["stopped_limit"]


def test_ignore_eos_without_a_constraint_still_runs_to_the_limit(tiny_server):
    status, r = chat(tiny_server.url, ignore_eos=True, temperature=0, max_tokens=20)
    assert status == 200 and r["choices"][0]["finish_reason"] == "length"
    assert r["usage"]["completion_tokens"] == 20


# ---- n, stop, token limits --------------------------------------------------------------

def test_n_above_the_cap_is_a_clear_400(client, tiny_server):
    # (n up to 128 makes that many choices: tests/e2e/test_api_choices.py)
    with pytest.raises(openai.BadRequestError, match="'n'"):
        client.chat.completions.create(model="x", messages=MSGS, n=129)
    bad_request(tiny_server.url, "/v1/completions", {"prompt": "a", "n": 129}, "'n'")
    bad_request(tiny_server.url, "/v1/completions", {"prompt": "a", "best_of": 129}, "best_of")
    r = client.chat.completions.create(model="x", messages=MSGS, n=1, max_tokens=2)
    assert len(r.choices) == 1


def spanning_stop(content, positions):
    """A stop string made of the last two characters of one token and the first two of
    the next (ASCII tokens, past the first), and where the reply's text has it first."""
    for i in range(1, len(positions) - 1):
        left, right = bytes(positions[i]["bytes"]), bytes(positions[i + 1]["bytes"])
        if left.isascii() and right.isascii() and left.strip() and right.strip():
            stop = (left[-2:] + right[:2]).decode()
            rest = b"".join(bytes(p["bytes"]) for p in positions[i + 1:])
            boundary = len(content) - len(rest.decode("utf-8", "replace"))
            at = content.find(stop)
            if boundary - len(left[-2:]) == at:       # its first occurrence spans the two
                return stop, content[:at]
    pytest.fail(f"no two ASCII tokens to stop across in {positions!r}")


def test_stop_as_a_string_or_a_list_spanning_tokens(tiny_server, client):
    kw = dict(model="x", messages=[{"role": "user", "content": "Once upon a time"}],
              max_tokens=16, temperature=0)
    ref = client.chat.completions.create(logprobs=True, **kw).choices[0]
    positions = [p.model_dump() for p in ref.logprobs.content]
    stop, want = spanning_stop(ref.message.content, positions)
    for s in (stop, [stop], ["\x00never", stop], [stop, "\x01nor", "\x02this", "\x03one"],
              [f"\x00{i}" for i in range(15)] + [stop]):   # up to 16 (OpenAI: 4, llama: any)
        r = client.chat.completions.create(stop=s, **kw).choices[0]
        assert r.message.content == want and r.finish_reason == "stop", s
        # streamed: no piece of the stop string is ever sent, then taken back
        pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
            stop=s, stream=True, **kw) if c.choices]
        assert "".join(pieces) == want, s
    # the same on /v1/completions and llama-server's /completion
    url, prompt = tiny_server.url, "Once upon a time"
    status, whole = post_json(url + "/completion", {"prompt": prompt, "n_predict": 16,
                                                    "temperature": 0})
    text = whole["content"]
    stop = text[3:7]
    for path, body in (("/v1/completions", {"max_tokens": 16}), ("/completion", {"n_predict": 16})):
        status, r = post_json(url + path, {"prompt": prompt, "temperature": 0, "stop": [stop], **body})
        got = r["choices"][0]["text"] if "choices" in r else r["content"]
        assert got == text[:text.find(stop)], path
    bad_request(url, "/v1/completions",
                {"prompt": "a", "stop": [str(i) for i in range(17)]}, "stop strings")
    for bad in (1, [1], {"a": 1}, [["x"]]):
        bad_request(url, "/v1/chat/completions", {"messages": MSGS, "stop": bad}, "'stop'")


def test_stop_in_a_streamed_chat_never_leaks(tiny_server):
    status, ref = chat(tiny_server.url, temperature=0, max_tokens=12)
    text = ref["choices"][0]["message"]["content"]
    assert len(text) >= 4
    stop = text[2:4]
    body = {"messages": MSGS, "temperature": 0, "max_tokens": 12, "stop": stop, "stream": True,
            "stream_options": {"include_usage": True}}
    status, _, data = http_request("POST", tiny_server.url + "/v1/chat/completions", body)
    events = sse_events(data)
    assert events[-1] == "[DONE]"
    deltas = [e["choices"][0]["delta"].get("content") or "" for e in events[:-2]]
    assert "".join(deltas) == text[:text.find(stop)]
    assert events[-3]["choices"][0]["finish_reason"] == "stop"
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] >= 1


def test_token_limits(tiny_server, client):
    url = tiny_server.url
    r = client.chat.completions.create(model="x", messages=MSGS, max_tokens=0)
    assert r.choices[0].message.content == "" and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 0 and r.usage.prompt_tokens > 0
    r = client.chat.completions.create(model="x", messages=MSGS, max_completion_tokens=3,
                                       temperature=0)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"
    # max_completion_tokens (OpenAI's newer name) wins over max_tokens, as in llama-server
    r = client.chat.completions.create(model="x", messages=MSGS, max_completion_tokens=2,
                                       max_tokens=5, temperature=0)
    assert r.usage.completion_tokens == 2
    # -1: no limit (llama-server's reading); anything more than the context is capped by it
    for n in (-1, 10**6, 2**31 - 1):
        status, r = chat(url, max_tokens=n, temperature=0, ignore_eos=True)
        assert status == 200 and r["choices"][0]["finish_reason"] == "length", n
        assert r["usage"]["total_tokens"] == 256     # the tiny model's context, filled
    for key in ("max_tokens", "max_completion_tokens", "n_predict"):
        for bad, needle in ((-2, "between -1 and"), (2**31, "between -1 and"), (1.5, "integer"),
                            ("3", "integer"), (True, "integer"), ([3], "integer")):
            bad_request(url, "/v1/chat/completions", {"messages": MSGS, key: bad}, key, needle)


# ---- sampling fields --------------------------------------------------------------------

def test_a_seed_makes_sampling_reproducible(tiny_server, client):
    kw = dict(model="x", messages=MSGS, temperature=1.2, max_tokens=12)
    texts = {}
    for seed in (1, 2, 3, 4):
        a = client.chat.completions.create(seed=seed, **kw).choices[0].message.content
        b = client.chat.completions.create(seed=seed, **kw).choices[0].message.content
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            seed=seed, stream=True, **kw) if c.choices)
        assert a == b == streamed, seed
        texts[seed] = a
    assert len(set(texts.values())) > 1   # the seed does choose the draw
    # seed -1 means a random one (llama-server's reading); any other 64-bit seed is taken
    status, _ = post_json(tiny_server.url + "/completion", {"prompt": "a", "seed": -1, "n_predict": 2})
    assert status == 200
    for seed in (-1, 2**64 - 1, -(2**63)):
        assert chat(tiny_server.url, seed=seed, max_tokens=2)[0] == 200
    for bad in (2**64, 1.5, "7"):
        bad_request(tiny_server.url, "/v1/chat/completions", {"messages": MSGS, "seed": bad}, "'seed'")


def test_logit_bias_takes_string_token_ids(tiny_server, client, tiny_model):
    from runtime.engine import chat_prompt_ids
    from tests.e2e.conftest import greedy_reference
    first = greedy_reference(tiny_model, chat_prompt_ids(tiny_model, MSGS)[1], 1)[0][0]
    # +100 on one token: every token is that one; -100 on the greedy first token: another
    forced = client.chat.completions.create(model="x", messages=MSGS, temperature=0, max_tokens=4,
                                            logit_bias={"5": 100}, logprobs=True)
    assert [p.bytes for p in forced.choices[0].logprobs.content] == \
        [list(tiny_model.tokenizer.token_to_piece(5))] * 4
    for key in (str(first), f" {first} "):
        other = client.chat.completions.create(model="x", messages=MSGS, temperature=0,
                                               max_tokens=1, logit_bias={key: -100}, logprobs=True)
        assert other.choices[0].logprobs.content[0].bytes != \
            list(tiny_model.tokenizer.token_to_piece(first))
    # (a key that is no number is a text, as llama-server reads it: one with no tokens is
    # refused)
    for bad, needle in (({"": 1}, "no tokens"), ({"5": 101}, "between -100 and 100"),
                        ({"99999": 1}, "out of range"), ({"-1": 1}, "out of range"),
                        ({"5": "1"}, "between -100 and 100"), ("5", "must be an object")):
        bad_request(tiny_server.url, "/v1/chat/completions",
                    {"messages": MSGS, "logit_bias": bad}, "'logit_bias'", needle)


def test_penalty_and_temperature_ranges(tiny_server):
    url = tiny_server.url
    for key in ("presence_penalty", "frequency_penalty"):
        for ok in (-2, -2.0, 0, 1.5, 2):
            assert chat(url, max_tokens=2, **{key: ok})[0] == 200, (key, ok)
        for bad, needle in ((2.5, "between -2 and 2"), (-3, "between -2 and 2"), ("1", "number"),
                            (None, None)):
            if bad is None:
                continue
            bad_request(url, "/v1/chat/completions", {"messages": MSGS, key: bad}, key, needle)
    bad_request(url, "/v1/chat/completions", {"messages": MSGS, "temperature": 2.5}, "temperature")
    bad_request(url, "/v1/chat/completions", {"messages": MSGS, "top_p": 1.5}, "top_p")
    # 1e999 is no JSON number Python writes: NaN and Infinity are refused as not JSON
    bad_request(url, "/v1/chat/completions",
                b'{"messages": [{"role": "user", "content": "a"}], "temperature": NaN}', "JSON")


# ---- usage, stream_options, finish_reason ---------------------------------------------------

def test_usage_counts_the_tokens(tiny_server, client, tiny_model):
    status, tpl = post_json(tiny_server.url + "/apply-template", {"messages": MSGS})
    prompt_ids = tiny_model.tokenize(tpl["prompt"], add_special=True, parse_special=True)
    r = client.chat.completions.create(model="x", messages=MSGS, temperature=0, max_tokens=7,
                                       logprobs=True)
    assert r.usage.prompt_tokens == len(prompt_ids)
    n_tok = len(r.choices[0].logprobs.content)
    # the end-of-generation token counts too, as in llama-server (it was generated)
    assert r.usage.completion_tokens == n_tok + (r.choices[0].finish_reason == "stop")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    c = client.completions.create(model="x", prompt=[1, 2, 3, 4], max_tokens=5, temperature=0)
    assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (4, 5)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_stream_options_include_usage(tiny_server, path):
    body = {"messages": MSGS} if "chat" in path else {"prompt": "Hello"}
    body.update(max_tokens=6, temperature=0)
    status, whole = post_json(tiny_server.url + path, body)
    for include in (True, False, None):
        opts = {} if include is None else {"stream_options": {"include_usage": include}}
        status, _, data = http_request("POST", tiny_server.url + path,
                                       {**body, "stream": True, **opts})
        events = sse_events(data)
        assert events[-1] == "[DONE]"
        with_usage = [e for e in events[:-1] if "usage" in e]
        if include:
            assert len(with_usage) == 1 and with_usage[0] is events[-2]
            assert with_usage[0]["choices"] == [] and with_usage[0]["usage"] == whole["usage"]
        else:
            assert with_usage == []
    for bad in ("yes", [], 1):
        bad_request(tiny_server.url, path, {**body, "stream": True, "stream_options": bad},
                    "stream_options")
    bad_request(tiny_server.url, path, {**body, "stream": True,
                                        "stream_options": {"include_usage": "yes"}}, "include_usage")


def test_finish_reasons(tiny_server, client):
    r = client.chat.completions.create(model="x", messages=MSGS, temperature=0, max_tokens=3)
    assert r.choices[0].finish_reason == "length"
    text = r.choices[0].message.content
    r = client.chat.completions.create(model="x", messages=MSGS, temperature=0, max_tokens=3,
                                       stop=[text[1:]] if len(text) > 1 else [text])
    assert r.choices[0].finish_reason == "stop"
    # a JSON reply that completes ends with "stop" at its last byte, before max_tokens
    r = client.chat.completions.create(model="x", messages=MSGS, temperature=0, max_tokens=120,
                                       response_format={"type": "json_schema", "json_schema": {
                                           "name": "b", "schema": BOOL_OBJECT}})
    assert r.choices[0].finish_reason == "stop" and isinstance(
        json.loads(r.choices[0].message.content)["a"], bool)


# ---- /v1/completions prompts and echo --------------------------------------------------------

def test_completion_prompt_forms(tiny_server, client, tiny_model):
    url = tiny_server.url
    text = "The cat sat"
    ids = tiny_model.tokenize(text, add_special=True)
    as_text = client.completions.create(model="x", prompt=text, max_tokens=6, temperature=0)
    as_ids = client.completions.create(model="x", prompt=ids, max_tokens=6, temperature=0)
    as_batch = client.completions.create(model="x", prompt=[text], max_tokens=6, temperature=0)
    assert as_text.choices[0].text == as_ids.choices[0].text == as_batch.choices[0].text
    assert as_ids.usage.prompt_tokens == len(ids)
    # an empty text is the start of a document: the BOS token alone, as OpenAI's
    # <|endoftext|> default prompt
    r = client.completions.create(model="x", prompt="", max_tokens=3, temperature=0)
    assert r.usage.prompt_tokens == 1 and r.choices[0].finish_reason in ("length", "stop")
    for bad, needle in (([], "non-empty"), ([[1], []], "'prompt[1]'"), ([1, 10**9], "out of range"),
                        ([1.5], "token ids"), ({"a": 1}, "prompt"), (None, "prompt")):
        body = {"max_tokens": 2} if bad is None else {"prompt": bad, "max_tokens": 2}
        bad_request(url, "/v1/completions", body, needle)


# ---- bad values are 400s, never a 500 ------------------------------------------------------

WEIRD = [None, True, 0, -1, 2.5, 1e308, 2**64, "", "x", [], [1], ["a"], [[1]], {}, {"a": 1}]
FIELDS = ["n", "stop", "max_tokens", "seed", "temperature", "top_p", "top_k", "min_p",
          "presence_penalty", "frequency_penalty", "repeat_penalty", "logit_bias", "logprobs",
          "top_logprobs", "stream_options", "response_format", "tools", "tool_choice",
          "json_schema", "ignore_eos", "n_probs", "echo", "suffix", "messages", "prompt",
          "samplers", "grammar", "min_keep", "post_sampling_probs", "lora"]


@pytest.mark.parametrize("path, base", [
    ("/v1/chat/completions", {"messages": MSGS, "max_tokens": 2}),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 2}),
    ("/completion", {"prompt": "hi", "n_predict": 2})])
def test_odd_field_values_are_answered_never_a_500(tiny_server, path, base):
    for key in FIELDS:
        for v in WEIRD:
            status, _, data = http_request("POST", tiny_server.url + path, {**base, key: v})
            assert status in (200, 400), (key, v, status, data[:200])
            reply = json.loads(data)
            if status == 400:
                assert "\n" not in reply["error"]["message"], (key, v)
