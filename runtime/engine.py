"""One inference worker: a request queue, a prompt cache, token-by-token generation.

The model is single-threaded NumPy that already uses every core for its matmuls, so
serving two requests at once would only make both slower. The engine therefore owns ONE
worker thread and ONE KV-cache `Session`; requests wait in a bounded queue (a full queue
is refused at once, so the server can answer 503 instead of piling up work).

Prompt cache: the session keeps the tokens of the previous request (prompt + reply).
A new prompt rewinds the session to the longest common prefix and evaluates only the
rest, so the second turn of a chat prefills just the new message. With --cache-ram, what
a rewind would drop is saved in host memory first, and restored for a later prompt that
shares more with it (runtime/prompt_cache.py): conversations that take turns keep theirs.

Every request gets its own event queue. The worker puts `Event`s on it: for a request
that asks for its prompt's logprobs, one "prompt" event once the prompt is evaluated; one
per generated token (with the text that token released, possibly empty while a stop
string is still undecided); then exactly one final event ("done" or "error"). The worker
never dies on a request's error: the exception travels back to the request as an error
event.

Several choices of one API request (OpenAI's `n`, best_of's candidates, a list of
prompts) are one queue entry: a lead Request and its `followers`, served one after another
on the slot before any other request, so that each choice after the first finds its
prompt in the cache.

A request's reasoning budget (runtime/reasoning.py's ReasoningBudget) may name the next
token: once a thought has used its tokens, the budget message and `</think>` are
evaluated in place of sampled tokens, one a step, and are generated, streamed and
counted as any other (a speculated run is cut where the forcing starts).
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from runtime.model import UBATCH_TOK, ContextOverflowError
from runtime.prompt_cache import PromptCache, forget
from runtime.sampling import NoTokenAllowed, Sampler, SamplingParams, reported_probs_rows
from runtime.speculate import PredictionDrafts, greedy_tokens


class EngineBusy(RuntimeError):
    """The request queue is full; the server answers 503."""


class Cancelled(Exception):
    """Internal: the request's cancel event was set."""


@dataclass
class Timings:
    cached_n: int = 0        # prompt tokens reused from the previous request
    prompt_n: int = 0        # prompt tokens evaluated for this request
    prompt_ms: float = 0.0
    predicted_n: int = 0     # tokens generated
    predicted_ms: float = 0.0

    def as_dict(self) -> dict:
        prompt_per_s = 1e3 * self.prompt_n / self.prompt_ms if self.prompt_ms > 0 else 0.0
        pred_per_s = 1e3 * self.predicted_n / self.predicted_ms if self.predicted_ms > 0 else 0.0
        return {
            "cache_n": self.cached_n,
            "prompt_n": self.prompt_n,
            "prompt_ms": round(self.prompt_ms, 3),
            "prompt_per_token_ms": round(self.prompt_ms / self.prompt_n, 3) if self.prompt_n else 0.0,
            "prompt_per_second": round(prompt_per_s, 3),
            "predicted_n": self.predicted_n,
            "predicted_ms": round(self.predicted_ms, 3),
            "predicted_per_token_ms": (round(self.predicted_ms / self.predicted_n, 3)
                                       if self.predicted_n else 0.0),
            "predicted_per_second": round(pred_per_s, 3),
        }


