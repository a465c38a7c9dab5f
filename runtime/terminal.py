"""`chatfile chat`: talk to the model in the terminal.

Interactive (stdin is a terminal): a streaming REPL that keeps the conversation, with
/reset, /system TEXT, /help and /exit. Piped (`echo question | chatfile chat m.gguf`):
all of stdin is one question; the answer is printed and the program exits, so it can be
used in scripts. Generation goes through the same `Engine` as the server, so the prompt
cache makes every turn prefill only the new message.
"""
from __future__ import annotations

import sys

from runtime.engine import ContextOverflowError, Engine, Request, chat_prompt_ids

HELP = ("commands: /reset (forget the conversation), /system TEXT (set the system prompt "
        "and start over), /exit (quit), /help")


class _Chat:
    def __init__(self, model, engine, system, params, max_tokens, out):
        self.model, self.engine, self.params = model, engine, params
        self.system, self.max_tokens, self.out = system, max_tokens, out
        self.history: list[dict] = []

    def messages(self, user_text: str) -> list[dict]:
        sys_msgs = [{"role": "system", "content": self.system}] if self.system else []
        return sys_msgs + self.history + [{"role": "user", "content": user_text}]

    def ask(self, user_text: str) -> str | None:
        """Stream the answer to stdout; return it (None on an error already reported)."""
        from runtime.chat_template import TemplateError
        try:
            _, ids = chat_prompt_ids(self.model, self.messages(user_text))
            req = self.engine.submit(Request(prompt_ids=ids, params=self.params,
                                             max_tokens=self.max_tokens))
        except TemplateError as e:
            self._error(f"the chat template refused this conversation: {e}")
            return None
        except ContextOverflowError:
            self._error("the conversation no longer fits in the context"
                        + ("; type /reset to start over" if self.history else
                           f" of {self.engine.n_ctx} tokens (--ctx)"))
            return None
        parts = []
        try:
            for ev in req.iter_events():
                if ev.kind == "token":
                    parts.append(ev.text)
                    self._write(ev.text)
                elif ev.kind == "error":
                    self._write("\n")
                    self._error(str(ev.error))
                    return None
        except KeyboardInterrupt:
            # Ctrl+C during an answer stops the answer, not the program.
            req.cancel.set()
            for _ in req.iter_events():
                pass
            self.out.write(" [stopped]")
        self.out.write("\n")
        self.out.flush()
        answer = "".join(parts)
        self.history += [{"role": "user", "content": user_text},
                         {"role": "assistant", "content": answer}]
        return answer

    def _write(self, text):
        try:
            self.out.write(text)
        except UnicodeEncodeError:  # a legacy console code page: show what it can
            enc = getattr(self.out, "encoding", None) or "ascii"
            self.out.write(text.encode(enc, "replace").decode(enc, "replace"))
        self.out.flush()

    def _say(self, msg):
        self.out.write(msg + "\n")
        self.out.flush()

    def _error(self, msg):
        # stderr, so that `chatfile chat m.gguf < q.txt > answer.txt` keeps answers only
        print(f"chatfile: error: {msg}", file=sys.stderr, flush=True)


def chat(model, *, n_ctx: int, system: str | None = None, stdin=None, stdout=None,
         params=None, max_tokens: int = -1, interactive: bool | None = None) -> int:
    """Run the chat; returns the process exit code. interactive=None: stdin.isatty()."""
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    if interactive is None:
        try:
            interactive = stdin.isatty()
        except (AttributeError, ValueError):
            interactive = False
    engine = Engine(model, model.context_size(n_ctx))
    c = _Chat(model, engine, system, params, max_tokens, stdout)

    if not interactive:
        question = stdin.read().strip()
        if not question:
            sys.stderr.write("chatfile: error: stdin is empty; pipe a question in, "
                             "for example: echo 'Hello' | chatfile chat model.gguf\n")
            return 2
        return 0 if c.ask(question) is not None else 1

    stdout.write(f"chatfile: chatting with {getattr(model, 'name', 'the model')}. {HELP}\n")
    stdout.flush()
    while True:
        stdout.write("> ")
        stdout.flush()
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            stdout.write("\n")
            return 0
        if not line:           # end of input
            stdout.write("\n")
            return 0
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, arg = line.partition(" ")
            if cmd in ("/exit", "/quit", "/bye"):
                return 0
            if cmd == "/reset":
                c.history.clear()
                c._say("(conversation reset)")
            elif cmd == "/system":
                c.system = arg.strip() or None
                c.history.clear()
                c._say("(system prompt set; conversation reset)" if c.system
                       else "(system prompt cleared; conversation reset)")
            else:
                c._say(HELP)
            continue
        c.ask(line)
