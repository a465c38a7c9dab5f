"""The request fields of the last sessions, fuzzed: `samplers` and the sampler knobs around
it, `prediction`, `reasoning_format` (with the reasoning budget and logprobs), `echo` with
`logprobs`, `/infill` with `input_extra`, `n` and `best_of`, streamed and not.

hypothesis draws the requests, derandomized (the same examples on every run) and bounded,
so each test is deterministic and takes seconds. What is a bug: a 5xx, an error inside a
stream, a traceback or a warning in the server's output, a body that is not JSON, a
reply the `openai` client cannot parse, streamed and whole replies that disagree, or a
server that no longer answers. Valid values must be answered 200, wrong ones 400.

The tiny fixture models neither think nor fill in the middle: reasoning runs on the
thinking parrot of test_api_reasoning (its reply is a script in the request), /infill on
the tiny model with three of its special tokens taken as the FIM tokens.
"""
import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import TINY, http_request, post_json, sse_events
from tests.e2e.test_api_reasoning import QWEN3, R1, serve_thinking
from tests.e2e.test_api_tools import serve_parrot

openai = pytest.importorskip("openai", reason="the openai client is not installed")


def fuzz(max_examples):
    return settings(derandomize=True, database=None, deadline=None, max_examples=max_examples,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# Numbers at the edges of float64 and of the samplers' ranges, among ordinary ones.
EDGES = [0, 1, -1, 0.5, 2, 1e-7, 5e-324, 1e-310, 1e-300, 1e300, -1e300,
         1.7976931348623157e308, -1.7976931348623157e308]
ODD = st.one_of(st.none(), st.booleans(), st.text(max_size=4), st.lists(st.integers(), max_size=2),
                st.dictionaries(st.text(max_size=3), st.integers(), max_size=1))


def number(lo=None, hi=None):
    edges = [x for x in EDGES if (lo is None or x >= lo) and (hi is None or x <= hi)]
    return st.one_of(st.floats(lo, hi, allow_nan=False, allow_infinity=False),
                     st.sampled_from(edges))


def integer(lo, hi):
    return st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi, 0, 1]))


def mostly(valid):
    """valid values, and now and then one of the wrong type (a 400)."""
    return st.one_of(valid, valid, valid, valid, valid, ODD)


def one_wrong_at_most(fields: dict):
    """Request bodies of some of `fields` (key -> strategy of valid values), and in one
    body in four, one of them of the wrong type: the rest of the body still gets far."""
    wrong = st.one_of(st.none(), st.none(), st.none(),
                      st.tuples(st.sampled_from(sorted(fields)), ODD))
    return st.tuples(st.fixed_dictionaries({}, optional=fields), wrong).map(
        lambda bw: {**bw[0], **dict([bw[1]] if bw[1] else [])})


SAMPLER_NAMES = ["penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc",
                 "temperature", "infill", "adaptive_p", "nucleus", "temp", "typ", "TOP-K", "Min_P",
                 "topk", "typical_p", "tfs_z", "", "\u212a"]
SAMPLERS = st.one_of(st.lists(st.sampled_from(SAMPLER_NAMES), max_size=12),
                     st.text(alphabet="edskypmxtiaEZ\u00e9 ", max_size=20),
                     st.lists(st.one_of(st.sampled_from(SAMPLER_NAMES), st.integers()),
                              max_size=3),
                     ODD)
KNOBS = {
    "temperature": number(0, 2), "top_k": integer(-1, 2**31 - 1), "top_p": number(0, 1),
    "min_p": number(0, 1), "typical_p": number(), "min_keep": integer(0, 2**31 - 1),
    "top_n_sigma": number(), "xtc_probability": number(None, 1), "xtc_threshold": number(0, 1),
    "dry_multiplier": number(), "dry_base": number(),
    "dry_allowed_length": integer(-2**31, 2**31 - 1),
    "dry_penalty_last_n": integer(-1, 2**31 - 1),
    "dry_sequence_breakers": st.lists(st.text(max_size=50), min_size=1, max_size=4),
    "mirostat": st.sampled_from([0, 1, 2]), "mirostat_tau": number(), "mirostat_eta": number(),
    "dynatemp_range": number(), "dynatemp_exponent": number(), "adaptive_target": number(),
    "adaptive_decay": number(), "repeat_penalty": number(1e-3, 1e4),
    "repeat_last_n": integer(-1, 2**31 - 1), "presence_penalty": number(-2, 2),
    "frequency_penalty": number(-2, 2), "seed": integer(0, 2**64 - 1), "n": st.integers(1, 2),
}
SAMPLER_BODY = one_wrong_at_most({**KNOBS, "samplers": SAMPLERS, "stream": st.booleans(),
                                  "n_probs": integer(0, 100)})
