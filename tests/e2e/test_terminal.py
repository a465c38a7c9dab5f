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
    p = run(["-m", "runtime.cli", "chat", str(TINY), "--max-tokens", str(MAX_TOK), "--temp", "0"],
            question + "\n")
    assert p.returncode == 0, p.stderr.decode()
    expected = greedy_answer(tiny_model, [{"role": "user", "content": question}])
    assert expected.strip(), "precondition: the greedy answer is not empty"
    assert p.stdout.decode("utf-8") == expected + "\n"


def test_prompt_flag_answers_once_as_a_piped_question_does(tiny_model):
    """`chatfile chat m.gguf -p TEXT`, as llama-cli and llamafile spell a one-shot
    question: the piped question's answer, with stdin not read (here: closed)."""
    question = "What is the capital of France?"
    args = ["-m", "runtime.cli", "chat", str(TINY), "--max-tokens", str(MAX_TOK), "--temp", "0"]
    piped = run(args, question + "\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8")
    p = subprocess.run(["sh", "-c", 'exec "$0" "$@" 0<&-', sys.executable, *args, "-p", question],
                       capture_output=True, cwd=ROOT, env=env, timeout=60)
    assert p.returncode == 0 and piped.returncode == 0, p.stderr.decode()
    assert p.stdout == piped.stdout and p.stdout.strip(), (p.stdout, piped.stdout)


def test_empty_prompt_flag_is_a_clear_error():
    p = run(["-m", "runtime.cli", "chat", str(TINY), "-p", "  "], "a piped question\n")
    assert p.returncode == 2 and b"Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith(b"chatfile: error: --prompt is empty"), p.stderr


def test_piped_empty_stdin_is_a_clear_error():
    if not (ROOT / "runtime" / "cli.py").exists():
        pytest.skip("runtime/cli.py is not written yet")
    p = run(["-m", "runtime.cli", "chat", str(TINY)], "")
    assert p.returncode != 0
    assert b"stdin is empty" in p.stderr and b"Traceback" not in p.stderr


