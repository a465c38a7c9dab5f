"""--reasoning-budget and --reasoning-budget-message baked into a bundle, as whoever ships
a thinking model's chat bakes them (`chatfile bundle --args "--reasoning-budget 8
--reasoning-budget-message 'Time is up.'"`): written into the trailer in full and as
typed, refused at bundle time when bad, used by the server and by `--cli`, and overridden
by the same flags given at start, as every baked option is (docs/shipping.md).

The tiny fixture model does not think: a chat template that ends the prompt with `<think>`
(as DeepSeek-R1's does) puts its reply inside a thought, which the budget then closes
with the message and `</think>`. llama-server's /props does not report the budget (its
default_generation_settings leave it out), so the replies are what is checked.

Fake stubs only (test_splice's shebang + zip .pyz; the runtime is this checkout's)."""
import shlex
import sys

import pytest

from runtime import __main__ as entry
from runtime import cli as runtime_cli
from runtime.embedded import read_trailer
from tests.bundler.test_bundle_user_qa import _bundle, keep_pytests_signals  # noqa: F401
from tests.bundler.test_bundle_user_qa2 import _start
from tests.bundler.test_ship_explore import MODEL
from tests.bundler.test_splice import pyz_stub  # noqa: F401 (a fixture)
from tests.e2e import conftest as e2e

# A reply that starts inside a thought: the prompt ends with `<think>`.
THINK_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                  "{% if add_generation_prompt %}assistant: <think>\n{% endif %}")
MESSAGE = "Time is up."
ODD_MESSAGE = "Il a dit « assez » — 'stop' \"now\" 日本"
BAKED = f"--temp 0 --reasoning-budget 8 --reasoning-budget-message '{MESSAGE}'"


def _think_bundle(capsys, tmp_path, stub, args: str = BAKED):
    """A bundle of the tiny model with THINK_TEMPLATE and `args` baked in."""
    template = tmp_path / "think.jinja"
    template.write_text(THINK_TEMPLATE)
    out = tmp_path / "think.pyz"
    code, err = _bundle(capsys, "--stub", stub, "-o", out, "--force",
                        f"--args=--chat-template {shlex.quote(str(template))} {args}")
    assert code == 0, err
    return out


@pytest.mark.parametrize("args, baked", [
    (BAKED, ("--temp", "0", "--reasoning-budget", "8", "--reasoning-budget-message", MESSAGE)),
    # abbreviations, written in full (a bundle's start looks for some flags by name)
    # (--reasoning-budget has none: each is also one of --reasoning-budget-message)
    ("--reasoning-budget-m 'x y' --reasoning-budget=0",
     ("--reasoning-budget-message", "x y", "--reasoning-budget=0")),
    (f"--reasoning-budget=-1 --reasoning-budget-message {shlex.quote(ODD_MESSAGE)}",
     ("--reasoning-budget=-1", "--reasoning-budget-message", ODD_MESSAGE)),
    ("--reasoning-budget-message '--- Time is up ---'",
     ("--reasoning-budget-message", "--- Time is up ---"))])
def test_the_flags_are_baked_in_full_and_as_typed(capsys, tmp_path, pyz_stub, args, baked):
    out = tmp_path / "chat.pyz"
    code, err = _bundle(capsys, "--stub", pyz_stub, "-o", out, f"--args={args}")
    assert code == 0, err
    assert read_trailer(out).args == baked


@pytest.mark.parametrize("args, said", [
    ("--reasoning-budget -5", "--reasoning-budget must be -1 (unlimited thinking), 0 (no "
                              "thinking) or a number of tokens up to 2147483647"),
    ("--reasoning-budget 2147483648", "a number of tokens up to 2147483647"),
    ("--reasoning-budget x", "argument --reasoning-budget: invalid int value: 'x'"),
    ("--reasoning-budget 1.5", "invalid int value: '1.5'"),
    ("--reasoning-budget", "argument --reasoning-budget: expected one argument"),
    ("--reasoning-budget-message", "argument --reasoning-budget-message: expected one argument"),
    ("--reasoning-b 8", "ambiguous option: --reasoning-b could match --reasoning-budget, "
                        "--reasoning-budget-message")])
def test_a_bad_value_is_refused_when_bundling_not_at_every_start(capsys, tmp_path, pyz_stub,
                                                                  args, said):
    out = tmp_path / "chat.pyz"
    code, err = _bundle(capsys, "--stub", pyz_stub, "-o", out, f"--args={args}")
    assert code == 2 and err.startswith(f"chatfile: error: --args {args!r}: "), err
    assert said in err and err.count("\n") == 1, err  # one line, no traceback
    assert not out.exists()


