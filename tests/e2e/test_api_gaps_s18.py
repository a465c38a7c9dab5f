"""Three gaps in the HTTP API, each against what the API it copies does.

1. /completion and /infill without n_probs: a reply ended by its end token lists that
   token last in `tokens`, as llama-server does (its process_token adds every sampled
   token to the slot's list, the end token included, before it sees that it ends the
   reply; `tokens_predicted` counts it). Before, only a request with n_probs had it:
   `tokens: []` with `tokens_predicted: 1` for a reply that was only the end token.
   Streamed, the end token has its chunk (`"content": ""`, `"tokens": [id]`) before the
   last, as with n_probs. Served by the tiny real model (/completion) and, for /infill
   (which the tiny models cannot do: no fill-in-the-middle tokens), by test_api_tools'
   parrot given a fill-in-the-middle prompt.
2. `prediction` together with a field OpenAI refuses with it (n above 1, logprobs, a
   presence_penalty or frequency_penalty above 0, tools) is a 400 in OpenAI's error
   shape naming the field; the same fields at their defaults are taken.
3. A thinking model's chat `logprobs.content` lists the tokens of `message.content` only
   (streamed: of the content deltas, each chunk's logprobs the tokens of its own delta),
   not the reasoning's or the `<think>` tags'. Served by test_api_reasoning's thinking
   parrot (one token per byte, so the tokens' texts join into the content exactly).
"""
import pytest

from tests.e2e.conftest import http_request, post_json, sse_events
from tests.e2e.test_api_echo_logprobs import PROMPT
from tests.e2e.test_api_openai import MSGS
from tests.e2e.test_api_reasoning import (FORCED, THOUGHT, ask, client_of, qwen3,  # noqa: F401
                                          r1, streamed)
from tests.e2e.test_api_semantics import bad_request
from tests.e2e.test_api_tools import EOS, REPLY_END, REPLY_START, ParrotModel, serve_parrot

openai = pytest.importorskip("openai", reason="the openai client is not installed")


# ---- 1. the end token in /completion's and /infill's `tokens` -----------------------------

def assert_end_token_listed(url, path, body, eos) -> dict:
    """The whole answer lists the end token last in `tokens`, one per predicted token,
    and the streamed chunks' `tokens` join into the same list, the end token's chunk the
    one before the last."""
    status, r = post_json(url + path, body)
    assert status == 200, r
    assert r["stop_type"] == "eos" and "completion_probabilities" not in r
    assert r["tokens"][-1] == eos and len(r["tokens"]) == r["tokens_predicted"], r
    status, _, data = http_request("POST", url + path, {**body, "stream": True}, timeout=60)
    assert status == 200, data[:300]
    *_, end, last = chunks = sse_events(data)
    assert (end["stop"], end["content"], end["tokens"]) == (False, "", [eos])
    assert last["stop"] is True and last["tokens"] == []
    assert [t for c in chunks for t in c["tokens"]] == r["tokens"]
    assert "".join(c["content"] for c in chunks) == r["content"]
    return r


@pytest.mark.parametrize("bias", [100, 4])
def test_completion_lists_the_end_token_without_n_probs(tiny_server, tiny_model, bias):
    # +100: the end token at once (the reply is that token alone); +4: after a few tokens.
    eos = tiny_model.tokenizer.eos_id
    body = {"prompt": PROMPT, "n_predict": 12, "temperature": 0,
            "logit_bias": [[eos, bias]]}
    r = assert_end_token_listed(tiny_server.url, "/completion", body, eos)
    if bias == 100:
        assert (r["content"], r["tokens"], r["tokens_predicted"]) == ("", [eos], 1)
    else:
        assert r["tokens_predicted"] > 1
    # A reply cut by its limit has no end token to list.
    status, cut = post_json(tiny_server.url + "/completion", {**body, "n_predict": 1,
                                                              "logit_bias": []})
    assert status == 200 and cut["stop_type"] == "limit"
    assert len(cut["tokens"]) == cut["tokens_predicted"] == 1 and cut["tokens"] != [eos]


class FimParrot(ParrotModel):
    """The parrot, able to fill in the middle: its reply is the prefix, then EOS."""

    def fim_prompt(self, prefix, suffix, extra=(), prompt="", n_ctx=None, n_predict=-1):
        return [REPLY_START, *prefix.encode(), REPLY_END]

    def detokenize(self, ids, **kw):
        return bytes(t for t in ids if t < 256).decode("utf-8", "replace")


@pytest.fixture(scope="module")
def fim_parrot():
    yield from serve_parrot(FimParrot())


def test_infill_lists_the_end_token_without_n_probs(fim_parrot):
    body = {"input_prefix": "pass", "input_suffix": "\n", "temperature": 0}
    r = assert_end_token_listed(fim_parrot[0], "/infill", body, EOS)
    assert r["content"] == "pass" and r["tokens"] == [*b"pass", EOS]


# ---- 2. prediction with the fields OpenAI refuses with it -----------------------------------

PREDICTION = {"type": "content", "content": "Once upon a time"}


