"""llama-server's reasoning budget: --reasoning-budget N (and --reasoning-budget-message),
a request's reasoning_budget_tokens (or thinking_budget_tokens) and reasoning_budget_message.
Once N tokens of a thought are generated, the message and `</think>` are forced, token by
token, through the ordinary generation path: they are in the reply as if the model had
written them, counted in usage and against max_tokens, and the reply up to the cut is
the one without a budget.

Most tests use test_api_reasoning's parrot (its greedy reply is the script in the
request, byte by byte, whatever came before: after a forced sequence it goes on with the
script's bytes at that position); the last ones run the tiny real model under
DeepSeek-R1-Distill's template, which opens `<think>` in the prompt.
"""
import json

import pytest

from runtime import reasoning
from runtime.engine import Engine, Request, chat_prompt_ids
from runtime.sampling import SamplingParams
from tests.conftest import FIXTURES
from tests.e2e.conftest import TINY, post_json, start_server
from tests.e2e.test_api_reasoning import QWEN3, R1, ThinkingParrot, ask, qwen3, streamed, whole  # noqa: F401
from tests.e2e.test_api_tools import N_CTX, TOOLS

THOUGHT = "<think>\nOne two three four five six seven eight.\n</think>\n\nParis."
OPENED = len("<think>")
CLOSE = "</think>"


def budgeted(script: str, n: int, message: str = "") -> str:
    """The parrot's raw reply to `script` under a budget of n: the script up to the cut,
    the forced text, then the script again from where the forced text ends."""
    cut = OPENED + n
    forced = message + CLOSE
    return script[:cut] + forced + script[cut + len(forced):]


def test_the_budget_forces_the_end_of_the_thought_after_n_tokens(qwen3):
    url = qwen3[0]
    raw = {"messages": ask(THOUGHT), "reasoning_format": "none"}
    assert whole(url, raw)["message"]["content"] == THOUGHT  # no budget: as written
    for n in (0, 5, 12):
        want = budgeted(THOUGHT, n)
        c = whole(url, {**raw, "reasoning_budget_tokens": n})
        assert c["message"]["content"] == want, n
        # streamed: the forced text comes as the model's own
        assert streamed(url, {**raw, "reasoning_budget_tokens": n})[1] == want
    # Split as llama-server splits it: the thought's first 5 tokens, stripped
    c = whole(url, {"messages": ask(THOUGHT), "reasoning_budget_tokens": 5})
    assert c["message"]["reasoning_content"] == "One"
    r, t, finish, _ = streamed(url, {"messages": ask(THOUGHT), "reasoning_budget_tokens": 5})
    assert (r, finish) == ("One", "stop")
    # A budget the thought stays within changes nothing.
    c = whole(url, {**raw, "reasoning_budget_tokens": 1000})
    assert c["message"]["content"] == THOUGHT


def test_the_message_and_the_old_field_name(qwen3):
    url = qwen3[0]
    raw = {"messages": ask(THOUGHT), "reasoning_format": "none"}
    c = whole(url, {**raw, "thinking_budget_tokens": 4, "reasoning_budget_message": " Enough."})
    assert c["message"]["content"] == budgeted(THOUGHT, 4, " Enough.")
    # Both names: reasoning_budget_tokens wins; -1 is "no budget" (the server's default).
    c = whole(url, {**raw, "thinking_budget_tokens": 4, "reasoning_budget_tokens": 6})
    assert c["message"]["content"] == budgeted(THOUGHT, 6)
    c = whole(url, {**raw, "reasoning_budget_tokens": -1})
    assert c["message"]["content"] == THOUGHT


def test_forced_tokens_count_in_usage_and_against_max_tokens(qwen3):
    url = qwen3[0]
    raw = {"messages": ask(THOUGHT), "reasoning_format": "none", "reasoning_budget_tokens": 3}
    want = budgeted(THOUGHT, 3)
    status, r = post_json(url + "/v1/chat/completions", {**raw, "temperature": 0})
    assert status == 200, r
    assert r["usage"]["completion_tokens"] == len(want.encode()) + 1  # + the end token
    # max_tokens cuts the forced sequence like any other text
    limit = OPENED + 3 + 4
    c = whole(url, {**raw, "max_tokens": limit})
    assert (c["message"]["content"], c["finish_reason"]) == (want[:limit], "length")