def test_the_server_gets_the_baked_flags_and_those_given_at_start_win(
        capsys, tmp_path, pyz_stub, monkeypatch):
    out = _think_bundle(capsys, tmp_path, pyz_stub,
                        "--reasoning-budget 8 --reasoning-budget-message "
                        + shlex.quote(ODD_MESSAGE))
    served = []
    from runtime import server
    monkeypatch.setattr(server, "serve", lambda model, **kw: served.append(kw) or 0)
    for args, want in [
            ((), (8, ODD_MESSAGE, {})),
            (("--reasoning-budget", "3", "--reasoning-budget-m", " Stop."), (3, " Stop.", {})),
            (("--reasoning-budget", "-1", "--reasoning-budget-message="), (-1, "", {})),
            # 0: no thinking, as llama-server's (the template is told enable_thinking false)
            (("--reasoning-budget=0",), (0, ODD_MESSAGE, {"enable_thinking": False}))]:
        assert _start(out, monkeypatch, "--no-browser", "--port", "19390", *args) == 0, \
            capsys.readouterr().err
        kw = served.pop()
        assert (kw["reasoning_budget"], kw["reasoning_budget_message"],
                kw["template_kwargs"]) == want, args


def _chat(capsys, run, *args) -> str:
    """What a one-shot terminal chat prints (stdout and stderr: the thought goes to the
    one, the answer to the other), started by run(*args)."""
    code = run(*args, "-p", "Hi", "-n", "24")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out + captured.err


def test_the_terminal_chat_of_the_bundle_takes_the_baked_flags(capsys, tmp_path, pyz_stub,
                                                               monkeypatch):
    """`--cli` drops the server's own options and keeps the rest: the chat closes the
    thought after 8 tokens with the baked message, as `chatfile chat` with the same
    flags does, and flags given with --cli win."""
    out = _think_bundle(capsys, tmp_path, pyz_stub, BAKED + " --no-browser --port 19391 --cors")
    template = str(tmp_path / "think.jinja")

    def chat(*args):
        return runtime_cli.main(["chat", str(MODEL), "--chat-template", template, "--temp", "0",
                                 *args])

    def bundle_cli(*args):
        return _start(out, monkeypatch, "--cli", *args)

    free = _chat(capsys, chat)
    budgeted = _chat(capsys, chat, "--reasoning-budget", "8", "--reasoning-budget-message",
                     MESSAGE)
    assert budgeted != free and MESSAGE in budgeted and MESSAGE not in free
    assert _chat(capsys, bundle_cli) == budgeted
    assert _chat(capsys, bundle_cli, "--reasoning-budget", "-1") == free
    assert _chat(capsys, bundle_cli, "--reasoning-budget-m", " Stop.") == _chat(
        capsys, chat, "--reasoning-budget", "8", "--reasoning-budget-message", " Stop.")


def test_the_server_of_the_bundle_answers_with_the_baked_budget(capsys, tmp_path, pyz_stub,
                                                                monkeypatch):
    """A chat request without a budget gets the baked one: the same reply as one that
    asks for it, another than one under a budget it never reaches."""
    out = _think_bundle(capsys, tmp_path, pyz_stub)
    start = ("import sys; sys.argv[0] = sys.argv[1]; from runtime.__main__ import main; "
             "sys.exit(main(sys.argv[2:]))")
    monkeypatch.setattr(e2e, "server_command", lambda *a, **kw: [
        sys.executable, "-c", start, str(out), "--no-browser", "--port", "0"])
    h = e2e.start_server()
    try:
        def reply(**budget) -> str:
            status, r = e2e.post_json(h.url + "/v1/chat/completions", {
                "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 40,
                "reasoning_format": "none", **budget})
            assert status == 200, r
            return r["choices"][0]["message"]["content"]

        baked = reply()
        assert baked == reply(reasoning_budget_tokens=8, reasoning_budget_message=MESSAGE)
        assert MESSAGE + "</think>" in baked, baked
        assert baked != reply(reasoning_budget_tokens=1000)
    finally:
        h.stop()


def test_cli_drops_exactly_the_options_the_terminal_chat_lacks():
    """A bundle's `--cli` runs `chatfile chat` with the baked args of `chatfile run`,
    without the server's own: an option of both (--reasoning-budget, ...) must stay, and
    one of `run` alone must be dropped, with its value when it takes one."""
    commands = runtime_cli.build_parser().commands

    def long_options(command):
        return {a.option_strings[-1]: a.nargs != 0 for a in commands[command]._actions
                if a.option_strings and a.option_strings[-1].startswith("--")}
    run, chat = long_options("run"), long_options("chat")
    server_only = {flag: takes_value for flag, takes_value in run.items() if flag not in chat}
    assert server_only == {**dict.fromkeys(entry._SERVER_FLAGS_WITH_VALUE, True),
                           **dict.fromkeys(entry._SERVER_FLAGS, False)}
    assert {"--reasoning-budget", "--reasoning-budget-message"} <= chat.keys()
