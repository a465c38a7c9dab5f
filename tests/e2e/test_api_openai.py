"""The OpenAI-compatible API, driven by the real `openai` client against the real server.

Reference for every greedy reply: our own Model's greedy generation on the same prompt
ids, in this process (Model itself is tested against llama.cpp elsewhere).
"""
import pytest

from tests.e2e.conftest import greedy_reference, post_json

openai = pytest.importorskip("openai", reason="the openai client is not installed")


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="x", max_retries=0, timeout=60)


def chat_ids(model, messages):
    from runtime.engine import chat_prompt_ids
    return chat_prompt_ids(model, messages)[1]


MSGS = [{"role": "user", "content": "Tell me a story about a cat."}]


def test_models_list(client, tiny_server, tiny_model):
    models = client.models.list()
    assert len(models.data) == 1
    assert models.data[0].id == tiny_model.name
    m = client.models.retrieve(tiny_model.name)
    assert m.id == tiny_model.name and m.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_chat_completion_matches_model_greedy(client, tiny_model):
    r = client.chat.completions.create(model="x", messages=MSGS, temperature=0, max_tokens=24)
    ids = chat_ids(tiny_model, MSGS)
    ref_ids, ref_text = greedy_reference(tiny_model, ids, 24)
    c = r.choices[0]
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert c.message.role == "assistant"
    assert c.message.content == ref_text
    assert r.usage.prompt_tokens == len(ids)
    # completion_tokens counts the end token too when the model stopped on one
    assert r.usage.completion_tokens == len(ref_ids) + (c.finish_reason == "stop")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert c.finish_reason == ("length" if len(ref_ids) == 24 else "stop")


def test_greedy_is_deterministic(client):
    a = client.chat.completions.create(model="x", messages=MSGS, temperature=0, max_tokens=16)
    b = client.chat.completions.create(model="x", messages=MSGS, temperature=0, max_tokens=16)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.choices[0].message.content


def test_seeded_sampling_is_reproducible(client):
    kw = dict(model="x", messages=MSGS, temperature=1.0, max_tokens=16, seed=1234)
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw).choices[0].message.content
    assert a == b


def test_streaming_chat_equals_non_streaming(client, tiny_model):
    msgs = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Name three colours."}]}]
    full = client.chat.completions.create(model="x", messages=msgs, temperature=0, max_tokens=20)
    chunks = list(client.chat.completions.create(model="x", messages=msgs, temperature=0,
                                                 max_tokens=20, stream=True,
                                                 stream_options={"include_usage": True}))
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full.choices[0].message.content
    finals = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == full.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == full.usage.total_tokens
    assert len({ch.id for ch in chunks}) == 1


def test_max_tokens_gives_length(client, tiny_model):
    ids = chat_ids(tiny_model, MSGS)
    ref_ids, ref_text = greedy_reference(tiny_model, ids, 3)
    assert len(ref_ids) == 3, "precondition: no end token in the first 3 greedy tokens"
    r = client.chat.completions.create(model="x", messages=MSGS, temperature=0,
                                       max_completion_tokens=3)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3
    assert r.choices[0].message.content == ref_text


def test_completions_match_model_greedy_and_tokenize(client, tiny_server, tiny_model):
    prompt = "Once upon a time"
    r = client.completions.create(model="x", prompt=prompt, max_tokens=12, temperature=0)
    status, tok = post_json(tiny_server.url + "/tokenize", {"content": prompt, "add_special": True})
    assert status == 200
    ids = tok["tokens"]
    assert r.usage.prompt_tokens == len(ids)
    ref_ids, ref_text = greedy_reference(tiny_model, ids, 12, continuation=True)
    assert r.choices[0].text == ref_text
    assert r.object == "text_completion"
    assert r.usage.completion_tokens == len(ref_ids) + (r.choices[0].finish_reason == "stop")