def test_a_prompt_that_opens_the_thought_counts_from_the_first_token():
    from tests.e2e.test_api_reasoning import serve_thinking
    gen = serve_thinking(R1)
    url, model = next(gen)
    try:
        script = "I think about it for a while.\n</think>\n\nAnswer."
        on = {"messages": ask(script), "chat_template_kwargs": {"enable_thinking": True},
              "reasoning_format": "none", "reasoning_budget_tokens": 7,
              "reasoning_budget_message": "..."}
        c = whole(url, on)
        assert model.prompts[-1].endswith("<think>\n")
        forced = "..." + CLOSE
        assert c["message"]["content"] == script[:7] + forced + script[7 + len(forced):]
    finally:
        gen.close()


CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "<think>Paris"}}\n</tool_call>'


def test_a_tool_call_after_the_thought_is_never_cut(qwen3):
    """The budget counts the thought alone: text after `</think>`, a tool call too, is
    never forced, even one that writes `<think>` (which is not a new thought there)."""
    url = qwen3[0]
    script = "<think>\nWeather.\n</think>\n\n" + CALL
    c = whole(url, {"messages": ask(script), "tools": TOOLS, "reasoning_budget_tokens": 9})
    assert c["finish_reason"] == "tool_calls", c
    assert c["message"]["reasoning_content"] == "Weather."
    assert [(x["function"]["name"], json.loads(x["function"]["arguments"]))
            for x in c["message"]["tool_calls"]] == [("get_weather", {"city": "<think>Paris"})]


@pytest.mark.parametrize("field, value", [
    ("reasoning_budget_tokens", -2), ("reasoning_budget_tokens", 1.5),
    ("reasoning_budget_tokens", "5"), ("reasoning_budget_tokens", True),
    ("reasoning_budget_tokens", 2**31), ("thinking_budget_tokens", -7),
    ("reasoning_budget_message", 5)])
def test_bad_values_are_refused_with_400(qwen3, field, value):
    for route, body in (("/v1/chat/completions", {"messages": ask("Hi")}),
                        ("/completion", {"prompt": "Hi"})):
        status, r = post_json(qwen3[0] + route, {**body, field: value})
        assert status == 400, (route, r)
        assert f"'{field}'" in r["error"]["message"], r


def test_completion_takes_the_budget_of_the_request(qwen3):
    """/completion and /v1/completions (llama-server reads the same fields on both): a
    prompt that ends with `<think>` opened a thought."""
    url = qwen3[0]
    # the parrot's script between REPLY_START and REPLY_END, its reply after PROMPT_END
    prompt = "\x02" + "x y z w v u t s." + "\x03<think>\n\x1f"
    status, r = post_json(url + "/completion", {"prompt": prompt, "temperature": 0,
                                                "reasoning_budget_tokens": 2})
    assert status == 200, r
    assert r["content"] == "x " + CLOSE + "x y z w v u t s."[2 + len(CLOSE):]
    status, v1 = post_json(url + "/v1/completions", {"prompt": prompt, "temperature": 0,
                                                     "max_tokens": 64,
                                                     "reasoning_budget_tokens": 2})
    assert status == 200, v1
    assert v1["choices"][0]["text"] == r["content"]
    status, bad = post_json(url + "/v1/completions", {"prompt": prompt,
                                                      "reasoning_budget_tokens": -2})
    assert status == 400 and "'reasoning_budget_tokens'" in bad["error"]["message"], bad


# ---- speculation ----------------------------------------------------------------------------

