"""The terminal chat and a thinking model: the `<think>` text is shown apart from the answer
(a "Thinking..." line, faint on a terminal with styles, "...done thinking." before the
answer, as `ollama run` shows it), goes to stderr when piped so that stdout is the answer
only, and stays in the conversation as the reply's reasoning_content. --reasoning-budget 0
renders the template with enable_thinking false, in `chat` and as `run`'s default.

The tiny fixture models do not think: these chats talk to test_api_reasoning's parrot,
whose greedy reply is the script written in the user's message.
"""
import io
import os
import subprocess
import sys

import pytest

from tests.conftest import FIXTURES
from tests.e2e.conftest import ROOT, TINY, post_json, start_server
from tests.e2e.test_api_reasoning import QWEN3, R1, ThinkingParrot
from tests.e2e.test_api_tools import N_CTX
from tests.e2e.test_terminal_pty import SCRIPT, SLOW, chat_factory, is_prompt  # noqa: F401

DIM, NORMAL = b"\x1b[2m", b"\x1b[0m"
ASKED = "<think>The user wants a city.</think>Paris."

# The chat of test_terminal_pty's SCRIPT, with the parrot under Qwen3's template for model.
PARROT = """
from tests.e2e.test_api_reasoning import QWEN3, ThinkingParrot
from tests.e2e.test_api_tools import N_CTX
m = ThinkingParrot(QWEN3)
m.context_size = lambda n_ctx: N_CTX
"""
STYLED = "import os; os.environ['TERM'] = 'xterm-256color'\n"  # a terminal with styles
MAX_12 = """
_chat = terminal.chat
terminal.chat = lambda m, **kw: _chat(m, **{**kw, "max_tokens": 12})
"""

one_reader = pytest.mark.parametrize("chat_factory", ["own line editor"], indirect=True)


def _answered(out: bytes) -> bool:
    return b"Paris.\r\n" in out and is_prompt(out)


@one_reader
def test_reasoning_is_shown_faint_under_thinking_then_the_answer(chat_factory):
    c = chat_factory(STYLED + PARROT)
    c.write(ASKED.encode() + b"\r")
    out = c.read_until(_answered)
    assert (DIM + b"Thinking...\r\nThe user wants a city.\r\n...done thinking." + NORMAL
            + b"\r\n\r\nParis.\r\n") in out, out
    assert b"<think>" not in out.split(b"Thinking...")[1]  # no tags: only the typed line had them
    c.write(b"\x04")
    assert c.proc.wait(30) == 0


NO_COLOR = "os.environ['NO_COLOR'] = '1'\n"


@one_reader
@pytest.mark.parametrize("setup", ["", STYLED + NO_COLOR], ids=["TERM=dumb", "NO_COLOR"])
def test_a_terminal_without_styles_gets_the_marks_without_escapes(chat_factory, setup):
    """TERM=dumb, or a terminal with styles and NO_COLOR set (no-color.org): the same
    marks, without escape codes."""
    c = chat_factory(setup + PARROT)
    c.write(ASKED.encode() + b"\r")
    out = c.read_until(_answered)
    shown = b"Thinking...\r\nThe user wants a city.\r\n...done thinking.\r\n\r\nParis.\r\n"
    assert shown in out, out
    assert DIM not in out and NORMAL not in out
    c.write(b"\x04")
    assert c.proc.wait(30) == 0


@one_reader
def test_a_reply_cut_by_max_tokens_mid_thought_resets_the_style(chat_factory):
    c = chat_factory(STYLED + PARROT + MAX_12)
    c.write(ASKED.encode() + b"\r")
    out = c.read_until(lambda b: b"[stopped: max tokens reached]" in b and is_prompt(b))
    # 12 tokens: "<think>The u"; the style ends before the note, and no "done thinking"
    shown = DIM + b"Thinking...\r\nThe u" + NORMAL + b"\r\n[stopped: max tokens reached]"
    assert shown in out, out
    assert b"done thinking" not in out
    c.write(b"\x04")
    assert c.proc.wait(30) == 0


@one_reader
def test_ctrl_c_mid_thought_resets_the_style_and_keeps_the_chat(chat_factory):
    c = chat_factory(STYLED + PARROT + SLOW)  # each forward pass 0.8 s: a long thought
    c.write(("<think>" + "step " * 60 + "</think>Done.").encode() + b"\r")
    c.read_until(lambda b: b"Thinking..." in b)
    c.ctrl_c()
    out = c.read_until(lambda b: b"[stopped]" in b and is_prompt(b))
    assert NORMAL + b" [stopped]\r\n" in out, out
    assert b"done thinking" not in out and b"Done." not in out
    c.write(b"/help\r")
    out = c.read_until(lambda b: b"/exit" in b and is_prompt(b))
    assert DIM not in out, out
    c.write(b"\x04")
    assert c.proc.wait(30) == 0


