"""A thinking model's reasoning on /v1/chat/completions: `<think>...</think>` comes back as
`reasoning_content` (whole: message.reasoning_content; streamed: delta.reasoning_content),
as llama-server's default reasoning_format gives it; "none" keeps the reply raw.

The tiny fixture models do not think, so these tests serve the real app (build_app on a
real socket, in this process) with test_api_tools' parrot: its greedy reply is a script
written in the request. Here the parrot renders real thinking models' templates (Qwen3's,
where the model writes `<think>` itself, and DeepSeek-R1-Distill's, which opens it in the
prompt), and frames the script at the start of the prompt instead of the end, so that the
prompt ends as the template ends it.
"""
import json
import threading

import numpy as np
import pytest

from tests.conftest import FIXTURES
from tests.e2e.conftest import http_request, post_json, sse_events
from tests.e2e.test_api_tools import (EOS, REPLY_END, REPLY_START, TOOLS, ParrotModel,
                                      ParrotSession, serve_parrot)

openai = pytest.importorskip("openai", reason="the openai client is not installed")

QWEN3 = (FIXTURES / "templates" / "Qwen-Qwen3-0.6B.jinja").read_text()
R1 = (FIXTURES / "templates" / "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja").read_text()
PROMPT_END = 0x1F   # ends the rendered template; whitespace to str.rstrip, so the prompt
                    # still ends with what the template wrote (R1's "<think>\n")

THOUGHT = "<think>\nThe user wants a city. Paris.\n</think>\n\nParis."


class ThinkingSession(ParrotSession):
    """The parrot's next byte: script[k] at the k-th position after PROMPT_END (a prefill
    after it takes the script's first bytes), the script being the bytes between the
    first REPLY_START and REPLY_END. `gate` (an Event) holds back script[gate_at:]."""

    def __init__(self, n_ctx, model):
        super().__init__(n_ctx)
        self.model = model

    def _logits_at(self, n):
        toks = self.tokens[:n]
        cut = max((i for i, t in enumerate(toks) if t == PROMPT_END), default=-1)
        start = toks.index(REPLY_START) if REPLY_START in toks else -1
        end = toks.index(REPLY_END) if REPLY_END in toks else -1
        script, done = toks[start + 1:end], n - cut - 1
        x = np.full(EOS + 1, -10.0, np.float32)
        x[script[done] if cut >= 0 and done < len(script) else EOS] = 10.0
        return x

    def eval(self, ids, all_logits=False):
        out = super().eval(ids, all_logits)
        m = self.model
        cut = max((i for i, t in enumerate(self.tokens) if t == PROMPT_END), default=-1)
        if m.gate_at is not None and cut >= 0 and len(self.tokens) - cut - 1 >= m.gate_at:
            assert m.gate.wait(60), "the test never opened the gate"
        return out


class ThinkingParrot(ParrotModel):
    def __init__(self, template):
        super().__init__()
        self.template, self.chat_template = template, template
        self.seen = []          # the messages of every rendered chat
        self.gate_at = None     # see ThinkingSession
        self.gate = threading.Event()

    def chat_prompt(self, messages, add_generation_prompt=True, tools=None,
                    template_kwargs=None):
        from runtime.chat_template import render
        self.seen.append(messages)
        script = (messages[-1].get("content") or "") if messages[-1]["role"] == "user" else ""
        text = render(self.template, messages, add_generation_prompt=add_generation_prompt,
                      tools=tools, **(template_kwargs or {}))
        self.prompts.append(text)
        return chr(REPLY_START) + script + chr(REPLY_END) + text + chr(PROMPT_END)

    def session(self, n_ctx):
        return ThinkingSession(n_ctx, self)


def serve_thinking(template):
    yield from serve_parrot(ThinkingParrot(template))


@pytest.fixture(scope="module")
def qwen3():
    """(url, model): the parrot under Qwen3's template (the model writes `<think>`)."""
    yield from serve_thinking(QWEN3)


@pytest.fixture(scope="module")
def r1():
    """(url, model): the parrot under DeepSeek-R1-Distill's template, which opens
    `<think>` in the prompt when enable_thinking is true."""
    yield from serve_thinking(R1)


def client_of(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=30)


def ask(text):
    return [{"role": "user", "content": text}]


def streamed(url, body) -> tuple:
    """(reasoning, content, finish_reason, deltas) of a streamed chat reply over HTTP."""
    status, _, data = http_request("POST", url + "/v1/chat/completions",
                                   {**body, "stream": True, "temperature": 0})
    assert status == 200, data
    evs = sse_events(data)
    assert evs[-1] == "[DONE]"
    deltas = [e["choices"][0]["delta"] for e in evs[:-1] if e["choices"]]
    finish = [e["choices"][0]["finish_reason"] for e in evs[:-1] if e["choices"]][-1]
    return ("".join(d.get("reasoning_content") or "" for d in deltas),
            "".join(d.get("content") or "" for d in deltas), finish, deltas)


