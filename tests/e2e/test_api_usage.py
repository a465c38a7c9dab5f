"""The server used as applications use an OpenAI-compatible local server: the `openai`
client and the fields that coding assistants, agent frameworks and newer OpenAI clients
send. Most run the tiny fixture model (its replies are noise, which is enough to show
that a request is taken or refused); tool calls run the "parrot" of test_api_tools,
whose reply is the last message, so a test can make it write two calls.
"""
import json

import pytest

from tests.e2e.conftest import TINY, http_request, post_json, sse_events, start_server
from tests.e2e.test_api_tools import TOOLS, TWO, ask, calls_of, serve_parrot

openai = pytest.importorskip("openai", reason="the openai client is not installed")

CHAT = "/v1/chat/completions"
TINY_CTX = 256     # the tiny fixture model's context (tests/e2e/test_api_errors.py)


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="none", max_retries=0,
                         timeout=60)


@pytest.fixture(scope="module")
def parrot_client():
    for url, _model in serve_parrot():
        yield openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=30)


# ---- a conversation longer than the context ---------------------------------------------

def too_long():
    return [{"role": "user", "content": "word " * 400}]


def check_overflow(err: dict):
    # llama-server's error, which clients recognise by its type, its counts or its words.
    assert err["type"] == "exceed_context_size_error"
    assert err["code"] == 400
    assert err["n_ctx"] == TINY_CTX and err["n_prompt_tokens"] > TINY_CTX
    assert (f"request ({err['n_prompt_tokens']} tokens) exceeds the available context size "
            f"({TINY_CTX} tokens)") in err["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_conversation_longer_than_the_context_gets_llama_servers_error(client, stream):
    with pytest.raises(openai.BadRequestError) as e:
        r = client.chat.completions.create(model="x", messages=too_long(), max_tokens=4,
                                           stream=stream)
        list(r) if stream else None
    check_overflow(e.value.body)
    # ... and the next request, of the right size, is answered.
    r = client.chat.completions.create(model="x", messages=ask("hi"), max_tokens=4)
    assert r.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("route, body", [
    ("/v1/completions", {"prompt": [5] * 300}),
    ("/completion", {"prompt": "word " * 400, "n_predict": 1}),
])
def test_every_route_says_the_context_is_exceeded_the_same_way(tiny_server, route, body):
    status, obj = post_json(tiny_server.url + route, body)
    assert status == 400
    check_overflow(obj["error"])


def test_a_prompt_that_fills_the_context_exactly_leaves_no_room(tiny_server):
    status, obj = post_json(tiny_server.url + "/completion", {"prompt": [5] * TINY_CTX})
    assert status == 400
    assert obj["error"]["n_prompt_tokens"] == TINY_CTX
    assert "which leaves no room for a reply" in obj["error"]["message"]


# ---- what newer clients send ----------------------------------------------------------

def test_fields_newer_clients_send_do_not_fail_a_request(client):
    r = client.chat.completions.create(
        model="x", max_completion_tokens=4, seed=7, user="me", metadata={"app": "x"},
        store=False, service_tier="auto", parallel_tool_calls=True,
        modalities=["text"], prediction={"type": "content", "content": "hello"},
        messages=[{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
                  {"role": "user", "name": "alice",
                   "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "!"}]}])
    assert r.choices[0].message.role == "assistant"


@pytest.mark.parametrize("part, what", [
    ({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}, "image"),
    ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, "audio"),
    ({"type": "file", "file": {"file_data": "AAAA", "filename": "a.pdf"}}, "file"),
])
def test_an_image_or_audio_part_is_a_clear_400(client, part, what):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="x", max_tokens=4, messages=[
            {"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]}])
    assert e.value.body["message"] == (f"messages[0]: {what} input is not supported: "
                                       f"this server's model reads text only")


@pytest.mark.parametrize("key, value", [
    ("modalities", ["text", "audio"]),
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("web_search_options", {}),
    ("reasoning_effort", "low"),
    ("verbosity", "low"),
    ("parallel_tool_calls", "no"),
])
def test_fields_that_would_change_the_reply_are_refused_by_name(tiny_server, key, value):
    body = {"messages": ask("hi"), "max_tokens": 4, key: value}
    status, obj = post_json(tiny_server.url + CHAT, body)
    assert status == 400
    assert obj["error"]["message"].startswith(f"'{key}'")


@pytest.mark.parametrize("key, value", [("modalities", ["text"]), ("audio", None),
                                        ("web_search_options", None),
                                        ("chat_template_kwargs", {}),
                                        ("chat_template_kwargs", {"enable_thinking": False})])
def test_those_fields_at_their_default_are_taken(tiny_server, key, value):
    body = {"messages": ask("hi"), "max_tokens": 2, key: value}
    assert post_json(tiny_server.url + CHAT, body)[0] == 200


THINKING_TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                     "{% if add_generation_prompt %}<assistant>{% endif %}"
                     "{% if enable_thinking is defined and not enable_thinking %}(no thinking){% endif %}")


@pytest.fixture(scope="module")
def thinking_server(tmp_path_factory):
    path = tmp_path_factory.mktemp("tpl") / "thinking.jinja"
    path.write_text(THINKING_TEMPLATE)
    h = start_server(TINY, "--chat-template", str(path))
    yield h
    h.stop()


@pytest.mark.parametrize("route", ["/apply-template", CHAT])
def test_chat_template_kwargs_reach_the_template(thinking_server, route):
    """llama-server's chat_template_kwargs (Qwen3's {"enable_thinking": false}) were
    dropped without a word: the model reasoned anyway. They are the template's variables."""
    body = {"messages": ask("hi"), "max_tokens": 1, "chat_template_kwargs": {"enable_thinking": False}}
    if route == "/apply-template":
        status, obj = post_json(thinking_server.url + route, body)
        assert status == 200 and obj["prompt"] == "<user>hi<assistant>(no thinking)", obj
        status, obj = post_json(thinking_server.url + route, {**body, "chat_template_kwargs": {}})
        assert status == 200 and obj["prompt"] == "<user>hi<assistant>", obj
    else:
        status, obj = post_json(thinking_server.url + route, body)
        assert status == 200, obj
        plain = post_json(thinking_server.url + route, {**body, "chat_template_kwargs": None})[1]
        assert obj["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"], (obj, plain)


@pytest.mark.parametrize("kwargs, says", [
    ([1], "must be an object"), ({"not a name": 1}, "is not a name"),
    ({"messages": []}, "is set by the server itself"), ({"clock": 1}, "is set by the server itself")])
def test_bad_chat_template_kwargs_are_refused(tiny_server, kwargs, says):
    for route in (CHAT, "/apply-template"):
        status, obj = post_json(tiny_server.url + route,
                                {"messages": ask("hi"), "max_tokens": 1, "chat_template_kwargs": kwargs})
        assert status == 400 and says in obj["error"]["message"], (route, obj)


# ---- parallel_tool_calls ----------------------------------------------------------------

@pytest.mark.parametrize("parallel, n_calls", [(None, 2), (True, 2), (False, 1)])
def test_parallel_tool_calls_false_gives_one_call(parrot_client, parallel, n_calls):
    kw = {} if parallel is None else {"parallel_tool_calls": parallel}
    r = parrot_client.chat.completions.create(model="x", messages=ask(TWO), tools=TOOLS,
                                              temperature=0, **kw)
    assert r.choices[0].finish_reason == "tool_calls"
    assert calls_of(r.choices[0].message) == [
        ("get_weather", {"city": "Paris"}), ("get_time", {})][:n_calls]


def test_parallel_tool_calls_false_streams_one_call(parrot_client):
    url = str(parrot_client.base_url).rstrip("/") + "/chat/completions"
    status, _, data = http_request("POST", url, {
        "messages": ask(TWO), "tools": TOOLS, "stream": True, "temperature": 0,
        "parallel_tool_calls": False})
    assert status == 200
    deltas = [d for e in sse_events(data)[:-1] for d in e["choices"][0]["delta"].get("tool_calls", [])]
    assert [(d["index"], d["function"]["name"], json.loads(d["function"]["arguments"]))
            for d in deltas] == [(0, "get_weather", {"city": "Paris"})]


def test_parse_with_dates_times_and_uuids(client):
    """openai's `.parse()` with a pydantic model that has datetime, date, time and UUID
    fields: their JSON-schema `format`s were a 400, so the call failed before the model
    said a word. The reply is held to each format and parses into the model."""
    import datetime
    import uuid

    from pydantic import BaseModel

    class Event(BaseModel):
        day: datetime.date
        at: datetime.time
        starts: datetime.datetime
        id: uuid.UUID
        confirmed: bool

    r = client.beta.chat.completions.parse(model="x", messages=ask("Plan an event."),
                                           response_format=Event, temperature=0, max_tokens=200)
    choice = r.choices[0]
    assert choice.finish_reason == "stop", choice
    event = choice.message.parsed
    assert isinstance(event, Event) and isinstance(event.id, uuid.UUID), choice.message.content