@dataclass
class Event:
    """What the worker reports. kind: "progress" | "prompt" | "token" | "done" | "error"."""
    kind: str
    text: str = ""
    # "token": the token; "done": the end-of-generation token that ended the reply (with
    # its probs and prob when the request asked for n_probs), else None.
    token: int | None = None
    # n_probs: [(id, prob), ...] best first, for the distribution this token came from.
    probs: list | None = None
    prob: float | None = None          # probability of the chosen token (when n_probs)
    finish_reason: str | None = None   # "stop" | "length" | "cancelled"
    stopped_eos: bool = False
    stopped_word: bool = False
    stopped_limit: bool = False
    stopping_word: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    timings: Timings | None = None
    error: BaseException | None = None
    # prompt_logprobs ("prompt" and "done" events): for each prompt token after the first,
    # (its probability, the n_probs likeliest [(id, prob), ...]) at the position before it.
    prompt_probs: list | None = None
    # "done" of a request with a prediction, when its greedy reply was speculated: the
    # tokens drafted from the prediction that are in the reply, and those that are not
    # (rejected by the model, or past the reply's end).
    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0
    # "progress" (a request with return_progress), after each micro-batch of the prompt:
    # llama-server's prompt_progress, {"total", "cache", "processed", "time_ms"} (the
    # prompt's tokens, those found in the cache, those held so far, cached ones included).
    progress: dict | None = None


@dataclass
class Request:
    prompt_ids: list
    params: object = None              # runtime.sampling.SamplingParams; None -> defaults
    max_tokens: int = -1               # -1: until end of generation or context full
    stop: list = field(default_factory=list)
    n_probs: int = 0
    # The probability of each prompt token after the first (and the n_probs likeliest
    # tokens there): /v1/completions' echo with logprobs. It evaluates the prompt past the
    # prefix whose logprobs the session kept (Session.reuse_prompt_probs).
    prompt_logprobs: bool = False
    cache_prompt: bool = True
    # The reply goes on from the prompt's text (/completion, /infill): its first word keeps
    # its leading space (see tokenizer.StreamDecoder). A chat reply starts a message.
    continuation: bool = False
    # runtime.json_constraint.TokenConstraint: the reply must be JSON or a tool call.
    # Stateful, so one per request.
    constraint: object = None
    # Token ids of the text the reply is expected to largely repeat (OpenAI's Predicted
    # Outputs): one more source of drafts for greedy speculation; ignored otherwise.
    prediction: list | None = None
    # runtime.reasoning.ReasoningBudget: the tokens that close a thought once its budget
    # is spent. Stateful, so one per request.
    reasoning_budget: object = None
    # A "progress" event after each micro-batch of the prompt (llama-server's
    # return_progress): a long prompt is read for minutes on a CPU.
    return_progress: bool = False
    cancel: threading.Event = field(default_factory=threading.Event)
    events: queue.Queue = field(default_factory=queue.Queue)
    # Requests served right after this one, before anything else in the queue: the other
    # choices of the same API request. The server gives them this one's `cancel`, so that
    # a client that goes away stops them all. A follower's own followers are not served.
    followers: list = field(default_factory=list)
    # Not a generation: session_job(session) runs on the worker between requests, so that
    # nothing evaluates meanwhile (a slot's save, restore or erase: runtime/slot_files.py),
    # then "done". It reports its own errors: one it raises resets the session as a
    # failed eval does.
    session_job: Callable | None = None

    def group(self) -> list:
        """This request and its followers, in the order they are served."""
        return [self, *self.followers]

    def iter_events(self, poll_s: float = 0.5, client_alive=None):
        """Yield events until the final one. Blocking; the server calls this.

        `client_alive()`, checked every `poll_s` whether or not events arrive, cancels the
        request once it says the client has gone (a non-streamed request notices a
        hang-up only this way).
        """
        next_check = time.monotonic() + poll_s
        while True:
            if client_alive is not None and time.monotonic() >= next_check:
                next_check = time.monotonic() + poll_s
                if not self.cancel.is_set() and not client_alive():
                    self.cancel.set()
            try:
                ev = self.events.get(timeout=poll_s)
            except queue.Empty:
                continue
            yield ev
            if ev.kind in ("done", "error"):
                return


def _stop_hold_len(text: str, stops: list) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string:
    that much text must be held back, since the next token may complete the stop."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


def _end_token_possible(params, eog_ids) -> bool:
    """Can an end-of-generation token be sampled at all (ignore_eos bans every one)?"""
    bias = getattr(params, "logit_bias", None) or {}
    return any(bias.get(t, 0.0) != -np.inf for t in eog_ids)