def whole(url, body) -> dict:
    status, r = post_json(url + "/v1/chat/completions", {**body, "temperature": 0})
    assert status == 200, r
    return r["choices"][0]


# ---- whole and streamed ------------------------------------------------------------------

def test_reasoning_comes_back_as_reasoning_content_through_the_openai_client(qwen3):
    client = client_of(qwen3[0])
    r = client.chat.completions.create(model="x", messages=ask(THOUGHT), temperature=0)
    m = r.choices[0].message
    assert m.content == "Paris."
    assert m.model_extra["reasoning_content"] == "The user wants a city. Paris."
    # Streamed: the same two texts, the reasoning's deltas all before the answer's.
    thought, text, kinds = "", "", []
    for ch in client.chat.completions.create(model="x", messages=ask(THOUGHT), temperature=0,
                                             stream=True):
        if not ch.choices:
            continue
        d = ch.choices[0].delta
        r_piece = (d.model_extra or {}).get("reasoning_content")
        thought += r_piece or ""
        text += d.content or ""
        kinds += ["r"] * bool(r_piece) + ["c"] * bool(d.content)
    assert (thought, text) == ("The user wants a city. Paris.", "Paris.")
    assert kinds == sorted(kinds, reverse=True) and "c" in kinds  # r... then c...


@pytest.mark.parametrize("reply, reasoning, content", [
    # whitespace inside the block and after </think> is trimmed, as llama.cpp trims it
    ("<think>\n\n  a  b \n\n</think>\n\n\nAnswer \n", "a  b", "Answer \n"),
    ("<think></think>Answer", None, "Answer"),                     # an empty block: no field
    ("<think>one</think>\n<think>two</think>\nAnswer", "onetwo", "Answer"),  # blocks joined
    ("Plain <think>x</think> text", None, "Plain <think>x</think> text"),   # not at the start
    ("No thinking at all.", None, "No thinking at all."),
])
def test_whole_and_streamed_agree_with_llama_server(qwen3, reply, reasoning, content):
    c = whole(qwen3[0], {"messages": ask(reply)})
    assert c["message"].get("reasoning_content") == reasoning
    assert c["message"]["content"] == content
    r, t, finish, _ = streamed(qwen3[0], {"messages": ask(reply)})
    assert (r or None, t, finish) == (reasoning, content, "stop")


def test_reasoning_format_none_keeps_the_reply_raw_and_bad_names_are_refused(qwen3):
    c = whole(qwen3[0], {"messages": ask(THOUGHT), "reasoning_format": "none"})
    assert c["message"]["content"] == THOUGHT and "reasoning_content" not in c["message"]
    r, t, _, _ = streamed(qwen3[0], {"messages": ask(THOUGHT), "reasoning_format": "none"})
    assert (r, t) == ("", THOUGHT)
    for fmt in ("deepseek", "auto"):
        c = whole(qwen3[0], {"messages": ask(THOUGHT), "reasoning_format": fmt})
        assert c["message"]["content"] == "Paris."
    for bad in ("deepseek-legacy", "raw", 1, ["none"]):
        status, r = post_json(qwen3[0] + "/v1/chat/completions",
                              {"messages": ask(THOUGHT), "reasoning_format": bad})
        assert status == 400, r
        assert "'reasoning_format' must be one of 'none', 'deepseek', 'auto'" in r["error"]["message"]


# ---- a template that opens <think> -----------------------------------------------------------

FORCED = "I think.\n</think>\n\nAnswer."  # no <think>: the prompt has it


def test_a_prompt_that_opens_think_makes_the_reply_start_inside_it(r1):
    url = r1[0]
    on = {"messages": ask(FORCED), "chat_template_kwargs": {"enable_thinking": True}}
    c = whole(url, on)
    assert r1[1].prompts[-1].endswith("<｜Assistant｜><think>\n")
    assert (c["message"]["reasoning_content"], c["message"]["content"]) == ("I think.", "Answer.")
    assert streamed(url, on)[:3] == ("I think.", "Answer.", "stop")
    # Cut by max_tokens mid-thought: all of it is reasoning, the content empty.
    c = whole(url, {**on, "max_tokens": 5})
    assert c["finish_reason"] == "length"
    assert (c["message"]["reasoning_content"], c["message"]["content"]) == ("I thi", "")
    assert streamed(url, {**on, "max_tokens": 5})[:3] == ("I thi", "", "length")
    # Its template closes the thought when thinking is off: the reply is all content.
    off = {"messages": ask("Hello"), "chat_template_kwargs": {"enable_thinking": False}}
    c = whole(url, off)
    assert r1[1].prompts[-1].endswith("</think>")
    assert c["message"]["content"] == "Hello" and "reasoning_content" not in c["message"]