def test_completions_stream_and_token_prompt(client, tiny_model):
    prompt = "The quick brown fox"
    full = client.completions.create(model="x", prompt=prompt, max_tokens=10, temperature=0)
    parts = list(client.completions.create(model="x", prompt=prompt, max_tokens=10,
                                           temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in parts if p.choices) == full.choices[0].text
    ids = tiny_model.tokenize(prompt, add_special=True, parse_special=True)
    by_ids = client.completions.create(model="x", prompt=ids, max_tokens=10, temperature=0)
    assert by_ids.choices[0].text == full.choices[0].text


def test_chat_logprobs(client, tiny_model):
    r = client.chat.completions.create(model="x", messages=MSGS, temperature=0, max_tokens=4,
                                       logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == 4
    for lp in content:
        tops = [t.logprob for t in lp.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        # greedy: the chosen token is the most likely one
        assert lp.token == lp.top_logprobs[0].token and lp.logprob == pytest.approx(tops[0])
    assert "".join(lp.token for lp in content) .strip() == r.choices[0].message.content.strip()


def test_errors_come_back_as_openai_errors(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="x", messages=[{"role": "wizard", "content": "hi"}])
    assert "role" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="x", messages=MSGS, n=129)
    assert "'n' must be between 1 and 128" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": "word " * 400}])
    assert "context" in str(e.value)


def test_n_predict_is_an_alias_of_max_tokens(client, tiny_model):
    # llama-server reads n_predict on every route, before max_completion_tokens and max_tokens.
    ids = chat_ids(tiny_model, MSGS)
    ref_ids, ref_text = greedy_reference(tiny_model, ids, 3)
    for extra in ({"n_predict": 3}, {"n_predict": 3, "max_tokens": 10, "max_completion_tokens": 9}):
        r = client.chat.completions.create(model="x", messages=MSGS, temperature=0, extra_body=extra)
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3, extra
        assert r.choices[0].message.content == ref_text
    # /v1/completions: n_predict, not OpenAI's default of 16 (greedy runs on past 20 here)
    r = client.completions.create(model="x", prompt="Once upon a time", temperature=0,
                                  extra_body={"n_predict": 20})
    assert r.usage.completion_tokens == 20 and r.choices[0].finish_reason == "length"


HELLO = [{"role": "user", "content": "Hello"}]   # greedy: an end token after 25 tokens


def test_ignore_eos_runs_to_the_limit_or_the_context_end(client, tiny_model):
    plain = client.chat.completions.create(model="x", messages=HELLO, temperature=0, max_tokens=40)
    assert plain.choices[0].finish_reason == "stop", "precondition: the model stops by itself"
    kw = dict(model="x", messages=HELLO, temperature=0, extra_body={"ignore_eos": True})
    r = client.chat.completions.create(max_tokens=40, **kw)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 40
    assert r.choices[0].message.content.startswith(plain.choices[0].message.content)
    # No limit at all: the reply ends where the context does, cleanly, as in llama-server.
    r = client.chat.completions.create(**kw)
    n_ctx = tiny_model.n_ctx_train
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens + r.usage.completion_tokens >= n_ctx
    chunks = list(client.chat.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == r.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"
    r = client.completions.create(model="x", prompt="a", max_tokens=12, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 12


def test_a_last_assistant_message_is_continued(client, tiny_model):
    """llama-server's prefill: the reply continues the last assistant message; it holds
    only the new text."""
    from runtime.engine import tokenize_prompt
    msgs = HELLO + [{"role": "assistant", "content": "Once upon a"}]
    ids = tokenize_prompt(tiny_model, tiny_model.chat_prompt(HELLO) + "Once upon a")
    ref_ids, ref_text = greedy_reference(tiny_model, ids, 16)
    r = client.chat.completions.create(model="x", messages=msgs, temperature=0, max_tokens=16)
    assert r.usage.prompt_tokens == len(ids)
    assert r.choices[0].message.content == ref_text
    chunks = list(client.chat.completions.create(model="x", messages=msgs, temperature=0,
                                                 max_tokens=16, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ref_text
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="x", messages=msgs + [{"role": "assistant", "content": "x"}])
    assert "2 or more assistant messages" in str(e.value)
    # A constraint would start after the prefill: prefill + reply would not be one value.
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="x", messages=msgs, max_tokens=4,
                                       response_format={"type": "json_object"})
    assert "prefill" in str(e.value) and "response_format" in str(e.value)
    # add_generation_prompt (llama-server's field) is honoured when nothing is prefilled
    r = client.chat.completions.create(model="x", messages=HELLO, temperature=0, max_tokens=1,
                                       extra_body={"add_generation_prompt": False})
    assert r.usage.prompt_tokens == len(tokenize_prompt(
        tiny_model, tiny_model.chat_prompt(HELLO, add_generation_prompt=False)))


def test_fields_we_cannot_honour_are_refused(client):
    fn = {"name": "f", "parameters": {"type": "object"}}
    for kw, named in ((dict(functions=[fn]), "'tools'"), (dict(function_call="auto"), "'tool_choice'"),
                      (dict(tools=[{"type": "nonfunction", "function": fn}]), "'tools[0]'"),
                      (dict(extra_body={"grammar": 'root ::= "a"'}), "'grammar'")):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="x", messages=MSGS, max_tokens=1, **kw)
        assert named in str(e.value), kw
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="x", prompt="def f(", suffix="\n    return 1", max_tokens=1)
    assert "'suffix'" in str(e.value) and "/infill" in str(e.value)
    r = client.completions.create(model="x", prompt="def f(", suffix="", max_tokens=1)
    assert r.choices[0].text is not None


def test_llama_server_web_ui_defaults_are_served(client):
    """llama.cpp's web UI sends max_tokens -1 ("no limit") to the OpenAI route with every
    message, and its sampler settings at their defaults; it used to get a 400. An empty
    'functions' list asks for nothing and is no reason to refuse either."""
    r = client.chat.completions.create(
        model="x", messages=MSGS, temperature=0, max_tokens=-1,
        extra_body={"samplers": "edkypmxt", "typical_p": 1, "xtc_probability": 0,
                    "dry_multiplier": 0, "dry_penalty_last_n": -1, "dynatemp_range": 0,
                    "timings_per_token": False, "functions": []})
    assert r.choices[0].finish_reason in ("stop", "length")
    c = client.completions.create(model="x", prompt="Hello", max_tokens=-1, temperature=0)
    assert c.usage.completion_tokens > 16  # -1 is no limit, not OpenAI's default of 16