def _next_tokens(session, logits: np.ndarray, sampler, history: list, room_tok: int,
                 speculate: bool = False, prediction=None) -> tuple[list, np.ndarray | None]:
    """Choose the next token(s) after `logits` and evaluate them.

    Returns (tokens, the logits after the last of them); the session holds all of them.
    The logits are None when the context had no room left to evaluate the token.
    Greedy requests use prompt-lookup speculation (runtime/speculate.py), which can
    return several tokens from one batched forward pass; sampled requests take one at
    a time.
    """
    if speculate and getattr(sampler.params, "greedy", False):
        return greedy_tokens(session, logits, sampler, history, room_tok, prediction=prediction)
    tok = sampler.sample(logits, history)
    if room_tok < 1:
        return [tok], None
    return [tok], session.eval([tok])


def tokenize_prompt(model, text: str, add_special: bool = True) -> list:
    """Token ids of text that may contain special tokens (a rendered chat template)."""
    ids = model.tokenize(text, add_special=add_special, parse_special=True)
    bos = getattr(model.tokenizer, "bos_id", None)
    # A template that writes bos_token itself, plus the tokenizer's own BOS: keep one.
    if bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
        ids = ids[1:]
    return ids


def chat_prompt_ids(model, messages: list, tools: list | None = None,
                    add_generation_prompt: bool = True, prefill: str = "",
                    template_kwargs: dict | None = None) -> tuple[str, list]:
    """The rendered chat prompt and its ids; raises the template's TemplateError.
    prefill: the start of the reply, written after the generation prompt (the model
    continues it). template_kwargs: more variables for the template."""
    kw = {"tools": tools} if tools else {}
    if template_kwargs:
        kw["template_kwargs"] = template_kwargs
    text = model.chat_prompt(messages, add_generation_prompt=add_generation_prompt, **kw)
    text += prefill
    return text, tokenize_prompt(model, text)


def _make_sampler(params):
    return Sampler(params if params is not None else SamplingParams())


def _prompt_probs_into(found: list, ids: list, n_probs: int):
    """A Session.eval `on_logits` callback: for each position followed by another prompt
    token, appends that token's probability and the n_probs likeliest (id, prob) to
    `found`. They are what the reply's logprobs report (Sampler.reported_probs), on the
    model's own distribution: the request's logit_bias, penalties and constraint shape
    its reply, not what the model thought of the prompt. reported_probs_rows takes the
    whole block of rows at once: reported_probs row by row cost 2-6 ms per position."""
    def on_logits(logits, pos0: int) -> None:
        m = min(len(logits), len(ids) - 1 - pos0)  # the last position has no next token
        if m > 0:
            found.extend(reported_probs_rows(logits[:m], ids[pos0 + 1:pos0 + 1 + m], n_probs))
    return on_logits