@pytest.mark.parametrize("extra, name", [
    ({"n": 2}, "'n'"),
    ({"logprobs": True}, "'logprobs'"),
    ({"logprobs": True, "top_logprobs": 2}, "'logprobs'"),
    ({"presence_penalty": 0.5}, "'presence_penalty'"),
    ({"frequency_penalty": 0.1}, "'frequency_penalty'"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "'tools'"),
])
def test_a_prediction_with_a_field_openai_refuses_with_it_is_a_400(tiny_server, extra, name):
    body = {"messages": MSGS, "max_tokens": 2, "prediction": PREDICTION, **extra}
    bad_request(tiny_server.url, "/v1/chat/completions", body, "'prediction'", name)
    client = openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="x", max_retries=0,
                           timeout=60)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="x", messages=MSGS, max_tokens=2,
                                       prediction=PREDICTION, **extra)
    assert "'prediction'" in e.value.body["message"] and name in e.value.body["message"]
    if "tools" in extra:
        return  # the tools' prompt does not fit the tiny model's 256-token context
    # Without the prediction the same request is served.
    status, r = post_json(tiny_server.url + "/v1/chat/completions",
                          {k: v for k, v in body.items() if k != "prediction"})
    assert status == 200, r


@pytest.mark.parametrize("extra", [
    {"n": 1}, {"logprobs": False}, {"presence_penalty": 0}, {"frequency_penalty": -0.5},
    {"tools": []}, {"max_completion_tokens": 2},
])
def test_those_fields_at_their_defaults_are_taken_with_a_prediction(tiny_server, extra):
    status, r = post_json(tiny_server.url + "/v1/chat/completions",
                          {"messages": MSGS, "max_tokens": 2, "temperature": 0,
                           "prediction": PREDICTION, **extra})
    assert status == 200, r
    assert "completion_tokens_details" in r["usage"]


@pytest.mark.parametrize("extra, name", [({"n": 2}, "'n'"), ({"logprobs": 1}, "'logprobs'"),
                                         ({"presence_penalty": 1}, "'presence_penalty'"),
                                         ({"n_cmpl": 2}, "'n_cmpl' above 1")])
def test_completions_refuse_the_same_with_a_prediction(tiny_server, extra, name):
    body = {"prompt": "Hi", "max_tokens": 2, "prediction": PREDICTION, **extra}
    bad_request(tiny_server.url, "/v1/completions", body, "'prediction'", name)


def test_the_refusal_names_llama_servers_n_cmpl_when_that_was_sent(tiny_server):
    body = {"messages": MSGS, "max_tokens": 2, "prediction": PREDICTION, "n_cmpl": 2}
    bad_request(tiny_server.url, "/v1/chat/completions", body, "'prediction'", "'n_cmpl' above 1")


# ---- 3. a thinking model's logprobs list the content's tokens ----------------------------

def lp_text(entries) -> str:
    return "".join(e["token"] for e in entries)


def whole_lp(url, body) -> dict:
    status, r = post_json(url + "/v1/chat/completions",
                          {**body, "temperature": 0, "logprobs": True, "top_logprobs": 1})
    assert status == 200, r
    return r["choices"][0]


def assert_streamed_lp_is_the_content(url, body, content) -> None:
    """Each streamed chunk's logprobs are the tokens of its own content delta, and none
    comes with reasoning alone."""
    _, text, _, deltas = streamed(url, {**body, "logprobs": True, "top_logprobs": 1})
    assert text == content
    status, _, data = http_request("POST", url + "/v1/chat/completions",
                                   {**body, "stream": True, "temperature": 0, "logprobs": True})
    assert status == 200
    choices = [e["choices"][0] for e in sse_events(data)[:-1] if e["choices"]]
    joined = ""
    for c in choices:
        lp = (c["logprobs"] or {}).get("content") or []
        assert lp_text(lp) == (c["delta"].get("content") or ""), c
        joined += lp_text(lp)
    assert joined == content


@pytest.mark.parametrize("reply, content", [
    (THOUGHT, "Paris."),
    ("<think>\n\n  a  b \n\n</think>\n\n\nAnswer \n", "Answer \n"),
    ("<think></think>Answer", "Answer"),
    ("<think>one</think>\n<think>two</think>\nAnswer", "Answer"),
    ("\n<think>x</think>y", "\ny"),  # whitespace before <think> stays content
    ("<think>cut mid-thought", ""),
    ("Plain <think>x</think> text", "Plain <think>x</think> text"),
    ("  No thinking at all.", "  No thinking at all."),
])
def test_logprobs_list_the_content_tokens_of_a_thinking_reply(qwen3, reply, content):
    url = qwen3[0]
    c = whole_lp(url, {"messages": ask(reply)})
    assert c["message"]["content"] == content
    assert lp_text(c["logprobs"]["content"]) == content
    assert_streamed_lp_is_the_content(url, {"messages": ask(reply)}, content)


def test_a_forced_open_thought_and_the_openai_client(r1):
    url = r1[0]
    on = {"messages": ask(FORCED), "chat_template_kwargs": {"enable_thinking": True}}
    c = whole_lp(url, on)
    assert (c["message"]["reasoning_content"], c["message"]["content"]) == ("I think.", "Answer.")
    assert lp_text(c["logprobs"]["content"]) == "Answer."
    assert_streamed_lp_is_the_content(url, on, "Answer.")
    # Cut mid-thought: no content, no logprobs entries.
    assert whole_lp(url, {**on, "max_tokens": 5})["logprobs"]["content"] == []
    r = client_of(url).chat.completions.create(
        model="x", messages=ask(FORCED), temperature=0, logprobs=True, top_logprobs=2,
        extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    choice = r.choices[0]
    assert choice.message.content == "Answer."
    assert "".join(e.token for e in choice.logprobs.content) == "Answer."
    assert all(len(e.top_logprobs) == 2 for e in choice.logprobs.content)