# ---- tool calls ---------------------------------------------------------------------------

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def test_tool_calls_are_read_after_the_reasoning_never_inside_it(qwen3):
    url = qwen3[0]
    mused = "<think>\nMaybe " + CALL + " would do.\n</think>\n\nNo call needed."
    c = whole(url, {"messages": ask(mused), "tools": TOOLS})
    assert c["finish_reason"] == "stop" and "tool_calls" not in c["message"]
    assert c["message"]["reasoning_content"] == "Maybe " + CALL + " would do."
    assert c["message"]["content"] == "No call needed."
    r, t, finish, _ = streamed(url, {"messages": ask(mused), "tools": TOOLS})
    assert (r, t, finish) == ("Maybe " + CALL + " would do.", "No call needed.", "stop")

    called = "<think>\nI need the weather.\n</think>\n\n" + CALL
    c = whole(url, {"messages": ask(called), "tools": TOOLS})
    assert c["finish_reason"] == "tool_calls" and c["message"]["content"] is None
    assert c["message"]["reasoning_content"] == "I need the weather."
    assert [(x["function"]["name"], json.loads(x["function"]["arguments"]))
            for x in c["message"]["tool_calls"]] == [("get_weather", {"city": "Paris"})]
    r, t, finish, deltas = streamed(url, {"messages": ask(called), "tools": TOOLS})
    assert (r, t, finish) == ("I need the weather.", "", "tool_calls")
    assert [d["tool_calls"][0]["function"]["name"] for d in deltas if d.get("tool_calls")] == [
        "get_weather"]


# ---- reasoning sent back -----------------------------------------------------------------------

def test_reasoning_sent_back_reaches_the_template_and_a_continue_goes_on_from_it(qwen3):
    url, model = qwen3
    # A past turn: Qwen3's template shows the reasoning of the turns after the last
    # question (a tool loop), from the message's reasoning_content.
    history = [*ask("Weather?"),
               {"role": "assistant", "content": "", "reasoning_content": "Use the tool.",
                "tool_calls": [{"id": "call_1", "type": "function", "function": {
                    "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    status, r = post_json(url + "/apply-template", {"messages": history})
    assert status == 200, r
    assert "<think>\nUse the tool.\n</think>" in r["prompt"]

    # A Continue of a reply cut mid-thought (the page sends it with its reasoning): the
    # model goes on thinking, and what it adds is reasoning.
    prefill = "<think>\nFirst, the city"
    c = whole(url, {"messages": [*ask(prefill + " is Paris.\n</think>\n\nParis."),
                                 {"role": "assistant", "content": "",
                                  "reasoning_content": "First, the city"}]})
    assert model.prompts[-1].endswith("<|im_start|>assistant\n")  # then the prefill
    assert (c["message"]["reasoning_content"], c["message"]["content"]) == (" is Paris.", "Paris.")
    # ... and of a reply cut in its answer: what it adds is answer.
    prefill = "<think>\nFirst, the city\n</think>\n\nThe cap"
    r, t, finish, _ = streamed(url, {"messages": [
        *ask(prefill + "ital is Paris."),
        {"role": "assistant", "content": "The cap", "reasoning_content": "First, the city"}]})
    assert (r, t, finish) == ("", "ital is Paris.", "stop")


def test_apply_template_writes_a_prefills_reasoning_as_the_chat_route_does(qwen3):
    """The page measures a chat with /apply-template: a Continue's reply with reasoning
    must measure as the chat route renders it (the reasoning was dropped there)."""
    url, model = qwen3
    msgs = [*ask("Capital?"),
            {"role": "assistant", "content": "The cap", "reasoning_content": "First, the city"}]
    status, r = post_json(url + "/apply-template", {"messages": msgs})
    assert status == 200, r
    whole(url, {"messages": msgs, "max_tokens": 1})
    # The chat route's prompt, then the prefill it continues (the parrot's marker between).
    prefill = "<think>\nFirst, the city\n</think>\n\nThe cap"
    assert r["prompt"].endswith(prefill), r["prompt"]
    assert r["prompt"][:-len(prefill)].rstrip("\x1f").endswith(model.prompts[-1].rstrip("\x1f"))