class Engine:
    def __init__(self, model, n_ctx: int, *, max_queue: int = 16, sampler_factory=None,
                 speculate: bool = True, cache_ram_bytes: int = 0):
        self.model = model
        self.speculate = speculate  # prompt-lookup speculation for greedy requests
        self.n_ctx = int(n_ctx)
        self.session = model.session(self.n_ctx)
        # Snapshots of what rewinds drop, in host memory (0: none; < 0: no byte limit).
        self.prompt_cache = PromptCache(self.session, cache_ram_bytes) if cache_ram_bytes else None
        self.eog_ids = frozenset(getattr(model, "eog_ids", ()) or ())
        self._make_sampler = sampler_factory or _make_sampler
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self.busy = threading.Event()     # set while a request is being served
        self._thread = threading.Thread(target=self._run, name="chatfile-engine", daemon=True)
        self._thread.start()

    # ---- the request side -------------------------------------------------------------
    def submit(self, req: Request) -> Request:
        """Queue a request (with its followers, one queue entry). Raises
        ContextOverflowError (prompt too long), ValueError (empty prompt or bad token ids)
        or EngineBusy (queue full), before any work."""
        for r in req.group():  # every choice is checked before the first one runs
            if r.session_job is None:
                self._check_prompt(r.prompt_ids)
        try:
            self._queue.put_nowait(req)
        except queue.Full:
            # Requests whose clients gave up wait in the queue, cancelled, until the worker
            # reaches them, which may take as long as the reply it is making: without this,
            # a few impatient clients that retry made every newcomer a 503 for minutes.
            self._drop_cancelled()
            try:
                self._queue.put_nowait(req)
            except queue.Full:
                raise EngineBusy("the server is busy: too many requests are waiting") from None
        return req

    def _check_prompt(self, ids: list) -> None:
        if not ids:
            raise ValueError("the prompt is empty (no tokens)")
        n_vocab = getattr(self.model, "n_vocab", None)
        if n_vocab is not None:
            bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < n_vocab]
            if bad:
                raise ValueError(f"prompt token id {bad[0]!r} is out of range: "
                                 f"ids must be integers in [0, {n_vocab})")
        if len(ids) >= self.n_ctx:  # a reply needs one position at least (llama-server: the same)
            trained = getattr(self.model, "n_ctx_train", 0)
            more = (f" or start the server with a larger context (--ctx, up to {trained})"
                    if self.n_ctx < trained else "")  # past the trained one it is capped
            what = "more than" if len(ids) > self.n_ctx else "as long as"
            raise ContextOverflowError(
                f"the prompt is {len(ids)} tokens, {what} the context size of {self.n_ctx} "
                f"tokens, which leaves no room for a reply; shorten it{more}")

    def _drop_cancelled(self) -> None:
        """Take the cancelled requests out of the queue and answer them as the worker
        would have (their request threads are still waiting for a final event)."""
        q = self._queue
        with q.mutex:  # queue.Queue's own lock: get() and put() see a consistent deque
            dead = [r for r in q.queue if r.cancel.is_set()]
            if not dead:
                return
            live = [r for r in q.queue if not r.cancel.is_set()]
            q.queue.clear()
            q.queue.extend(live)
            q.not_full.notify(len(dead))
        for lead in dead:
            for r in lead.group():
                r.events.put(Event("done", finish_reason="cancelled"))

    def queued(self) -> int:
        return self._queue.qsize()

    # ---- the worker side --------------------------------------------------------------
    def _run(self):
        while True:
            lead = self._queue.get()
            self.busy.set()
            failed = False
            try:
                for req in lead.group():
                    # After a failed choice the request has its answer (an error): the
                    # choices left would only be work that nobody reads.
                    if failed or req.cancel.is_set():
                        req.events.put(Event("done", finish_reason="cancelled"))
                    else:
                        if self.prompt_cache is not None:  # one reply kept of n choices
                            self.prompt_cache.request_started(follower=req is not lead)
                        failed = not self._serve_one(req)
            finally:
                self.busy.clear()

    def _serve_one(self, req: Request) -> bool:
        """Serve one request, answering it whatever happens; False if it failed."""
        try:
            self._serve(req)
        except Cancelled:
            req.events.put(Event("done", finish_reason="cancelled"))
        except BaseException as e:  # noqa: BLE001 - the worker must survive anything
            # A failed eval may have left the cache half-written: start clean next time.
            # Nothing of it is saved in the prompt cache: it is not trusted.
            try:
                forget(self.session, self.prompt_cache)
            except Exception:
                pass
            req.events.put(Event("error", error=e))
            return False
        return True

    def _prefill(self, req: Request, t: Timings) -> tuple[np.ndarray, list | None]:
        """Evaluate the prompt: (the logits after it, its logprobs if the request asks)."""
        ids = list(req.prompt_ids)
        s = self.session
        found = on_logits = None
        if self.prompt_cache is not None and req.cache_prompt and not req.prompt_logprobs:
            self.prompt_cache.restore_best(s, ids)  # a saved state that shares more, if any
        if req.prompt_logprobs:
            # Every prompt position's logprobs are needed. The cache keeps no logits, but
            # the session keeps what earlier prompts' logprobs reported at each position
            # it holds: a prompt that shares a prefix with them (the answers of one
            # multiple-choice question, after the same context) evaluates only the rest.
            # Without cache_prompt, or where it shares none, the whole prompt.
            if req.cache_prompt:
                found = s.reuse_prompt_probs(ids, req.n_probs)
            else:
                s.rewind(0)
                found = []
            kept = len(found)  # found goes on from there (on_logits appends to it)
            on_logits = _prompt_probs_into(found, ids, req.n_probs)
        elif req.cache_prompt:
            kept = s.reuse_prefix(ids)
        else:
            s.rewind(0)
            kept = 0
        # At least the last prompt token must be evaluated to get its logits.
        if kept >= len(ids):
            kept = s.rewind(len(ids) - 1)
        t.cached_n = kept
        rest = ids[kept:]
        t0 = time.perf_counter()
        # Evaluate in chunks so a cancel during a long prefill is noticed: one micro-batch
        # of the forward pass each, the unit Session.eval computes in anyway.
        chunk_tok = UBATCH_TOK
        logits = None
        for i in range(0, len(rest), chunk_tok):
            if req.cancel.is_set():
                raise Cancelled()
            part = rest[i:i + chunk_tok]
            logits = s.eval(part) if on_logits is None else s.eval(part, on_logits=on_logits)
            if req.return_progress:
                req.events.put(Event("progress", progress={
                    "total": len(ids), "cache": kept, "processed": kept + i + len(part),
                    "time_ms": int(1e3 * (time.perf_counter() - t0))}))
        t.prompt_ms = 1e3 * (time.perf_counter() - t0)
        t.prompt_n = len(rest)
        if found is not None:
            s.keep_prompt_probs(found, req.n_probs)
            req.events.put(Event("prompt", prompt_probs=found))
        return logits, found

    def _serve(self, req: Request):
        if req.session_job is not None:
            req.session_job(self.session)
            req.events.put(Event("done"))
            return
        t = Timings()
        logits, prompt_probs = self._prefill(req, t)
        sampler = self._make_sampler(req.params)
        if req.constraint is not None:
            sampler.constraint = req.constraint
            if not _end_token_possible(sampler.params, self.eog_ids):
                req.constraint.no_end_token()  # ignore_eos: stop where the value ends
        history = list(req.prompt_ids)
        decoder = self.model.tokenizer.decoder(continuation=req.continuation)
        stops = [s for s in (req.stop or []) if s]
        max_tokens = req.max_tokens if req.max_tokens is not None and req.max_tokens >= 0 else None
        held = ""          # text not yet released: it might begin a stop string
        n_gen = 0
        # n_probs wants a distribution for every token, and a constraint's state moves
        # with each accepted token: no speculation then.
        speculate = self.speculate and not req.n_probs and req.constraint is None
        # A prediction drafts where speculation runs (_next_tokens: greedy replies only; a
        # sampled one ignores it, and its counts stay 0).
        pred = PredictionDrafts(req.prediction) if speculate and req.prediction else None
        n_pred_kept = 0    # tokens drafted from the prediction that are in the reply
        budget = req.reasoning_budget
        t_gen = time.perf_counter()

        def finish(reason, **kw):
            t.predicted_n = n_gen
            t.predicted_ms = 1e3 * (time.perf_counter() - t_gen)
            if pred is not None:
                kw.update(accepted_prediction_tokens=n_pred_kept,
                          rejected_prediction_tokens=pred.drafted_tok - n_pred_kept)
            req.events.put(Event("done", finish_reason=reason, timings=t,
                                 prompt_tokens=len(req.prompt_ids), completion_tokens=n_gen,
                                 prompt_probs=prompt_probs, **kw))

        if max_tokens == 0:
            finish("length", stopped_limit=True)
            return
        while True:
            if req.cancel.is_set():
                raise Cancelled()
            # Positions left to evaluate tokens in, after the one sampled now: a token that
            # takes the last position ends the reply unevaluated, so that prompt and reply
            # never exceed n_ctx together (as in llama-server).
            room_tok = self.n_ctx - len(self.session.tokens) - 1
            # n_probs: the distribution the token is drawn from, constraint and bias
            # included, so that the chosen token and the list agree with what was
            # sampled (Sampler.reported_probs says why and what is left out).
            dist = sampler.reported_probs(logits, history, req.n_probs) if req.n_probs > 0 else None
            forced = budget.forced() if budget is not None else None
            try:
                if forced is not None:  # a spent reasoning budget's: whatever the logits say
                    toks, logits = [forced], (self.session.eval([forced]) if room_tok >= 1
                                              else None)
                else:
                    toks, logits = _next_tokens(self.session, logits, sampler, history,
                                                room_tok, speculate, prediction=pred)
            except NoTokenAllowed:
                # The constraint allows nothing more: the value is done and end-of-generation
                # is banned (ignore_eos), or no token it allows has a finite logit.
                self._flush_tail(req, decoder, held, stops)
                finish("stop", stopped_eos=True)
                return
            for i, tok in enumerate(toks):
                n_gen += 1
                if pred is not None and 1 <= i <= pred.kept_tok:  # toks[0] is the model's own
                    n_pred_kept += 1
                history.append(tok)
                if req.constraint is not None:
                    req.constraint.accept(tok)
                if budget is not None:
                    budget.accept(tok)
                if tok in self.eog_ids:
                    self._flush_tail(req, decoder, held, stops)
                    # The end token has no text, but it was generated and counted: it
                    # goes on the final event (llama-server's `tokens` list it), with its
                    # distribution for the legacy logprobs that list one entry per
                    # generated token (OpenAI lists its "<|endoftext|>"; lm-eval drops
                    # the last entry as the reply's).
                    end = {"token": tok}
                    if dist is not None:
                        end.update(probs=dist[0], prob=float(dist[1][tok]))
                    finish("stop", stopped_eos=True, **end)
                    return
                held += decoder.push(tok)
                probs = prob = None
                if dist is not None:
                    probs, p = dist
                    prob = float(p[tok])
                    dist = None  # only the first of a speculated run has a distribution here
                if stops:
                    hit = min(((held.find(s), s) for s in stops if s in held), default=None)
                    if hit is not None:
                        idx, word = hit
                        req.events.put(Event("token", text=held[:idx], token=tok, probs=probs, prob=prob))
                        finish("stop", stopped_word=True, stopping_word=word)
                        return
                    keep = _stop_hold_len(held, stops)
                else:
                    keep = 0
                out, held = held[:len(held) - keep], held[len(held) - keep:]
                req.events.put(Event("token", text=out, token=tok, probs=probs, prob=prob))
                if max_tokens is not None and n_gen >= max_tokens:
                    self._flush_tail(req, decoder, held, stops)
                    finish("length", stopped_limit=True)
                    return
                if (budget is not None and i + 1 < len(toks)
                        and budget.forced() not in (None, toks[i + 1])):
                    # The budget ran out inside a speculated run: the drafted tokens after
                    # this one are not the forced ones, so they leave the cache. (The
                    # logits after this token are not needed: the next one is forced.)
                    self.session.rewind(len(history))
                    break
            if logits is None:  # the context is full: the last token could not be evaluated
                self._flush_tail(req, decoder, held, stops)
                finish("length", stopped_limit=True)
                return

    @staticmethod
    def _flush_tail(req, decoder, held, stops):
        """At the end: release the held text, cut at a stop string the flush completed."""
        tail = held + decoder.flush()
        for s in stops:
            i = tail.find(s)
            if i >= 0:
                tail = tail[:i]
        if tail:
            req.events.put(Event("token", text=tail))

    # ---- convenience for the terminal and tests ----------------------------------------
    def run(self, req: Request):
        """Submit and yield events until the final one."""
        self.submit(req)
        yield from req.iter_events()