ROUTES = {"/completion": {"prompt": "Once upon a time", "n_predict": 5},
          "/v1/completions": {"prompt": "Once upon a time", "max_tokens": 5},
          "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}],
                                   "max_tokens": 5}}


def answer(url, route, body):
    """(status, JSON answer or the stream's events); any 5xx, non-JSON body or error
    inside a stream fails."""
    status, headers, data = http_request("POST", url + route, body, timeout=120)
    assert status in (200, 400), (status, data[:400], body)
    if headers.get("content-type", "").startswith("text/event-stream"):
        events = sse_events(data)
        assert not [e for e in events if isinstance(e, dict) and "error" in e], (events, body)
        return status, events
    obj = json.loads(data)
    if status == 400:
        assert isinstance(obj["error"]["message"], str), obj
    return status, obj


def new_output(server, since: int) -> str:
    return "".join(server.lines[since:])


def assert_quiet(text: str) -> None:
    for bad in ("Traceback", "Warning", "error:"):
        assert bad not in text, text


# ---- samplers and their knobs ---------------------------------------------------------------

@fuzz(150)
@given(route=st.sampled_from(sorted(ROUTES)), fields=SAMPLER_BODY)
def test_sampler_fields_are_answered_200_or_400_and_nothing_else(tiny_server, route, fields):
    start = len(tiny_server.lines)
    answer(tiny_server.url, route, {**ROUTES[route], **fields})
    assert_quiet(new_output(tiny_server, start))


def test_the_server_still_answers_after_the_sampler_fuzz(tiny_server):
    status, r = post_json(tiny_server.url + "/completion",
                          {"prompt": "Once upon a time", "n_predict": 4, "temperature": 0})
    assert status == 200 and r["tokens_predicted"] >= 1, r


# The bug the fuzz found: a temperature too small to divide the logits by (float64 overflow)
# with the penalties or DRY after it in `samplers` made NaN probabilities, a 500
# ("inference failed: ValueError: Probabilities contain NaN"), streamed or not.
# llama.cpp holds the temperature in a float32, where 1e-310 is 0: the best token.
@pytest.mark.parametrize("route, chain", [("/completion", ["temperature", "penalties"]),
                                          ("/v1/completions", "td"),
                                          ("/v1/chat/completions", ["temperature", "dry"])])
def test_a_temperature_too_small_to_divide_by_takes_the_best_token(tiny_server, route, chain):
    body = {**ROUTES[route], "samplers": chain, "repeat_penalty": 1.5, "dry_multiplier": 1.0}
    status, greedy = post_json(tiny_server.url + route, {**body, "temperature": 0})
    assert status == 200, greedy
    for t in (1e-310, 5e-324):
        status, r = post_json(tiny_server.url + route, {**body, "temperature": t})
        assert status == 200, r
        assert reply_of(r) == reply_of(greedy)
        status, events = answer(tiny_server.url, route, {**body, "temperature": t, "stream": True})
        assert status == 200 and events


def reply_of(r: dict):
    """The reply of a whole answer of any of the three routes."""
    if "choices" not in r:
        return r["tokens"]
    return [c.get("text") or c["message"]["content"] for c in r["choices"]]


