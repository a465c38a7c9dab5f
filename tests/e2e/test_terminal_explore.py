"""`chatfile chat` as a user of `ollama run` or `llama-cli -cnv` tries it: what surprised.

On the tiny fixture model, whose answers barely depend on the question: what the chat
sends is seen by replacing the model's turn with an echo of it. The pty tests drive the
chat as tests/e2e/test_terminal_pty.py does.
"""
import os
import subprocess
import sys
import time

import pytest

from tests.e2e.conftest import ROOT, TINY
from tests.e2e.test_terminal import ECHO_SCRIPT, session_script
from tests.e2e.test_terminal_pty import ECHO, _got, chat_factory, is_prompt  # noqa: F401

MAX_TOK = 4


def run_bytes(args, stdin_bytes: bytes, **env_extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8")
    env.update(env_extra)
    return subprocess.run([sys.executable, *args], input=stdin_bytes, capture_output=True,
                          cwd=ROOT, env=env, timeout=120)


def chat_args(*extra):
    return ["-m", "runtime.cli", "chat", str(TINY), "--temp", "0", "--max-tokens",
            str(MAX_TOK), *extra]


# --- Ctrl+D inside a """ message ----------------------------------------------------------

def test_end_of_input_inside_a_multi_line_message_sends_it():
    """Ctrl+D at the "... " prompt quit the chat: the lines typed and the conversation were
    lost. It now ends the message there, and the next Ctrl+D quits."""
    lines = ['"""first line', "second line"]
    p = run_bytes(["-c", ECHO_SCRIPT], ("\n".join(lines) + "\n").encode())
    assert p.returncode == 0, p.stderr.decode()
    out = p.stdout.decode()
    assert "got 'first line\\nsecond line'" in out, out
    assert b"Traceback" not in p.stderr


def test_ctrl_d_inside_a_multi_line_message_on_a_terminal(chat_factory):
    c = chat_factory(ECHO)
    c.write(b'"""\rone\rtwo\r')
    # (after the "... " that follows "two": only then is the terminal read key by key)
    c.read_until(lambda b: b"two" in b and b.rstrip().endswith(b"..."), 30)
    time.sleep(0.2)  # a person's pause: readline may still be setting the terminal up
    c.write(b"\x04")  # Ctrl+D at "... "
    out = c.read_until(lambda b: b"got " in b and is_prompt(b), 30)
    assert _got("one\ntwo") in out, out
    assert c.proc.poll() is None, "the chat quit"
    c.write(b"\x04")  # at the prompt: quits
    assert c.proc.wait(30) == 0


# --- piped stdin that is not UTF-8 --------------------------------------------------------

# The piped chat with the model's turn replaced by a report of the question it was sent
# (ascii(): readable whatever stdout's encoding).
PIPED_ECHO = f"""
import sys
from runtime.model import Model
from runtime import terminal
def echo(self, text):
    self._say("got " + ascii(text))
    return text
terminal._Chat.ask = echo
sys.exit(terminal.chat(Model.load({str(TINY)!r}), n_ctx=256, interactive=False))
"""


def test_piped_latin1_text_is_answered():
    """A Latin-1 file piped in under a strict UTF-8 setting failed with the codec's words:
    "chatfile: error: 'utf-8' codec can't decode byte 0xe9 in position 3"."""
    p = run_bytes(chat_args(), "café au lait?\n".encode("latin-1"))
    assert p.returncode == 0, p.stderr.decode()
    assert b"codec" not in p.stderr and b"Traceback" not in p.stderr, p.stderr
    assert b"stdin is not UTF-8 text (byte 0xe9 at offset 3)" in p.stderr, p.stderr
    assert p.stdout.strip(), "an answer"
    p = run_bytes(["-c", PIPED_ECHO], "café au lait?\n".encode("latin-1"))
    assert p.stdout == b"got 'caf\\ufffd au lait?'\n", p.stdout  # the rest as it was


@pytest.mark.parametrize("data, encoding, sent", [
    ("café?".encode(), "ascii", "café?"),                         # UTF-8 under ASCII
    (b"\xef\xbb\xbf" + "café?".encode(), "utf-8", "café?"),       # a BOM (Notepad's)
    ("café?".encode("latin-1"), "latin-1", "café?"),              # a Latin-1 locale
    ("café?".encode("latin-1"), "ascii", "caf\ufffd?"),           # neither
    (b"one\r\ntwo\rthree\n", "utf-8", "one\ntwo\nthree"),          # CRs left out
])
def test_piped_text_is_read_as_utf8_first(data, encoding, sent):
    """UTF-8 piped in under an ASCII setting failed too, and a UTF-8 BOM (Notepad's,
    PowerShell's) went to the model as part of the question."""
    p = run_bytes(["-c", PIPED_ECHO], data, PYTHONIOENCODING=encoding)
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout.decode() == f"got {ascii(sent)}\n"
    assert b"Traceback" not in p.stderr, p.stderr


# --- what a prompt too long for the context blames ----------------------------------------

LONG_SYSTEM = "You are a helpful assistant. " * 40


def test_a_system_prompt_too_long_for_the_context_is_named():
    """With a long --system, "hi" was "too long for the context ...; shorten it", and so
    was every message after it."""
    p = run_bytes(chat_args("--ctx", "256", "--system", LONG_SYSTEM), b"hi\n")
    assert p.returncode == 1 and p.stdout == b""
    err = p.stderr.decode()
    assert err.startswith("chatfile: error: the system prompt is too long for the context "
                          "of 256 tokens"), err
    assert "shorten it (--system) or give a larger --ctx" in err, err
    # Interactive, it is /system that changes it; and afterwards the chat goes on.
    script = session_script(max_tokens=MAX_TOK).replace(
        "interactive=True", f"interactive=True, system={LONG_SYSTEM!r}")
    p = run_bytes(["-c", script], b"hi\n/system Be brief.\nhi\n/exit\n")
    assert p.returncode == 0, p.stderr.decode()
    assert "shorten it (/system) or give a larger --ctx" in p.stderr.decode()
    assert p.stdout.decode().count("\n> ") >= 3


def test_a_context_too_small_for_any_message_says_so():
    """--ctx 10: "shorten it" of a "hi"; no message fits beside the chat template."""
    p = run_bytes(chat_args("--ctx", "10"), b"hi\n")
    assert p.returncode == 1 and p.stdout == b""
    err = p.stderr.decode()
    assert "the chat template alone takes" in err and "give a larger --ctx" in err, err
    assert "shorten it" not in err, err


def test_a_message_too_long_still_says_shorten_it():
    p = run_bytes(chat_args("--ctx", "256"), ("word " * 400).encode())
    assert p.returncode == 1
    err = p.stderr.decode()
    assert err.startswith("chatfile: error: the message is too long for the context of 256 "
                          "tokens") and err.rstrip().endswith("; shorten it"), err



def terminal_start(*args):
    """What `chatfile chat TINY *args` shows on a terminal up to its first prompt."""
    import pty
    import select
    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8", TERM="dumb")
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "chat", str(TINY), *args],
                            cwd=ROOT, stdin=slave, stdout=slave, stderr=slave, env=env,
                            start_new_session=True)
    os.close(slave)
    seen, end = b"", time.monotonic() + 120
    try:
        while b"> " not in seen and time.monotonic() < end and proc.poll() is None:
            if select.select([master], [], [], 0.1)[0]:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
    return seen


def test_the_model_load_is_announced_on_a_terminal():
    """Nothing showed in the seconds a real model takes to load before the first prompt:
    on a terminal, the chat now says what it is loading (piped runs keep stderr quiet)."""
    seen = terminal_start()
    assert f"chatfile: loading {TINY.name}...".encode() in seen, seen
    piped = subprocess.run([sys.executable, "-m", "runtime.cli", "chat", str(TINY), "-n", "4"],
                           input=b"hi", capture_output=True, cwd=ROOT,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert b"loading" not in piped.stderr, piped.stderr


def test_a_model_without_a_chat_template_is_named_a_base_model(tmp_path):
    """A base model continues text instead of answering: the server's log and the page
    said so, the terminal chat did not, and its answers just looked broken. On a terminal
    it says so before the first prompt; a template given with --chat-template is a
    template, and nothing is said."""
    from runtime.info import BASE_MODEL_NOTE
    seen = terminal_start()
    assert f"chatfile: {BASE_MODEL_NOTE}".encode() in seen.replace(b"\r\n", b" ").replace(b"\n", b" "), seen
    assert seen.index(b"base model") < seen.index(b"> "), seen
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    seen = terminal_start("--chat-template", str(template))
    assert b"> " in seen and b"base model" not in seen, seen
