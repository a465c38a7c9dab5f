"""`chatfile chat` in the terminal: piped stdin answers one question; an interactive
session (driven through a pipe) keeps the conversation and obeys /reset and /system.

The expected answers are our Model's greedy generation on the same chat prompt.
"""
import os
import subprocess
import sys

import pytest

from tests.e2e.conftest import ROOT, TINY

MAX_TOK = 12


def greedy_answer(model, messages, max_tokens=MAX_TOK):
    from runtime.engine import chat_prompt_ids
    ids = chat_prompt_ids(model, messages)[1]
    out = []
    for t in model.generate(ids, max_tokens, temperature=0.0, n_ctx=model.n_ctx_train):
        if t in model.eog_ids:
            break
        out.append(t)
    return model.detokenize(out)


def run(args, stdin_text, timeout=60):
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, *args], input=stdin_text.encode("utf-8"),
                          capture_output=True, cwd=ROOT, env=env, timeout=timeout)


def test_piped_question_prints_the_greedy_answer(tiny_model):
    if not (ROOT / "runtime" / "cli.py").exists():
        pytest.skip("runtime/cli.py is not written yet")
    question = "What is the capital of France?"
    p = run(["-m", "runtime.cli", "chat", str(TINY), "--max-tokens", str(MAX_TOK)], question + "\n")
    assert p.returncode == 0, p.stderr.decode()
    expected = greedy_answer(tiny_model, [{"role": "user", "content": question}])
    assert expected.strip(), "precondition: the greedy answer is not empty"
    assert p.stdout.decode("utf-8") == expected + "\n"


def test_piped_empty_stdin_is_a_clear_error():
    if not (ROOT / "runtime" / "cli.py").exists():
        pytest.skip("runtime/cli.py is not written yet")
    p = run(["-m", "runtime.cli", "chat", str(TINY)], "")
    assert p.returncode != 0
    assert b"stdin is empty" in p.stderr and b"Traceback" not in p.stderr


SCRIPT = f"""
import sys
from runtime.model import Model
from runtime.sampling import SamplingParams
from runtime.terminal import chat
m = Model.load({str(TINY)!r})
sys.exit(chat(m, n_ctx=256, params=SamplingParams(temperature=0.0), max_tokens={MAX_TOK},
              interactive=True))
"""


def test_interactive_session_with_reset_and_system(tiny_model):
    lines = ["hello", "and then?", "/reset", "hello", "/system You are a pirate.", "hello",
             "/help", "/exit", "never read"]
    p = run(["-c", SCRIPT], "\n".join(lines) + "\n")
    assert p.returncode == 0, p.stderr.decode()
    out = p.stdout.decode("utf-8")
    # Every answer is printed after the "> " prompt and ends with a newline.
    turns = [t.split("\n")[0] for t in out.split("> ")[1:]]
    first = greedy_answer(tiny_model, [{"role": "user", "content": "hello"}])
    second = greedy_answer(tiny_model, [{"role": "user", "content": "hello"},
                                        {"role": "assistant", "content": first},
                                        {"role": "user", "content": "and then?"}])
    pirate = greedy_answer(tiny_model, [{"role": "system", "content": "You are a pirate."},
                                        {"role": "user", "content": "hello"}])
    assert turns[0] == first.split("\n")[0]
    assert turns[1] == second.split("\n")[0]          # the history was kept
    assert turns[2] == "(conversation reset)"
    assert turns[3] == first.split("\n")[0]           # after /reset: as if new
    assert turns[4].startswith("(system prompt set")
    assert turns[5] == pirate.split("\n")[0]
    assert turns[6].startswith("commands:")
    assert len(turns) == 8 and "never read" not in out  # /exit stopped reading
    assert first != pirate, "precondition: the system prompt changes the greedy answer"


def test_errors_go_to_stderr_and_answers_alone_to_stdout():
    """`chatfile chat m.gguf < q.txt > answer.txt` must not write an error into the answer."""
    p = run(["-m", "runtime.cli", "chat", str(TINY), "--ctx", "5"], "What is the capital of France?\n")
    assert p.returncode == 1
    assert p.stdout == b""
    assert b"chatfile: error: the conversation no longer fits in the context of 5 tokens" in p.stderr
    assert b"/reset" not in p.stderr  # nothing to reset in a one-question run