def test_speculation_never_drafts_past_the_cut():
    """The parrot's script is in its prompt, so prompt-lookup speculation drafts long runs
    of it, across the point where the budget cuts: the reply must be the one made a
    token at a time."""
    model = ThinkingParrot(QWEN3)
    text, ids = chat_prompt_ids(model, ask(THOUGHT))
    replies = {}
    for speculate in (True, False):
        engine = Engine(model, N_CTX, speculate=speculate)
        for n in (0, 1, 5, 9, 30):
            budget = reasoning.budget_for(model, n, " Stop.", reasoning.opens_thinking(text))
            req = Request(prompt_ids=ids, params=SamplingParams(temperature=0.0),
                          reasoning_budget=budget)
            replies[speculate, n] = "".join(ev.text for ev in engine.run(req))
    for n in (0, 1, 5, 9, 30):
        assert replies[True, n] == replies[False, n] == budgeted(THOUGHT, n, " Stop."), n


# ---- the tiny real model, and the flags -----------------------------------------------------

R1_FILE = FIXTURES / "templates" / "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja"


def _tokens(url, body) -> tuple:
    """(the reply's tokens' bytes, its content, its usage) at temperature 0; logprobs
    turn speculation off, so the same request without them is compared too."""
    base = {"messages": ask("Hi"), "chat_template_kwargs": {"enable_thinking": True},
            "reasoning_format": "none", "temperature": 0, "max_tokens": 16, **body}
    status, r = post_json(url + "/v1/chat/completions", {**base, "logprobs": True})
    assert status == 200, r
    toks = [bytes(e["bytes"]) for e in r["choices"][0]["logprobs"]["content"]]
    status, plain = post_json(url + "/v1/chat/completions", base)  # speculated
    assert status == 200, plain
    content = r["choices"][0]["message"]["content"]
    assert plain["choices"][0]["message"]["content"] == content
    return toks, content, r["usage"]


def _pieces(text: str) -> list:
    """The bytes of each token the tiny model's tokenizer makes of text, as forced. (Its
    SentencePiece vocabulary adds a space before the text, as llama.cpp's does.)"""
    from runtime.model import Model
    tok = Model.load(str(TINY), vocab_only=True).tokenizer
    return [tok.token_to_piece(t, special=True)
            for t in tok.tokenize(text, add_special=False, parse_special=True)]


def test_the_flags_set_the_default_and_a_request_overrides_it():
    h = start_server(TINY, "--chat-template", R1_FILE, "--reasoning-budget", "3",
                     "--reasoning-budget-message", " ok", "--port", "19200")
    try:
        free, _, _ = _tokens(h.url, {"reasoning_budget_tokens": 1000})
        cut, content, usage = _tokens(h.url, {})  # the server's budget: 3
        assert cut[:3] == free[:3]  # the reply up to the cut is the one without a budget
        forced = _pieces(" ok" + CLOSE)
        assert cut[3:3 + len(forced)] == forced, cut
        assert usage["completion_tokens"] == len(cut)
        assert content.startswith(b"".join(cut[:3 + len(forced)]).decode())
        five, _, _ = _tokens(h.url, {"reasoning_budget_tokens": 5,
                                     "reasoning_budget_message": ""})
        assert five[:5] == free[:5] and five[5:5 + len(_pieces(CLOSE))] == _pieces(CLOSE)
    finally:
        h.stop()


@pytest.mark.parametrize("value, said", [
    ("-2", "a number of tokens up to 2147483647"), ("2147483648", "up to 2147483647"),
    ("lots", "invalid int value: 'lots'"), ("1.5", "invalid int value: '1.5'")])
def test_bad_flags_exit_2_with_a_clear_message(value, said, capsys):
    from runtime import cli, server
    with pytest.raises(SystemExit) as e:  # argparse's own errors exit too
        code = cli.main(["chat", str(TINY), "--reasoning-budget", value, "-p", "Hi"])
        raise SystemExit(code)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err, err
    with pytest.raises(SystemExit) as e:  # `python -m runtime.server` takes the flags too
        server.main([str(TINY), "--reasoning-budget", value, "--port", "19201"])
    assert e.value.code == 2
    assert said in capsys.readouterr().err


def test_the_terminal_chat_takes_the_budget():
    from tests.e2e.test_terminal_reasoning import _chat_in_process
    out = _chat_in_process(ThinkingParrot(QWEN3), "<think>The user wants a city.</think>Paris.\n",
                           reasoning_budget=8, reasoning_budget_message=" Done.")
    assert "Thinking...\nThe user Done.\n...done thinking.\n\n" in out, out