def test_endless_piped_stdin_is_a_clear_error():
    """`yes | chatfile chat m.gguf` (or `< /dev/zero`) read forever, its memory growing."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run(["sh", "-c", 'exec "$0" -m runtime.cli chat "$1" < /dev/zero', sys.executable,
                        str(TINY)], capture_output=True, cwd=ROOT, env=env, timeout=120)
    assert p.returncode == 2 and b"Traceback" not in p.stderr, p.stderr
    assert b"stdin holds more than" in p.stderr


def test_closed_stdin_is_a_clear_error():
    # `0<&-`, as some launchers start programs: Python's sys.stdin is then None.
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run(["sh", "-c", 'exec "$0" -m runtime.cli chat "$1" 0<&-', sys.executable,
                        str(TINY)], capture_output=True, cwd=ROOT, env=env, timeout=60)
    assert p.returncode == 2 and b"Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith(b"chatfile: error: stdin is closed"), p.stderr


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
    assert b"chatfile: error: the message is too long for the context of 5 tokens" in p.stderr
    assert b"/reset" not in p.stderr  # nothing to reset in a one-question run


def session_script(ctx=256, max_tokens=MAX_TOK):
    return SCRIPT.replace("n_ctx=256", f"n_ctx={ctx}").replace(
        f"max_tokens={MAX_TOK}", f"max_tokens={max_tokens}")


def test_a_reply_cut_by_max_tokens_says_so(tiny_model):
    question = "What is the capital of France?"
    expected = greedy_answer(tiny_model, [{"role": "user", "content": question}], max_tokens=3)
    # Piped: the notice goes to stderr, stdout stays the answer only.
    p = run(["-m", "runtime.cli", "chat", str(TINY), "--max-tokens", "3", "--temp", "0"],
            question + "\n")
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout.decode("utf-8") == expected + "\n"
    assert p.stderr.decode().strip() == "[stopped: max tokens reached]"
    # Interactive: on its own line after the answer.
    p = run(["-c", session_script(max_tokens=3)], question + "\n/exit\n")
    assert p.returncode == 0, p.stderr.decode()
    assert f"> {expected}\n[stopped: max tokens reached]\n> " in p.stdout.decode("utf-8")


def test_a_reply_cut_by_the_context_says_so(tiny_model):
    # Greedy, the tiny model's answer to this runs on to the end of its 256-token context.
    p = run(["-m", "runtime.cli", "chat", str(TINY), "--max-tokens", "-1", "--temp", "0"],
            "Hello there\n")
    assert p.returncode == 0, p.stderr.decode()
    assert p.stderr.decode().strip() == "[stopped: the context is full]"
    assert b"[stopped" not in p.stdout
    p = run(["-m", "runtime.cli", "chat", str(TINY), "--max-tokens", "2000", "--temp", "0"],
            "Hello there\n")
    assert p.stderr.decode().strip() == "[stopped: the context is full]"  # not max tokens


def test_a_full_conversation_leaves_out_its_oldest_turns(tiny_model):
    """Once the conversation outgrows the context, the oldest turns are left out (once
    said), instead of every later message failing until /reset."""
    msgs = [f"Tell me about topic number {i} please, in some detail." for i in range(8)]
    p = run(["-c", session_script(max_tokens=20)], "\n".join(msgs + ["/exit"]) + "\n")
    assert p.returncode == 0, p.stderr.decode()
    out = p.stdout.decode("utf-8")
    assert b"error" not in p.stderr, p.stderr.decode()
    assert out.count("(older messages were left out to fit the context)") == 1, out
    assert out.count("> ") == len(msgs) + 1
    # The last answer is the one to the kept turns: the greedy answer to a prompt that
    # starts on a user turn and fits with the reply's reserve.
    last = out.split("> ")[-2].split("\n")[0]
    assert last and not last.startswith("(")


def test_a_message_too_long_for_the_context_alone(tiny_model):
    p = run(["-c", session_script()], "hello\n" + "x" * 400 + "\nhello\n/exit\n")
    assert p.returncode == 0, p.stderr.decode()
    err = p.stderr.decode()
    assert err.count("chatfile: error: the message is too long for the context of 256 tokens") == 1, err
    first = greedy_answer(tiny_model, [{"role": "user", "content": "hello"}])
    turns = [t.split("\n")[0] for t in p.stdout.decode("utf-8").split("> ")[1:]]
    assert turns[0] == first.split("\n")[0] and turns[1] == ""  # nothing answered
    second = greedy_answer(tiny_model, [{"role": "user", "content": "hello"},
                                        {"role": "assistant", "content": first},
                                        {"role": "user", "content": "hello"}])
    assert turns[2] == second.split("\n")[0]  # the conversation went on


# What the chat would send, seen by replacing the model's turn with an echo of it.
ECHO_SCRIPT = SCRIPT.replace("from runtime.terminal import chat", """from runtime.terminal import chat, _Chat
def echo(self, text):
    self._say("got " + repr(text))
    return text
_Chat.ask = echo""")


def test_multi_line_messages_and_slash_text():
    lines = ['"""first line', "  second line", 'third"""', '"""one line"""', "/xyz",
             "//hello", "/help", '"""', "", "a", '"""', "/exit"]
    p = run(["-c", ECHO_SCRIPT], "\n".join(lines) + "\n")
    assert p.returncode == 0, p.stderr.decode()
    turns = [t.split("\n")[0] for t in p.stdout.decode("utf-8").split("> ")[1:]]
    assert turns[0] == "... ... got 'first line\\n  second line\\nthird'"
    assert turns[1] == "got 'one line'"
    assert turns[2] == "unknown command /xyz (type /help; start a message with // to send it as text)"
    assert turns[3] == "got '/hello'"
    assert turns[4].startswith("commands:") and '"""' in turns[4]  # /help tells of it
    assert turns[5] == "... ... ... got 'a'"
    assert len(turns) == 7