def test_extreme_sampler_numbers_print_no_warning():
    # numpy's RuntimeWarnings went to the server's console: top-n-sigma near float64's
    # largest number (an infinite band: every token kept) and a temperature the logits
    # overflow at (now the best token, as above).
    from runtime.sampling import Sampler, SamplingParams
    logits = np.random.default_rng(0).normal(size=512).astype(np.float32)
    for kw in (dict(top_n_sigma=1.7976931348623157e308), dict(temperature=5e-324),
               dict(temperature=1e-310, samplers=("temperature", "top_p"), top_p=0.5)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            tok = Sampler(SamplingParams(seed=1, **kw)).sample(logits, [5, 6, 5])
        assert 0 <= tok < 512


# ---- prediction, reasoning_format, the reasoning budget, logprobs ------------------------

@pytest.fixture(scope="module")
def thinkers():
    """{"qwen3": url, "r1": url}: the thinking parrot under Qwen3's template (the model
    writes <think>) and DeepSeek-R1-Distill's (the prompt opens it)."""
    gens = {name: serve_thinking(template) for name, template in (("qwen3", QWEN3), ("r1", R1))}
    yield {name: next(g)[0] for name, g in gens.items()}
    for g in gens.values():
        next(g, None)  # past serve_parrot's yield: the server shuts down


PIECES = ["<think>", "</think>", "\n", " ", "a", "\u00e9", "<th", "ink>", "</thi", "nk>", "x y",
          "\U0001F600", "<", "/"]
SCRIPT = st.lists(st.sampled_from(PIECES), max_size=10).map("".join)
PART = st.one_of(st.fixed_dictionaries({"type": st.just("text"), "text": SCRIPT}),
                 st.fixed_dictionaries({"type": st.sampled_from(["image_url", "refusal", ""]),
                                        "text": SCRIPT}))
PREDICTION = st.one_of(
    st.fixed_dictionaries({"type": st.just("content"),
                           "content": mostly(st.one_of(SCRIPT, st.lists(PART, max_size=3)))}),
    st.fixed_dictionaries({"type": mostly(st.just("text"))}), ODD)
CHAT_BODY = st.fixed_dictionaries({"script": SCRIPT, "model": st.sampled_from(["qwen3", "r1"])},
                                  optional={
    "reasoning_format": mostly(st.sampled_from(["auto", "deepseek", "none", "deepseek-legacy"])),
    "logprobs": st.booleans(), "top_logprobs": st.integers(0, 3), "max_tokens": st.integers(0, 30),
    "reasoning_budget_tokens": mostly(st.integers(-1, 5)),
    "reasoning_budget_message": st.sampled_from(["", "Enough.", "</think>", "<think>"]),
    "prediction": PREDICTION, "n": st.integers(1, 2), "enable_thinking": st.booleans(),
    "presence_penalty": st.sampled_from([0, -0.5, 0.5]), "tools": st.sampled_from([[], None])})


def chat_request(fields: dict) -> tuple:
    """(url key, body) of a drawn chat request."""
    b = dict(fields)
    which = b.pop("model")
    if "enable_thinking" in b:
        b["chat_template_kwargs"] = {"enable_thinking": b.pop("enable_thinking")}
    if not b.get("logprobs"):
        b.pop("top_logprobs", None)  # (alone: a 400 of its own, tested elsewhere)
    b["messages"] = [{"role": "user", "content": b.pop("script")}]
    return which, {**b, "temperature": 0}


def streamed_choices(events) -> dict:
    """{index: (reasoning, content, content's logprob bytes, finish_reason)} of a stream."""
    out = {}
    for ev in events[:-1]:
        for c in ev["choices"]:
            r, t, lp, _ = out.get(c["index"], ("", "", b"", None))
            d = c["delta"]
            lp += b"".join(bytes(e["bytes"]) for e in (c["logprobs"] or {}).get("content", []))
            out[c["index"]] = (r + (d.get("reasoning_content") or ""), t + (d.get("content") or ""),
                               lp, c["finish_reason"])
    return out


@fuzz(60)
@given(fields=CHAT_BODY)
def test_chat_fields_whole_and_streamed_agree_and_parse(thinkers, fields):
    which, body = chat_request(fields)
    url = thinkers[which]
    status, whole = answer(url, "/v1/chat/completions", body)
    if status == 400:
        return
    _, events = answer(url, "/v1/chat/completions",
                       {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    assert events[-2]["usage"] == whole["usage"], (events[-2], whole)
    streamed = streamed_choices(events)
    for c in whole["choices"]:
        m = c["message"]
        lp = b"".join(bytes(e["bytes"]) for e in (c["logprobs"] or {}).get("content", []))
        expected = (m.get("reasoning_content", ""), m["content"],
                    m["content"].encode() if body.get("logprobs") else b"", c["finish_reason"])
        assert streamed[c["index"]] == expected, (streamed, whole, body)
        if body.get("logprobs"):  # the content's tokens, and only those
            assert lp == m["content"].encode(), (lp, m, body)
    if body.get("prediction"):  # a speed hint: the reply is the one without it
        _, plain = answer(url, "/v1/chat/completions",
                          {k: v for k, v in body.items() if k != "prediction"})
        assert [c["message"] for c in plain["choices"]] == [c["message"] for c in whole["choices"]]
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
    extra = {k: v for k, v in body.items() if k != "messages"}
    client.chat.completions.create(model="x", messages=body["messages"], extra_body=extra)
    for chunk in client.chat.completions.create(model="x", messages=body["messages"],
                                                extra_body=extra, stream=True):
        chunk.model_dump()


# ---- echo with logprobs, n and best_of on /v1/completions -------------------------------------

IDS = st.lists(st.sampled_from([1, 5, 300, 301, 302, 400, 450]), min_size=1, max_size=10)
ECHO_BODY = st.fixed_dictionaries({
    "prompt": st.one_of(IDS, st.sampled_from(["", " ", "Once", "\U0001F600", "a b a b"]),
                        st.lists(IDS, min_size=2, max_size=2)),
    "logprobs": st.integers(0, 5), "max_tokens": st.integers(-1, 3), "echo": st.booleans(),
    "stream": st.booleans(), "n": st.integers(1, 2), "best_of": st.integers(1, 3),
    "temperature": st.sampled_from([0, 1.0]), "seed": st.integers(0, 3)}, optional={
    "prediction": st.fixed_dictionaries({"type": st.just("content"), "content": SCRIPT})})


def legacy_choices(r, stream: bool) -> list:
    """[(text, tokens, token_logprobs, text_offset)] per choice, a stream joined."""
    if not stream:
        return [(c["text"], *((c["logprobs"] or {}).get(k) for k in
                              ("tokens", "token_logprobs", "text_offset"))) for c in r["choices"]]
    out = {}
    for ev in r[:-1]:
        for c in ev["choices"]:
            text, *lists = out.get(c["index"], ("", None, None, None))
            lp = c["logprobs"]
            if lp is not None:
                lists = [(old or []) + lp[k] for old, k in
                         zip(lists, ("tokens", "token_logprobs", "text_offset"))]
            out[c["index"]] = (text + c["text"], *lists)
    return [out[i] for i in sorted(out)]


def same_logprobs(a, b) -> bool:
    return len(a) == len(b) and all(
        (x is None and y is None) or (x is not None and y is not None
                                      and math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-4))
        for x, y in zip(a, b))


@fuzz(50)
@given(fields=ECHO_BODY)
def test_echo_and_logprobs_agree_with_an_uncached_whole_answer(tiny_server, fields):
    # The prompt's logprobs may come from what earlier requests left in the session: they
    # must be what a whole evaluation without the cache gives, streamed or not.
    body = {k: v for k, v in fields.items() if v is not None}
    status, got = answer(tiny_server.url, "/v1/completions", body)
    if status == 400:
        return
    _, ref = answer(tiny_server.url, "/v1/completions",
                    {**body, "stream": False, "cache_prompt": False})
    got, ref = legacy_choices(got, body["stream"]), legacy_choices(ref, False)
    assert len(got) == len(ref), (got, ref, body)
    for g, r in zip(got, ref):  # (seeded when sampled: the same draws)
        assert (g[0], g[1], g[3]) == (r[0], r[1], r[3]), (g, r, body)
        assert same_logprobs(g[2] or [], r[2] or []), (g, r, body)


# ---- /infill with input_extra ----------------------------------------------------------------

@pytest.fixture(scope="module")
def fim_url():
    """The real app serving the tiny model, with <|user|>, <|assistant|> and <|system|>
    taken as its fill-in-the-middle tokens (it has none)."""
    from runtime.model import Model
    model = Model.load(TINY)
    model.tokenizer._ids.update(fim_pre=509, fim_suf=510, fim_mid=511)
    gen = serve_parrot(model)
    yield next(gen)[0]
    next(gen, None)


TEXT = st.one_of(st.text(max_size=30), st.sampled_from(["", "def f(x):\n    return", "a" * 3000,
                                                        "<|user|>", "\U0001F600"]))
INFILL_BODY = one_wrong_at_most({
    "input_prefix": TEXT, "input_suffix": TEXT, "prompt": TEXT,
    "input_extra": st.lists(mostly(st.fixed_dictionaries({"text": TEXT},
                                                         optional={"filename": TEXT})),
                            max_size=3),
    "n_predict": st.integers(-1, 5), "n": st.integers(1, 2), "n_probs": st.integers(0, 3),
    "temperature": st.sampled_from([0, 0.8]), "seed": st.integers(0, 3), "stream": st.booleans(),
    "samplers": st.sampled_from([["top_k", "top_p", "infill"], "kpi", ["infill"], [], "ti"])})


@fuzz(80)
@given(fields=INFILL_BODY)
def test_infill_fields_are_answered_200_or_400(fim_url, fields):
    answer(fim_url, "/infill", {"n_predict": 5, **fields})