def test_piped_the_answer_alone_goes_to_stdout_and_the_reasoning_to_stderr():
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8", TERM="xterm-256color")
    r = subprocess.run([sys.executable, "-c", SCRIPT.format(tiny=str(TINY), hook=PARROT)],
                       input=ASKED, capture_output=True, text=True, cwd=ROOT, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Paris.\n"
    # stderr is no terminal here: the marks, no escapes
    assert "Thinking...\nThe user wants a city.\n...done thinking.\n\n" in r.stderr, r.stderr
    assert "\x1b" not in r.stderr


def _chat_in_process(model, lines: str, **kw) -> str:
    from runtime import terminal
    from runtime.sampling import SamplingParams
    model.context_size = lambda n_ctx: N_CTX
    out = io.StringIO()
    assert terminal.chat(model, n_ctx=N_CTX, stdin=io.StringIO(lines), stdout=out,
                         params=SamplingParams(temperature=0.0), interactive=True, **kw) == 0
    return out.getvalue()


def test_the_reasoning_stays_in_the_conversation_as_reasoning_content():
    model = ThinkingParrot(QWEN3)
    out = _chat_in_process(model, ASKED + "\nAnd Italy?\n")
    assert "Thinking...\nThe user wants a city.\n...done thinking.\n\nParis.\n" in out
    # The second turn's conversation: the first reply's answer as content, its reasoning
    # apart (Qwen3's template renders it where the model expects it, here not at all).
    assert model.seen[-1][1] == {"role": "assistant", "content": "Paris.",
                                 "reasoning_content": "The user wants a city."}
    assert "<think>" not in model.prompts[-1].split("<|im_start|>assistant")[1]


def test_a_prompt_that_opens_think_starts_the_reply_inside_it():
    """DeepSeek-R1-Distill's template ends the prompt with `<think>` (with enable_thinking
    true): the reply writes only `</think>`, and what comes before it is reasoning."""
    model = ThinkingParrot(R1)
    out = _chat_in_process(model, "I think.</think>Answer.\n",
                           template_kwargs={"enable_thinking": True})
    assert model.prompts[-1].endswith("<think>\n")
    assert "Thinking...\nI think.\n...done thinking.\n\nAnswer.\n" in out, out


# ---- --reasoning-budget ---------------------------------------------------------------------

QWEN3_FILE = FIXTURES / "templates" / "Qwen-Qwen3-0.6B.jinja"
THINKING_OFF = "<|im_start|>assistant\n<think>\n\n</think>\n\n"  # Qwen3's, enable_thinking false
THINKING_ON = "<|im_start|>assistant\n"

# `chatfile chat` as runtime.cli runs it, telling on stderr each prompt the template renders.
RENDERS = """
import sys
from runtime import cli
from runtime.model import Model
render = Model.chat_prompt
def told(self, messages, **kw):
    text = render(self, messages, **kw)
    print("rendered:", repr(text), file=sys.stderr, flush=True)
    return text
Model.chat_prompt = told
sys.exit(cli.main(sys.argv[1:]))
"""


def _last_render(*args) -> str:
    r = subprocess.run([sys.executable, "-c", RENDERS, "chat", str(TINY), "--chat-template",
                        str(QWEN3_FILE), "-p", "Hi", "-n", "1", "--temp", "0", *args],
                       capture_output=True, text=True, cwd=ROOT, timeout=180,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    import ast
    return ast.literal_eval([ln for ln in r.stderr.splitlines()
                             if ln.startswith("rendered: ")][-1][len("rendered: "):])


def test_chat_reasoning_budget_0_renders_enable_thinking_false():
    assert _last_render("--reasoning-budget", "0").endswith(THINKING_OFF)
    assert _last_render().endswith(THINKING_ON)  # -1, the default: the template's own


def test_run_reasoning_budget_0_is_the_default_of_requests_that_do_not_say():
    h = start_server(TINY, "--chat-template", QWEN3_FILE, "--reasoning-budget", "0",
                     "--port", "19410")
    try:
        hi = [{"role": "user", "content": "Hi"}]
        status, r = post_json(h.url + "/apply-template", {"messages": hi})
        assert status == 200, r
        assert r["prompt"].endswith(THINKING_OFF), r
        # A request's own chat_template_kwargs win, as in llama-server.
        status, r = post_json(h.url + "/apply-template", {
            "messages": hi, "chat_template_kwargs": {"enable_thinking": True}})
        assert status == 200 and r["prompt"].endswith(THINKING_ON), r
        status, r = post_json(h.url + "/v1/chat/completions", {"messages": hi, "max_tokens": 1})
        assert status == 200, r
    finally:
        h.stop()


@pytest.mark.parametrize("budget", ["-2", "2147483648"])
def test_a_reasoning_budget_below_minus_1_or_past_int32_is_refused(budget, capsys):
    from runtime import cli
    assert cli.main(["chat", str(TINY), "--reasoning-budget", budget, "-p", "Hi"]) == 2
    assert "--reasoning-budget must be -1 (unlimited thinking), 0 (no thinking) or a number" \
        in capsys.readouterr().err