def chat_in_process(model, n_ctx, max_tokens):
    """A _Chat on a real Engine, and the timings of each of its requests as the engine
    reports them (prompt tokens reused from the cache, prompt tokens prefilled)."""
    import io
    from runtime.engine import Engine
    from runtime.sampling import SamplingParams
    from runtime.terminal import _Chat
    engine = Engine(model, n_ctx)
    timings = []
    submit = engine.submit

    def submit_and_record(req):
        events = req.iter_events

        def iter_and_record(*a, **kw):
            for ev in events(*a, **kw):
                if ev.kind == "done":
                    timings.append((len(req.prompt_ids), ev.timings))
                yield ev
        req.iter_events = iter_and_record
        return submit(req)
    engine.submit = submit_and_record
    c = _Chat(model, engine, None, SamplingParams(temperature=0.0), max_tokens, io.StringIO())
    return c, timings


def test_leaving_out_old_turns_leaves_room_for_the_next_turns():
    """Once the context is full, leaving out just enough for each message would leave out
    one more pair every turn: the prompt's start would change every turn and the engine
    would prefill all of it every time. Leaving out more, once, keeps the next turn's
    prompt an extension of this one's, and the engine reuses it."""
    from runtime.model import Model
    model = Model.load(TINY)
    renders = []
    render = model.chat_prompt
    model.chat_prompt = lambda *a, **kw: renders.append(1) or render(*a, **kw)
    c, timings = chat_in_process(model, n_ctx=256, max_tokens=8)
    dropped_on = []
    for i in range(8):
        first_before, n_renders = c.history[:1], len(renders)
        assert c.ask(f"topic {i}") is not None
        if i and c.history[0] != first_before[0]:
            dropped_on.append(i)
        else:  # nothing left out: the prompt was rendered once, as before leaving out
            assert len(renders) - n_renders == 1
    assert dropped_on, "precondition: the conversation outgrew the context"
    for i in dropped_on:
        assert i + 1 not in dropped_on, f"turns {i} and {i + 1} both left out turns"
        if i + 1 < len(timings):
            prompt_len, _ = timings[i]
            _, after = timings[i + 1]
            assert after.cached_n >= prompt_len  # the whole previous prompt was reused


def test_a_long_message_leaves_out_only_the_turns_it_must(tiny_model):
    """When even the message alone leaves less free room than the slack kept after leaving
    turns out, the slack cannot be had: the fewest oldest pairs that fit are left out."""
    from runtime.engine import chat_prompt_ids
    c, _ = chat_in_process(tiny_model, n_ctx=256, max_tokens=8)
    budget_tok = 256 - 8
    c.history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                 {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]

    def prompt_len(text, n_pairs_left_out):
        kept = c.history[2 * n_pairs_left_out:]
        return len(chat_prompt_ids(tiny_model, c.messages(text, kept))[1])
    # A message whose prompt fits only without the oldest pair, and alone leaves less
    # than a quarter of the context free (besides the reply's reserve).
    text = next((t for t in ("x " * n for n in range(1, 256))
                 if prompt_len(t, 0) > budget_tok >= prompt_len(t, 1)
                 and prompt_len(t, 2) > budget_tok - 256 // 4), None)
    assert text, "precondition: such a message exists"
    assert c.ask(text) is not None
    assert [m["content"] for m in c.history[:3]] == ["c", "d", text]


def test_only_a_one_file_executable_waits_for_its_second_ctrl_c(monkeypatch):
    """The 0.3 s pause after a Ctrl+C is for PyInstaller's forwarded copy of the signal;
    `python -m` and a .pyz get one copy, and used to wait as well."""
    from runtime import terminal
    slept = []
    monkeypatch.setattr(terminal.time, "sleep", slept.append)
    monkeypatch.delattr(terminal.sys, "frozen", raising=False)
    terminal._let_interrupts_settle()
    assert slept == []
    monkeypatch.setattr(terminal.sys, "frozen", True, raising=False)
    clock = iter([0.0, 0.0, 0.5])
    monkeypatch.setattr(terminal.time, "monotonic", lambda: next(clock))
    terminal._let_interrupts_settle()
    assert slept == [0.3]
