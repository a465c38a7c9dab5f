"""The HTTP server: OpenAI- and llama-server-compatible API, plus the offline chat page.

Bottle on the standard library's wsgiref with one thread per connection (their deadlines,
cap and port: runtime/connections.py): nothing outside the stdlib and Bottle, so it runs
unchanged inside a PyInstaller executable. The socket
is bound at once and the model loads in a background thread, so the page can show load
progress from /health. All inference goes through the one `Engine` worker; /health and
the static files never touch it, so they answer while a reply is being generated.

Every error, from a bad JSON body to an unknown route, is answered as JSON in OpenAI's
shape {"error": {"message", "type", "code"}} (Anthropic's on its Messages routes); never an
HTML page, never a traceback.
"""
from __future__ import annotations

import dataclasses
import gc
import hmac
import io
import json
import math
import os
import re
import signal
import sys
import threading
import time
import urllib.parse
import uuid
import weakref
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import bottle

from runtime import file_lease, messages_api, reasoning, responses_api, tool_calls
from runtime.api import (MAX_N_PROBS, MISSING, ApiError, TextOffsets, chat_ids, check_chat_fields,
                         choice_params, completion_prompts, context_overflow, error_body, get_bool,
                         get_choices, get_int, get_json_grammar, get_max_tokens, get_messages,
                         get_n, get_parallel_tool_calls, get_prediction, get_reasoning_format,
                         get_stop, get_str, get_template_kwargs, get_tool_choice, get_tools,
                         is_int, joined_logprobs, json_bytes, legacy_tops, limit_is_set, logprob,
                         output_constraint, parse_json, piece, prompt_logprobs,
                         prompt_text, prompt_tools, read_body, refuse_with_prediction,
                         reply_grammar, sampling_params,
                         split_prefill, template_in_effect)
from runtime.api import INT32_MAX, KEEPALIVE_EVERY_S, with_pauses
from runtime.connections import (ANY_ADDRESS, CORS_HEADERS, PORT_TRIES, STATUS_HEADERS, bind,
                                 client_connected, is_loopback, status_phrase, why_not)
from runtime.engine import ContextOverflowError, Engine, EngineBusy, Request, Timings
from runtime.prompt_cache import cache_ram_bytes
from runtime import slot_files

WEB_DIR = Path(__file__).resolve().parent / "web"
QUIT_DELAY_S = 0.3         # the page's Quit: time for its answer to go out first
GIL_SWITCH_S = 0.001       # see serve()
STOP_WAIT_S = 2.0          # see stop_generating()
CLIENT_POLL_S = 0.05       # how often a request checks that its client is still there
# A silent streamed chat or completion reply (KEEPALIVE_EVERY_S) sends an SSE comment line,
# which SSE clients skip (the openai client, the AI SDK's parser, the chat page): OpenCode
# (1.18, through the Vercel AI SDK) drops a stream that sent no byte for 300 s.
SSE_KEEPALIVE = b": keep-alive\n\n"

# Paths of the API: a wrong method on them is 405, anything else unknown is 404.
API_POST = ("/v1/chat/completions", "/v1/completions", "/completion", "/completions",
            "/tokenize", "/detokenize", "/apply-template", "/infill", "/chat/completions",
            "/v1/embeddings", "/embeddings", "/embedding", "/v1/rerank", "/rerank",
            "/v1/reranking", "/reranking", *messages_api.PATHS, *responses_api.PATHS,
            *responses_api.COUNT_PATHS, *responses_api.COMPACT_PATHS)
API_GET = ("/v1/models", "/models", "/props", "/health", "/v1/health", "/slots")
# A preflight's Access-Control-Request-Headers that may be allowed back as they are: a list
# of header names (RFC 9110 tokens), of a sane length.
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
PREFLIGHT_HEADERS_RE = re.compile(rf"{_TOKEN}(?:[ \t]*,[ \t]*{_TOKEN})*")
PREFLIGHT_HEADERS_MAX_CHARS = 1024


# ---- the server's state ------------------------------------------------------------------

@dataclass
class State:
    model_path: str
    n_ctx: int
    api_key: str | None = None
    system: str | None = None
    title: str | None = None
    cors: bool = False
    max_body_bytes: int = 1 << 20
    temperature: float | None = None   # the default for requests that don't say
    template_kwargs: dict = field(default_factory=dict)  # chat_template_kwargs' defaults
    reasoning_budget: int = -1        # --reasoning-budget: chat requests that don't say
    reasoning_budget_message: str = ""  # --reasoning-budget-message
    cache_ram_mib: int | None = None  # --cache-ram; None: prompt_cache's default
    slot_save_path: str | None = None  # --slot-save-path (absolute); None: no slot files
    model: object = None
    engine: Engine | None = None
    progress: float = 0.0
    error: str | None = None
    stopping: bool = False  # Ctrl+C: the server is going away
    cancels: weakref.WeakSet = field(default_factory=weakref.WeakSet)  # of requests under way
    loopback_only: bool = True  # bound to a loopback address: see _foreign_request
    allow_hosts: tuple = ()  # more host names to answer (--allow-host), lower case
    instance: str = ""  # which model with which options (see instance_id), for /health
    quit: Callable[[], None] | None = None  # the page's Quit; None: no /quit (see serve)
    model_id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    log: Callable[[str], None] = print  # the console line for what the operator must see


def get_reasoning_budget(body, default_tok: int = -1, default_message: str = "") -> tuple:
    """A request's reasoning budget, as llama-server reads it: (tokens, message).
    reasoning_budget_tokens, or thinking_budget_tokens (the name llama-server read first):
    -1 (or absent) is the server's --reasoning-budget, 0 closes a thought at once, N
    closes it after N tokens; reasoning_budget_message is written before `</think>`."""
    n = -1
    for key in ("thinking_budget_tokens", "reasoning_budget_tokens"):  # the last one wins
        n = get_int(body, key, n, lo=-1, hi=INT32_MAX)
    message = get_str(body, "reasoning_budget_message", default_message)
    return (default_tok if n == -1 else n), message


@dataclass
class ChatReply:
    """What the chat route made of a request: its requests (the choices), their final
    events (for a stream: each appended once its last chunk is taken), and the reply,
    either `whole` (the response object) or `chunks` (gen_fn(events_of) for sse()).
    reasoning_tok: each choice's reasoning tokens, filled as `finals` is: the generated
    tokens that are not the content's (reasoning.ContentTokens says which are): the
    thought, its tags and the whitespace after it, as OpenAI counts reasoning apart."""
    reqs: list
    finals: list
    whole: dict | None = None
    chunks: Callable | None = None
    reasoning_tok: list = field(default_factory=list)


def _usage(n_prompt: int, finals, predicted: bool, reasoning_tok=None) -> dict:
    """OpenAI's usage of the replies whose final events are `finals`, with n_prompt prompt
    tokens; with a prediction, how many tokens drafted from it are in the replies
    (accepted) and how many are not (rejected), summed over the choices; with
    reasoning_tok (the chat route's: each choice's), the reasoning tokens among the
    completion tokens, summed too."""
    n_reply = sum(f.completion_tokens for f in finals)
    usage = {"prompt_tokens": n_prompt, "completion_tokens": n_reply,
             "total_tokens": n_prompt + n_reply}
    details = {}
    if reasoning_tok is not None:
        details["reasoning_tokens"] = sum(reasoning_tok)
    if predicted:
        details.update(
            accepted_prediction_tokens=sum(f.accepted_prediction_tokens for f in finals),
            rejected_prediction_tokens=sum(f.rejected_prediction_tokens for f in finals))
    if details:
        usage["completion_tokens_details"] = details
    return usage


def _summed(timings) -> Timings:
    """The timings of several requests (the choices of one request) added up."""
    total = Timings()
    for t in timings:
        for f in dataclasses.fields(Timings):
            setattr(total, f.name, getattr(total, f.name) + getattr(t, f.name))
    return total


def with_end_token(toks: list, final) -> list:
    """A reply's token events, and after them the final event when it carries the
    end-of-generation token that ended the reply (the engine always puts it there; its
    probabilities too when the request asked for them): a generated, counted token with
    an empty text, which OpenAI's logprobs ("<|endoftext|>") and llama-server's lists
    (`tokens`, with or without n_probs) show as any other."""
    return toks + ([final] if final.token is not None else [])


def mean_token_logprob(toks) -> float:
    """best_of's score of a candidate: the mean logprob of its tokens, the numbers its
    `logprobs` reports (each token event's prob: the engine's Sampler.reported_probs).
    The end-of-generation token that ended a candidate counts, as its `logprobs` lists
    it; a candidate without a token (a constraint that allowed none) ranks last."""
    lps = [logprob(ev.prob or 0.0) for ev in toks]
    return sum(lps) / len(lps) if lps else -math.inf


def best_candidates(cands: list, n: int) -> list:
    """The n of one prompt's candidates, (text, token events, final event) each, with the
    highest mean token logprob, best first; a tie keeps the candidates' order (the
    lower seed first). OpenAI's legacy best_of ranks by log probability per token."""
    return sorted(cands, key=lambda c: -mean_token_logprob(c[1]))[:n]


# ---- the app --------------------------------------------------------------------------

class _App(bottle.Bottle):
    def default_error_handler(self, res):
        # Bottle's own errors (404 route, 405 method, 500 catch-all) as JSON.
        status = res.status_code
        msg = {404: f"not found: {bottle.request.path}",
               405: f"method {bottle.request.method} is not allowed on {bottle.request.path}",
               500: "internal server error"}.get(status, str(res.body or res.status_line))
        bottle.response.content_type = "application/json"
        return json_bytes(shaped_error(bottle.request.path, status, msg))


def build_app(st: State) -> bottle.Bottle:
    app = _App()
    app.config["catchall"] = True

    def fail(status, message, type_=None, headers=None, fields=None):
        body = shaped_error(bottle.request.path, status, message, type_, fields)
        r = bottle.HTTPResponse(json_bytes(body), status=status, headers=headers or {})
        r.content_type = "application/json"
        return r

    def fail_with(e: ApiError):
        headers = STATUS_HEADERS.get(e.status) if e.headers is None else e.headers
        return fail(e.status, e.message, e.type, headers=headers, fields=e.fields)

    def ok(obj, status=200):
        bottle.response.content_type = "application/json"
        bottle.response.status = status
        return json_bytes(obj)

    def check_auth():
        if not st.api_key:
            return
        # The raw header bytes (WSGI hands them over as latin-1 text): bottle's get_header
        # decodes them as UTF-8 and fails on any other byte.
        environ = bottle.request.environ
        got = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1", "replace")
        token = got[7:].strip() if got[:7].lower() == b"bearer " else b""
        token = token or environ.get("HTTP_X_API_KEY", "").encode("latin-1", "replace")
        if not hmac.compare_digest(token, st.api_key.encode("utf-8")):
            raise ApiError(401, "invalid or missing API key: send 'Authorization: Bearer KEY'")

    def need_model():
        if st.error:  # no Retry-After: trying again cannot help
            raise ApiError(503, f"the model failed to load: {st.error}", headers={})
        if st.engine is None:
            raise ApiError(503, f"the model is still loading ({st.progress:.0%})")
        return st.model

    def api(fn):
        """Auth, loading state, JSON body; ApiError and friends -> an error response."""
        def wrapper(*a, **kw):
            try:
                check_auth()
                model = need_model()
                body = {}
                if bottle.request.method == "POST":
                    body = parse_json(bottle.request.environ.get("chatfile.body", b""))
                return fn(model, body, *a, **kw)
            except ApiError as e:
                return fail_with(e)
            except ContextOverflowError as e:
                return fail(400, str(e), "invalid_request_error")
            except EngineBusy as e:
                return fail(503, str(e), "unavailable_error", headers=STATUS_HEADERS[503])
            except RecursionError:  # JSON that parses (up to ~990 levels) but nests too
                # deep for the code that walks it (tools shown in the generic format: 500)
                return fail(400, "the request is nested too deeply", "invalid_request_error")
        wrapper.__name__ = fn.__name__
        return wrapper

    def submit(req: Request) -> Request:
        # Counted in before the check (see stop_generating): a stop that began meanwhile
        # either finds this request to cancel or is seen here.
        st.cancels.add(req.cancel)
        if st.stopping:
            raise ApiError(503, "the server is stopping", headers={})
        try:
            return st.engine.submit(req)
        except ContextOverflowError:
            n_prompt_tok = max(len(r.prompt_ids) for r in req.group())
            raise context_overflow(n_prompt_tok, st.n_ctx,
                                   getattr(st.model, "n_ctx_train", 0) or 0) from None
        except EngineBusy:
            raise
        except ValueError as e:
            raise ApiError(400, str(e)) from None

    def submit_choices(reqs: list) -> list:
        """Queue the choices of one request (n of them, or n for each of a list of
        prompts) as one entry of the engine's queue: served one after another before any
        other request, so each finds its prompt in the cache. They share the first one's
        cancel: a client that goes away stops them all."""
        lead, *rest = reqs
        for r in rest:
            r.cancel = lead.cancel
        lead.followers = rest
        submit(lead)
        return reqs

    def watcher():
        """A function giving a request's events while checking that this request's client
        is still connected: one that hangs up cancels the request, also during a long
        prefill, when no event comes. Call it while the request is being handled (it looks
        up the request's socket); what it returns may be used later, in the reply's stream."""
        sock = bottle.request.environ.get("chatfile.socket")
        alive = (lambda: client_connected(sock)) if sock is not None else None
        return lambda req: req.iter_events(poll_s=CLIENT_POLL_S, client_alive=alive)

    def collect(req: Request, events_of=None):
        """Wait for a whole reply: (text, token events, final event). A client that hangs
        up meanwhile cancels the generation."""
        text, toks = [], []
        for ev in (events_of or watcher())(req):
            if ev.kind == "token":
                text.append(ev.text)
                if ev.token is not None:
                    toks.append(ev)
            elif ev.kind == "error":
                raise _worker_error(ev.error)
            elif ev.kind in ("prompt", "progress"):  # (the final event has the logprobs too)
                continue
            elif ev.finish_reason == "cancelled":  # nobody is left to read a reply
                raise ApiError(400, "the request was cancelled: the client closed the connection")
            else:
                return "".join(text), toks, ev
        raise ApiError(500, "the inference worker stopped unexpectedly")

    def collect_choices(reqs: list) -> list:
        """collect() of each choice in turn; one that fails stops the ones left."""
        events_of = watcher()
        try:
            return [collect(r, events_of) for r in reqs]
        except BaseException:
            reqs[0].cancel.set()
            raise

    def _worker_error(e):
        if isinstance(e, ContextOverflowError):
            return ApiError(400, str(e))
        err = ApiError(500, f"inference failed: {type(e).__name__}: {e}")
        st.log(f"chatfile: error: {err}")  # a bug of ours: the operator should see it too
        return err

    def openai_error_event(e: ApiError) -> bytes:
        return b"data: " + json_bytes(error_body(e.status, e.message, e.type, e.fields)) + b"\n\n"

    def sse(gen_fn, reqs: list, error_event=openai_error_event, keepalive: bool = False):
        """Stream Server-Sent Events made by gen_fn(events_of), where events_of(req) gives
        the events of one of `reqs` (see watcher); a client that goes away cancels them.
        error_event(ApiError) -> bytes: an error once the headers are sent, in-band.
        keepalive: an SSE comment whenever nothing went out for KEEPALIVE_EVERY_S."""
        events_of = watcher()
        bottle.response.content_type = "text/event-stream"
        bottle.response.set_header("Cache-Control", "no-cache")
        bottle.response.set_header("X-Accel-Buffering", "no")

        def stream():
            try:
                items = gen_fn(events_of)
                for obj in with_pauses(items, KEEPALIVE_EVERY_S) if keepalive else items:
                    if obj is None:  # a pause: a comment, for the client's idle watchdog
                        yield SSE_KEEPALIVE
                        continue
                    yield obj if isinstance(obj, bytes) else b"data: " + json_bytes(obj) + b"\n\n"
            except ApiError as e:
                yield error_event(e)
            except (OSError, GeneratorExit):
                raise
            except Exception as e:  # noqa: BLE001 - headers are sent: report in-band
                yield error_event(ApiError(500, f"internal error: {type(e).__name__}: {e}"))
            finally:
                for r in reqs:  # normal end: harmless; disconnect: stops the worker
                    r.cancel.set()
        return stream()

    def sse_choices(reqs: list, choice_chunks, usage_chunk, done: bool = True):
        """Stream the choices one after another (see choices_stream), with the chat
        route's keep-alive comments: /v1/completions, /completion and /infill are as
        silent as it during a long prefill, and SSE readers skip comments too."""
        return sse(choices_stream(reqs, choice_chunks, usage_chunk, done), reqs, keepalive=True)

    def choices_stream(reqs: list, choice_chunks, usage_chunk, done: bool = True,
                       finals=None):
        """The chunks of the choices one after another, as gen_fn(events_of) for sse():
        choice_chunks(k, req, events) yields choice k's chunks and returns its final
        event; then usage_chunk(finals), unless it is falsy (no usage asked for), and
        [DONE] (unless not `done`: llama-server's own stream has none). `finals`, a list
        when given, gets each choice's final event once its last chunk is taken."""
        def chunks(events_of):
            got = [] if finals is None else finals
            for k, r in enumerate(reqs):
                got.append((yield from choice_chunks(k, r, events_of(r))))
                if got[-1].finish_reason == "cancelled":  # and so are the ones left
                    break
            if usage_chunk:
                yield usage_chunk(got)
            if done:
                yield b"data: [DONE]\n\n"
        return chunks

    # -- OpenAI: chat completions ----------------------------------------------------
    def oai_logprobs(model, ev, n):
        tok_s, tok_b = piece(model, ev.token)
        tops = []
        for tid, p in (ev.probs or [])[:n]:
            s, b = piece(model, tid)
            tops.append({"token": s, "logprob": logprob(p), "bytes": b})
        return {"token": tok_s, "logprob": logprob(ev.prob or 0.0), "bytes": tok_b,
                "top_logprobs": tops}

    def reply_calls(text, tools, template, parallel: bool):
        """(content, calls) of a whole reply. parallel_tool_calls false: the first call
        only, as llama-server's grammar for one call would have ended the reply there."""
        content, calls = tool_calls.parse(text, tools, template)
        return content, (calls if parallel else calls[:1])

    def with_tool_calls(choice, text, tools, template, parallel: bool) -> None:
        """Puts a whole reply's tool calls into its choice, as OpenAI gives them: the calls
        in message.tool_calls, the text left around them (or null) as content. (A model
        shown its tools in the generic format answers {"response": TEXT}: then TEXT.)"""
        content, calls = reply_calls(text, tools, template, parallel)
        if calls:
            choice["message"] = {"role": "assistant", "content": content, "tool_calls": calls}
            choice["finish_reason"] = "tool_calls"
        elif content != text:
            choice["message"]["content"] = content

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    @api
    def chat_completions(model, body):
        reply = chat_reply(model, body)
        return (ok(reply.whole) if reply.chunks is None
                else sse(reply.chunks, reply.reqs, keepalive=True))

    def chat_prompt(model, body) -> tuple:
        """A chat request's prompt: (messages, the tools it shows, tool_choice, its text,
        its ids). /apply-template gives its text; /v1/messages/count_tokens counts its ids."""
        messages = reasoning.with_prefill_reasoning(get_messages(body, st.system))
        tools = get_tools(body)
        tool_choice = get_tool_choice(body, tools)
        tools = prompt_tools(model, tools, tool_choice)
        prompt_str, prompt = chat_ids(model, messages, tools,
                                      get_bool(body, "add_generation_prompt", True),
                                      {**st.template_kwargs, **get_template_kwargs(body)})
        return messages, tools, tool_choice, prompt_str, prompt

    def chat_reply(model, body) -> ChatReply:
        """The chat route's work, for it, /v1/messages and /v1/responses
        (runtime/messages_api.py and runtime/responses_api.py translate to it and from it)."""
        stream = get_bool(body, "stream", False)
        n = get_n(body, stream=stream)
        check_chat_fields(body)
        parallel = get_parallel_tool_calls(body)
        think = get_reasoning_format(body) != "none"
        want_lp = get_bool(body, "logprobs", False)
        top_lp = get_int(body, "top_logprobs", 0, lo=0, hi=20)
        if top_lp and not want_lp:
            # The alternatives asked for would never come; OpenAI and llama-server refuse it.
            raise ApiError(400, "'top_logprobs' needs 'logprobs': true")
        opts = body.get("stream_options")
        if opts is not None and not isinstance(opts, dict):
            raise ApiError(400, "'stream_options' must be an object")
        include_usage = get_bool(opts or {}, "include_usage", False)
        messages, tools, tool_choice, prompt_str, prompt = chat_prompt(model, body)
        # The reply is searched for tool calls only when the request offers tools and
        # allows calling them; every other request takes the path it always took.
        find_calls = tools is not None and tool_choice != "none"
        json_start = get_json_grammar(body)
        start = reply_grammar(model, tools, tool_choice, json_start)
        if start is not None and split_prefill(messages)[1] is not None:
            # The constraint would start from the reply's first byte, after the prefill:
            # the two together would not make one valid value.
            raise ApiError(400, "an assistant prefill (a last assistant message) cannot be "
                                "combined with response_format, json_schema or a forced "
                                "tool call")
        # The template in effect tells parse which formats the prompt asked for. A reply
        # under the request's own JSON format is that JSON, never a {"response"} to unwrap.
        template = template_in_effect(model) if tools and json_start is None else None
        prefill = split_prefill(messages)[1]
        # Each choice's reply is split into reasoning and content as it comes (reasoning.py);
        # tool calls are looked for in the content only.
        new_split = (lambda: reasoning.ReasoningSplit(
            reasoning.opens_thinking(prompt_str, prefill),
            not reasoning.continues_reasoning(prefill))) if think else None
        params = sampling_params(body, openai=True, default_temp=st.temperature, model=model)
        max_tokens, stop = get_max_tokens(body, st.n_ctx), get_stop(body)
        cache_prompt = get_bool(body, "cache_prompt", True)
        progress = stream and get_bool(body, "return_progress", False)  # (llama-server: streamed only)
        pred_ids = get_prediction(body, model, st.n_ctx)
        refuse_with_prediction(body, n, want_lp, params, body.get("tools"))
        budget_tok, budget_message = get_reasoning_budget(body, st.reasoning_budget,
                                                          st.reasoning_budget_message)
        if start is not None:  # a constrained reply is its JSON from its first token: no
            budget_tok = -1    # thought of its own, and a forced `</think>` would break it

        def request(j):  # choice j: its own seed (choice_params), constraint and budget
            return Request(prompt_ids=prompt, params=choice_params(params, j),
                           max_tokens=max_tokens, stop=stop,
                           n_probs=max(top_lp, 1) if want_lp else 0, cache_prompt=cache_prompt,
                           constraint=output_constraint(model, start), prediction=pred_ids or None,
                           return_progress=progress, reasoning_budget=reasoning.budget_for(
                               model, budget_tok, budget_message,
                               reasoning.opens_thinking(prompt_str, prefill),
                               not reasoning.continues_reasoning(prefill)))
        cid, created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())
        base = {"id": cid, "created": created, "model": st.model_id, "system_fingerprint": "chatfile"}
        reqs = submit_choices([request(j) for j in range(n)])

        thought_tok = []  # each choice's reasoning tokens (ChatReply.reasoning_tok)

        def usage(finals):  # the prompt is counted once, as OpenAI counts it
            return _usage(finals[0].prompt_tokens, finals, pred_ids is not None, thought_tok)

        if not stream:
            choices, finals = [], []
            for i, (text, toks, final) in enumerate(collect_choices(reqs)):
                thought, n_tok = "", len(toks)
                if new_split:  # token by token: which tokens are the content's
                    thought, text, toks = reasoning.split_reply(new_split(), text, toks)
                thought_tok.append(n_tok - len(toks))
                choice = {"index": i, "message": {"role": "assistant", "content": text},
                          "logprobs": None, "finish_reason": final.finish_reason}
                if want_lp:
                    choice["logprobs"] = {"content": [oai_logprobs(model, e, top_lp) for e in toks]}
                if find_calls:
                    with_tool_calls(choice, text, tools, template, parallel)
                if thought:  # llama-server's field, only when there was reasoning
                    choice["message"]["reasoning_content"] = thought
                choices.append(choice)
                finals.append(final)
            return ChatReply(reqs, finals, whole={
                **base, "object": "chat.completion", "choices": choices,
                "usage": usage(finals), "timings": _summed(f.timings for f in finals).as_dict()},
                reasoning_tok=thought_tok)

        head = {**base, "object": "chat.completion.chunk"}

        def chunk(index, delta, lp=None, finish_reason=None):
            return {**head, "choices": [{"index": index, "delta": delta, "logprobs": lp,
                                         "finish_reason": finish_reason}]}

        def choice_chunks(index, events):
            """One choice as it comes; returns its final event. When it may hold tool
            calls, the text from where a call could begin waits for the end of the reply,
            and then goes out as tool_calls deltas or, if it held no call, as content."""
            yield chunk(index, {"role": "assistant", "content": ""})
            reply, sent = "", 0   # the reply so far, and how much of it went out as content
            n_tok = n_content_tok = 0  # the reply's tokens, and its content's
            hold = tool_calls.CallHold(tools) if find_calls else None  # held_from, as it grows
            # The logprobs go with the content's tokens only (ContentTokens), once known.
            split = reasoning.ContentTokens(new_split()) if new_split else None

            def content_lp(toks):
                return ({"content": [oai_logprobs(model, e, top_lp) for e in toks]}
                        if want_lp and toks else None)
            for ev in events:
                if ev.kind == "progress":  # llama-server's chunk: an empty delta and the progress
                    yield {**chunk(index, {}), "prompt_progress": ev.progress}
                elif ev.kind == "token":
                    tok = ev if ev.token is not None else None  # None: the held tail's text
                    thought, out, toks = (split.push(ev.text, tok) if split else
                                          ("", ev.text, [tok] if tok else []))
                    n_tok, n_content_tok = n_tok + (tok is not None), n_content_tok + len(toks)
                    lp = content_lp(toks)
                    if find_calls:
                        reply += out
                        upto = max(sent, hold.push(out))
                        out, sent = reply[sent:upto], upto
                    delta = {"reasoning_content": thought} if thought else {}
                    if out or lp:
                        delta["content"] = out
                    if delta:
                        yield chunk(index, delta, lp)
                elif ev.kind == "error":
                    raise _worker_error(ev.error)
                else:
                    thought, tail, toks = split.finish() if split else ("", "", [])
                    thought_tok.append(n_tok - n_content_tok - len(toks))
                    if thought:
                        yield chunk(index, {"reasoning_content": thought})
                    reply += tail
                    content, calls = (reply_calls(reply[sent:], tools, template, parallel)
                                      if find_calls else (tail, []))
                    if content or content_lp(toks):
                        yield chunk(index, {"content": content}, content_lp(toks))
                    for i, call in enumerate(calls):
                        yield chunk(index, {"tool_calls": [{"index": i, **call}]})
                    last = chunk(index, {},
                                 finish_reason="tool_calls" if calls else ev.finish_reason)
                    if ev.timings is not None:
                        last["timings"] = ev.timings.as_dict()  # this choice's
                    yield last
                    return ev
            raise ApiError(500, "the inference worker stopped unexpectedly")

        finals = []
        return ChatReply(reqs, finals, chunks=choices_stream(
            reqs, lambda k, r, events: choice_chunks(k, events),
            include_usage and (lambda got: {**head, "choices": [], "usage": usage(got)}),
            finals=finals), reasoning_tok=thought_tok)

    # -- Anthropic: messages, through the chat route (runtime/messages_api.py) ----------
    @app.post("/v1/messages")
    @api
    def messages(model, body):
        reply = chat_reply(model, messages_api.chat_body(body))
        msg_id = messages_api.message_id()
        if reply.chunks is None:
            return ok(messages_api.whole_message(reply.whole, reply.finals[0], msg_id,
                                                 st.model_id))
        n_input_tok = len(reply.reqs[0].prompt_ids)
        return sse(lambda events_of: messages_api.stream_events(
            reply.chunks(events_of), n_input_tok, msg_id, st.model_id, reply.finals),
            reply.reqs, error_event=messages_api.error_event)

    @app.post("/v1/messages/count_tokens")
    @api
    def count_tokens(model, body):
        prompt_ids = chat_prompt(model, messages_api.chat_body(body, count_tokens=True))[-1]
        return ok({"input_tokens": len(prompt_ids)})

    # -- OpenAI: responses, through the chat route (runtime/responses_api.py) ----------
    @app.post("/v1/responses")
    @app.post("/responses")
    @api
    def responses(model, body):
        with responses_api.in_clients_words():
            reply = chat_reply(model, responses_api.chat_body(body))
        resp = responses_api.head(body, st.model_id)
        if reply.chunks is None:
            return ok(responses_api.whole_response(reply.whole, reply.finals, resp,
                                                   reply.reasoning_tok))
        events = responses_api.Events(resp)
        return sse(lambda events_of: events.stream(reply.chunks(events_of), reply.finals,
                                                   reasoning_tok=reply.reasoning_tok),
                   reply.reqs, error_event=events.error)

    @app.post("/v1/responses/input_tokens")
    @app.post("/responses/input_tokens")
    @api
    def responses_input_tokens(model, body):
        with responses_api.in_clients_words():
            prompt_ids = chat_prompt(model, responses_api.chat_body(body))[-1]
        return ok(responses_api.count_object(len(prompt_ids)))

    @app.post("/v1/responses/compact")
    @app.post("/responses/compact")
    def compact_responses():
        return not_supported(why=responses_api.not_compacted())

    # Any id but input_tokens and compact (whose GETs are the 405 of POST routes), and
    # anything under it (POST .../cancel): the body and the model are not needed to say so.
    @app.route("/v1/responses/<response_id:re:(?!(?:input_tokens|compact)$).+>",
               method=["GET", "POST", "DELETE"])
    @app.route("/responses/<response_id:re:(?!(?:input_tokens|compact)$).+>",
               method=["GET", "POST", "DELETE"])
    def stored_response(response_id):
        try:
            check_auth()
            raise responses_api.not_stored(response_id.split("/")[0])
        except ApiError as e:
            return fail_with(e)

    # -- OpenAI: completions -----------------------------------------------------------
    @app.post("/v1/completions")
    @api
    def completions(model, body):
        if "prompt" not in body:
            raise ApiError(400, "'prompt' is required")
        echo = get_bool(body, "echo", False)
        if get_str(body, "suffix", ""):
            raise ApiError(400, "'suffix' is not supported here; use /infill to fill in the middle")
        n_lp = get_int(body, "logprobs", 0, lo=0, hi=5)
        stream = get_bool(body, "stream", False)
        opts = body.get("stream_options")
        if opts is not None and not isinstance(opts, dict):
            raise ApiError(400, "'stream_options' must be an object")
        include_usage = get_bool(opts or {}, "include_usage", False)
        prompts = completion_prompts(model, body["prompt"])
        # best_of above n: that many candidates of each prompt, the n best returned (not
        # streamed). Ranking needs every token's logprob: each candidate reports at least 1.
        n, best_of = get_choices(body, len(prompts), stream)
        n_probs = max(n_lp, 1) if best_of > n else n_lp
        params = sampling_params(body, openai=True, default_temp=st.temperature, model=model)
        # OpenAI's documented default for completions is 16 tokens
        max_tokens = get_max_tokens(body, st.n_ctx) if limit_is_set(body) else min(16, st.n_ctx)
        stop, cache_prompt = get_stop(body), get_bool(body, "cache_prompt", True)
        grammar = get_json_grammar(body)
        pred_ids = get_prediction(body, model, st.n_ctx)
        refuse_with_prediction(body, n, n_lp > 0, params, None)  # as on chat completions
        budget = completion_budget(model, body, grammar)

        def request(ids, j):  # choice (or candidate) j of the prompt `ids`
            # echo with logprobs: the prompt's tokens with their logprobs come first; the
            # prompt's first choice finds them, the others take the same and the cache.
            return Request(prompt_ids=ids, params=choice_params(params, j),
                           max_tokens=max_tokens, stop=stop, n_probs=n_probs,
                           prompt_logprobs=echo and n_lp > 0 and j == 0,
                           cache_prompt=cache_prompt, continuation=True,
                           constraint=output_constraint(model, grammar),  # one per request
                           prediction=pred_ids or None, reasoning_budget=budget(ids))

        base = {"id": "cmpl-" + uuid.uuid4().hex[:24], "object": "text_completion",
                "created": int(time.time()), "model": st.model_id, "system_fingerprint": "chatfile"}

        def logprobs_of(toks, offsets):
            # text_offset: where each token's text begins in the prompt's text followed by
            # the completion, echo or not, as llama-cpp-python counts it after OpenAI's
            # legacy API; streamed, it goes on from chunk to chunk. `offsets`, a decoder of
            # our own fed the tokens the engine's was fed, gives each token's place in the
            # text even while the engine holds text back (a stop string may begin there)
            # or a character is still incomplete.
            if not n_lp:
                return None
            return {"tokens": [piece(model, ev.token)[0] for ev in toks],
                    "token_logprobs": [logprob(ev.prob or 0.0) for ev in toks],
                    "top_logprobs": [legacy_tops(model, ev.probs) for ev in toks],
                    "text_offset": [offsets.push(ev.token) for ev in toks]}

        def usage(finals):
            # each prompt counted once, as OpenAI counts it, and every candidate's tokens
            # (OpenAI bills best_of's too)
            return _usage(sum(f.prompt_tokens for f in finals[::best_of]), finals,
                          pred_ids is not None)

        # OpenAI's order: prompt-major, choice k is choice k % n of prompt k // n (and
        # candidate j of prompt p is reqs[p * best_of + j])
        reqs = submit_choices([request(ids, j) for ids, _ in prompts for j in range(best_of)])
        befores = [prompt_text(model, prompt, ids) if echo or n_lp else ""
                   for ids, prompt in prompts]

        if not stream:
            # The end token is listed: without it lm-eval's [ctxlen:-1] would drop the
            # last prompt token's logprob instead.
            results = [(text, with_end_token(toks, final), final)
                       for text, toks, final in collect_choices(reqs)]
            choices = []
            for p, (ids, _) in enumerate(prompts):
                cands = results[p * best_of:(p + 1) * best_of]
                first = cands[0][2]  # the prompt's first candidate has its prompt logprobs
                for text, toks, final in (best_candidates(cands, n) if best_of > n else cands):
                    lp = logprobs_of(toks, TextOffsets(model, start=len(befores[p])))
                    if lp is not None and echo:
                        lp = joined_logprobs(prompt_logprobs(model, ids, first.prompt_probs,
                                                             befores[p]), lp)
                    choices.append({"index": len(choices),
                                    "text": (befores[p] if echo else "") + text,
                                    "logprobs": lp, "finish_reason": final.finish_reason})
            finals = [final for _, _, final in results]
            return ok({**base, "choices": choices, "usage": usage(finals),
                       "timings": _summed(f.timings for f in finals).as_dict()})

        def choice_chunks(k, req, events, prompt_lps: dict):
            """Choice k as it comes; returns its final event. prompt_lps: the legacy
            logprobs of each prompt (by its place in the list), once its first choice has
            them."""
            p = k // n  # (streamed, best_of is n: get_best_of refuses more with stream)
            (ids, _), before = prompts[p], befores[p]
            offsets = TextOffsets(model, start=len(before))

            def prompt_chunk(lp=None):  # echo: the prompt first, as its own chunk
                return {**base, "choices": [{"index": k, "text": before, "logprobs": lp,
                                             "finish_reason": None}]}
            if echo and not req.prompt_logprobs:  # at once: nothing to wait for
                yield prompt_chunk(prompt_lps.get(p))
            for ev in events:
                if ev.kind == "prompt":  # its logprobs, once the prompt is evaluated
                    prompt_lps[p] = prompt_logprobs(model, ids, ev.prompt_probs, before)
                    yield prompt_chunk(prompt_lps[p])
                elif ev.kind == "token":
                    if ev.text or (n_lp and ev.token is not None):
                        lp = logprobs_of([ev], offsets) if ev.token is not None else None
                        yield {**base, "choices": [{"index": k, "text": ev.text, "logprobs": lp,
                                                    "finish_reason": None}]}
                elif ev.kind == "error":
                    raise _worker_error(ev.error)
                else:
                    if n_lp and ev.token is not None:  # the end token, as the whole answer has it
                        yield {**base, "choices": [{"index": k, "text": "",
                                                    "logprobs": logprobs_of([ev], offsets),
                                                    "finish_reason": None}]}
                    yield {**base, "choices": [{"index": k, "text": "", "logprobs": None,
                                                "finish_reason": ev.finish_reason}]}
                    return ev
            raise ApiError(500, "the inference worker stopped unexpectedly")

        prompt_lps: dict = {}
        return sse_choices(reqs, lambda k, r, events: choice_chunks(k, r, events, prompt_lps),
                           include_usage and (lambda finals: {**base, "choices": [],
                                                              "usage": usage(finals)}))

    def model_card(model) -> dict:
        return {"id": st.model_id, "object": "model", "created": st.created, "owned_by": "chatfile",
                "meta": {"n_vocab": model.n_vocab, "n_ctx_train": model.n_ctx_train,
                         "n_ctx": st.n_ctx, "arch": model.arch}}

    @app.get("/v1/models")
    @app.get("/models")
    @api
    def models(model, body):
        return ok({"object": "list", "data": [model_card(model)]})

    @app.get("/v1/models/<model_id:path>")
    @app.get("/models/<model_id:path>")
    @api
    def model_by_id(model, body, model_id):  # the OpenAI client's models.retrieve()
        if model_id != st.model_id:
            raise ApiError(404, f"no model {model_id[:200]!r} here; this server has {st.model_id!r}")
        return ok(model_card(model))

    # -- llama-server: /completion and /infill ----------------------------------------
    def llama_requests(model, body, prompts: list, n: int, stream: bool) -> list:
        """The requests of llama-server's /completion or /infill: n completions of each of
        `prompts` (lists of ids), prompt-major, as llama-server numbers its results; with
        a seed, completion j of a prompt gets seed + j (choice_params)."""
        progress = stream and get_bool(body, "return_progress", False)
        n_probs = get_int(body, "n_probs", 0, lo=0, hi=MAX_N_PROBS)
        params = sampling_params(body, openai=False, default_temp=st.temperature, model=model)
        max_tokens, stop = get_max_tokens(body, st.n_ctx), get_stop(body)
        cache_prompt, grammar = get_bool(body, "cache_prompt", True), get_json_grammar(body)
        budget = completion_budget(model, body, grammar)
        return [Request(prompt_ids=ids, params=choice_params(params, j), max_tokens=max_tokens,
                        stop=stop, n_probs=n_probs, cache_prompt=cache_prompt, continuation=True,
                        constraint=output_constraint(model, grammar),  # stateful: one each
                        reasoning_budget=budget(ids), return_progress=progress)
                for ids in prompts for j in range(n)]

    def completion_budget(model, body, grammar):
        """ids -> the reasoning budget of one reply to the prompt `ids` (stateful: one
        each), for llama-server's completion routes (/completion, /infill and
        /v1/completions read the same fields): the request's own budget only, the
        server's --reasoning-budget being for chats. A prompt that ends with `<think>`
        opened a thought."""
        budget_tok, budget_message = get_reasoning_budget(body)
        if grammar is not None:
            budget_tok = -1  # as for a chat: the JSON starts at the reply's first token

        def budget(ids):
            return reasoning.budget_for(
                model, budget_tok, budget_message, budget_tok >= 0 and reasoning.opens_thinking(
                    b"".join(model.tokenizer.token_to_piece(t, special=True)
                             for t in ids[-32:]).decode(errors="replace")))
        return budget

    def completion_probs(model, ev, n):
        s, b = piece(model, ev.token)
        tops = []
        for tid, p in (ev.probs or [])[:n]:
            ts, tb = piece(model, tid)
            tops.append({"id": tid, "token": ts, "bytes": tb, "logprob": logprob(p)})
        return {"id": ev.token, "token": s, "bytes": b, "logprob": logprob(ev.prob or 0.0),
                "top_logprobs": tops}

    def final_fields(req, final):
        return {"model": st.model_id, "tokens_predicted": final.completion_tokens,
                "tokens_evaluated": final.prompt_tokens,
                "tokens_cached": final.timings.cached_n + final.timings.prompt_n + final.completion_tokens,
                "stop": True, "stop_type": ("eos" if final.stopped_eos else "word" if final.stopped_word
                                            else "limit" if final.stopped_limit else "none"),
                "stopped_eos": final.stopped_eos, "stopped_word": final.stopped_word,
                "stopped_limit": final.stopped_limit, "stopping_word": final.stopping_word,
                # llama-server's: the reply ended where the context does (prompt and reply
                # fill it), so it may have been cut short; n_predict's own limit is not
                "truncated": final.stopped_limit and (
                    final.prompt_tokens + final.completion_tokens >= st.n_ctx),
                "id_slot": 0, "timings": final.timings.as_dict()}

    def llama_result(model, req, text, toks, final) -> dict:
        # The end token is listed too, as llama-server lists it (with or without
        # n_probs): tokens_predicted counts it, and so the lists agree with it.
        toks = with_end_token(toks, final)
        out = {"content": text, "tokens": [e.token for e in toks], **final_fields(req, final)}
        if req.n_probs:
            out["completion_probabilities"] = [completion_probs(model, e, req.n_probs) for e in toks]
        return out

    def llama_reply(model, reqs: list, stream: bool):
        """As llama-server answers /completion and /infill: one request as one result
        object, several (a list of prompts, or n_cmpl above 1) as an array of results;
        every result has its `index` (0 for a single one), and so has every streamed
        chunk."""
        submit_choices(reqs)
        if not stream:
            results = [{"index": k, **llama_result(model, r, *c)}
                       for k, (r, c) in enumerate(zip(reqs, collect_choices(reqs)))]
            return ok(results if len(results) > 1 else results[0])

        def chunks(k, req, events):  # result k as it comes; returns its final event
            n_predicted = 0  # llama-server's chunks count the tokens so far, as its last does

            def token_chunk(ev):
                c = {"index": k, "content": ev.text,
                     "tokens": [] if ev.token is None else [ev.token], "stop": False,
                     "id_slot": 0, "tokens_predicted": n_predicted,
                     "tokens_evaluated": len(req.prompt_ids)}
                if req.n_probs and ev.token is not None:
                    c["completion_probabilities"] = [completion_probs(model, ev, req.n_probs)]
                return c
            for ev in events:
                if ev.kind == "progress":
                    yield {"index": k, "content": "", "tokens": [], "stop": False, "id_slot": 0,
                           "tokens_predicted": 0, "tokens_evaluated": len(req.prompt_ids),
                           "prompt_progress": ev.progress}
                elif ev.kind == "token":
                    if not ev.text and ev.token is None:
                        continue
                    n_predicted += ev.token is not None
                    yield token_chunk(ev)
                elif ev.kind == "error":
                    raise _worker_error(ev.error)
                else:
                    if ev.token is not None:  # the end token (text ""): its own chunk, as
                        n_predicted += 1      # llama-server sends it, before the last
                        yield token_chunk(ev)
                    yield {"index": k, "content": "", "tokens": [], **final_fields(req, ev)}
                    return ev
            raise ApiError(500, "the inference worker stopped unexpectedly")
        # llama-server ends its own stream with the last result's last chunk: no [DONE]
        return sse_choices(reqs, chunks, None, done=False)

    @app.post("/completion")
    @app.post("/completions")
    @api
    def completion(model, body):
        if "prompt" not in body:
            raise ApiError(400, "'prompt' is required")
        stream = get_bool(body, "stream", False)
        prompts = completion_prompts(model, body["prompt"])
        n = get_n(body, len(prompts), stream)  # llama-server's n_cmpl, or n
        return llama_reply(model, llama_requests(model, body, [ids for ids, _ in prompts], n, stream),
                           stream)

    @app.post("/infill")
    @api
    def infill(model, body):
        stream = get_bool(body, "stream", False)
        n = get_n(body, 1, stream)  # llama-server's n_cmpl, or n, as on /completion
        prefix = get_str(body, "input_prefix", "")
        suffix = get_str(body, "input_suffix", "")
        extra = body.get("input_extra")
        if extra is None:
            extra = []
        if not isinstance(extra, list):
            raise ApiError(400, "'input_extra' must be a list")
        chunks = []  # (filename, text) of other files, as llama.vim / llama.vscode send them
        for i, chunk in enumerate(extra):
            if not isinstance(chunk, dict) or not isinstance(chunk.get("text"), str):
                raise ApiError(400, f"'input_extra[{i}]' must be an object with a string 'text'")
            filename = chunk.get("filename", "tmp")
            if not isinstance(filename, str):
                raise ApiError(400, f"'input_extra[{i}].filename' must be a string")
            chunks.append((filename, chunk["text"]))
        prompt = get_str(body, "prompt", "")
        n_predict = get_max_tokens(body, st.n_ctx)
        try:
            ids = list(model.fim_prompt(prefix, suffix, extra=chunks, prompt=prompt,
                                        n_ctx=st.n_ctx, n_predict=n_predict))
        except ValueError as e:
            raise ApiError(400, f"this model cannot fill in the middle: {e}") from None
        return llama_reply(model, llama_requests(model, body, [ids], n, stream), stream)

    # -- llama-server: tokens and templates --------------------------------------------
    @app.post("/tokenize")
    @api
    def tokenize(model, body):
        content = get_str(body, "content")
        add_special = get_bool(body, "add_special", False)
        parse_special = get_bool(body, "parse_special", True)
        with_pieces = get_bool(body, "with_pieces", False)
        ids = model.tokenize(content, add_special=add_special, parse_special=parse_special)
        if not with_pieces:
            return ok({"tokens": ids})
        toks = []
        for t in ids:
            b = model.tokenizer.token_to_piece(t, special=True)  # as llama-server: <|im_start|> too
            b = b.encode("utf-8") if isinstance(b, str) else b
            try:
                p = b.decode("utf-8")
            except UnicodeDecodeError:
                p = list(b)
            toks.append({"id": t, "piece": p})
        return ok({"tokens": toks})

    @app.post("/detokenize")
    @api
    def detokenize(model, body):
        toks = body.get("tokens", MISSING)
        if toks is MISSING:
            raise ApiError(400, "'tokens' is required")
        if not isinstance(toks, list) or not all(is_int(t) for t in toks):
            raise ApiError(400, "'tokens' must be a list of integer token ids")
        bad = [t for t in toks if not 0 <= t < model.n_vocab]
        if bad:
            raise ApiError(400, f"token id {bad[0]} is out of range [0, {model.n_vocab})")
        return ok({"content": model.tokenizer.detokenize(toks, unparse_special=True)})

    @app.post("/apply-template")
    @api
    def apply_template(model, body):
        text = chat_prompt(model, body)[3]  # the chat route's prompt, prefill and tools too
        return ok({"prompt": text})

    # -- llama-server's routes for what this server does not do ------------------------
    def not_supported(doing: str = "", why: str = ""):
        """501, as llama-server answers these without --embeddings or --reranking: a
        client sees at once that the server lacks the feature, where a 404 looked like
        a wrong URL. X-Should-Retry: false keeps the OpenAI clients from retrying it
        (they retry any 5xx); asking again cannot help. `why`: the whole message."""
        try:
            check_auth()
        except ApiError as e:
            return fail_with(e)
        return fail(501, why or f"this server does not {doing}: it only generates text",
                    "not_supported_error", headers={"X-Should-Retry": "false"})

    @app.post("/v1/embeddings")
    @app.post("/embeddings")
    @app.post("/embedding")
    def embeddings():
        return not_supported("compute embeddings")

    @app.post("/v1/rerank")
    @app.post("/rerank")
    @app.post("/v1/reranking")
    @app.post("/reranking")
    def rerank():
        return not_supported("rerank documents")

    @app.get("/props")
    @api
    def props(model, body):
        from runtime.dry import DRY_SEQUENCE_BREAKERS
        from runtime.sampling import SamplingParams
        d = SamplingParams()
        if st.temperature is not None:
            d.temperature = st.temperature
        return ok({
            "model_name": st.model_id, "model_path": st.model_path, "n_ctx": st.n_ctx,
            "chat_template": template_in_effect(model), "total_slots": 1,
            # No template of its own (and none given): likely a base model, which continues
            # text instead of answering; the page says so.
            "chat_template_builtin": not model.chat_template,
            "title": st.title or st.model_id, "system_prompt": st.system or "",
            # The largest request body taken (413 above it): the page checks a message
            # against it before sending, and keeps one too big in its box.
            "max_body_bytes": st.max_body_bytes,
            "default_generation_settings": {
                "n_ctx": st.n_ctx, "model": st.model_id,
                "params": {"temperature": d.temperature, "top_k": d.top_k, "top_p": d.top_p,
                           "min_p": d.min_p, "repeat_penalty": d.repeat_penalty,
                           "repeat_last_n": d.repeat_last_n, "n_predict": -1,
                           "min_keep": d.min_keep, "typical_p": d.typical_p,
                           "top_n_sigma": d.top_n_sigma, "xtc_probability": d.xtc_probability,
                           "xtc_threshold": d.xtc_threshold, "dynatemp_range": d.dynatemp_range,
                           "dynatemp_exponent": d.dynatemp_exponent, "mirostat": d.mirostat,
                           "mirostat_tau": d.mirostat_tau, "mirostat_eta": d.mirostat_eta,
                           "dry_multiplier": d.dry_multiplier, "dry_base": d.dry_base,
                           "dry_allowed_length": d.dry_allowed_length,
                           "dry_penalty_last_n": d.dry_penalty_last_n,
                           "dry_sequence_breakers": list(DRY_SEQUENCE_BREAKERS),
                           "adaptive_target": d.adaptive_target,
                           "adaptive_decay": d.adaptive_decay,
                           # the chain's order, by llama.cpp's names, as llama-server lists it
                           "samplers": list(d.samplers)}},
            "can_quit": st.quit is not None, "build_info": "chatfile"})

    @app.get("/slots")
    @api
    def slots(model, body):
        """llama-server's slot view: is the one worker busy, how full is its cache."""
        eng = st.engine
        slot = {"id": 0, "n_ctx": st.n_ctx, "is_processing": eng.busy.is_set(),
                "n_past": len(eng.session.tokens), "queued": eng.queued()}
        if eng.prompt_cache is not None:  # --cache-ram: the other conversations' prompts
            slot["prompt_cache"] = eng.prompt_cache.stats()
        return ok([slot])

    # -- llama-server's slot files (--slot-save-path; runtime/slot_files.py) -----------
    @app.post("/slots/<id_slot>")
    def slot_action(id_slot):
        """Save the slot's state to a file, restore it from one, or erase it. The work
        runs on the engine's worker between requests: one that waits while a reply is
        being generated, as llama-server defers it."""
        try:
            check_auth()
            if not st.slot_save_path:  # llama-server's words and status
                raise ApiError(501, "This server does not support slots action. Start it "
                               "with `--slot-save-path`", headers={"X-Should-Retry": "false"})
            need_model()
            try:
                if int(id_slot) != 0:
                    raise ValueError
            except ValueError:
                raise ApiError(400, f"Invalid slot ID {id_slot!r}: this server has one "
                                    f"slot, 0") from None
            action = bottle.request.query.get("action", "")
            if action == "erase":  # no body needed
                return slot_erase()
            if action not in ("save", "restore"):
                raise ApiError(400, "Invalid action: use ?action=save, restore or erase")
            body = parse_json(bottle.request.environ.get("chatfile.body", b""))
            name = slot_files.check_filename(body.get("filename"))
            path = os.path.join(st.slot_save_path, name)
            return slot_save(name, path) if action == "save" else slot_restore(name, path)
        except slot_files.SlotFileError as e:
            return fail(400, str(e))
        except ApiError as e:
            return fail_with(e)
        except EngineBusy as e:
            return fail(503, str(e), "unavailable_error", headers=STATUS_HEADERS[503])

    def on_worker(job):
        """Run job(session) on the engine's worker, between requests; wait for it and
        return what it returned."""
        out = []
        collect(submit(Request(prompt_ids=[], session_job=lambda s: out.append(job(s)))))
        return out[0]

    def slot_save(name, path):
        # A directory, a named pipe, a device: the client's mistake (a directory was a 500)
        slot_files.check_save_target(name, path)

        def job(session):
            out = {"n_saved": len(session.tokens)}
            t0 = time.perf_counter()
            try:
                out["n_written"] = slot_files.save(session, path)
            except OSError as e:  # a full disk, a directory gone: the session is fine
                out["error"] = e
            out["ms"] = 1e3 * (time.perf_counter() - t0)
            return out
        out = on_worker(job)
        if "error" in out:
            raise ApiError(500, f"could not write {name}: {out['error'].strerror or out['error']}")
        return ok({"id_slot": 0, "filename": name, "n_saved": out["n_saved"],
                   "n_written": out["n_written"], "timings": {"save_ms": round(out["ms"], 3)}})

    def slot_restore(name, path):
        t0 = time.perf_counter()
        try:  # read and checked here, in full: the session is touched only if it is fine
            snap, n_read = slot_files.read(path, st.engine.session)
        except FileNotFoundError:
            raise ApiError(400, f"no file {name} in the --slot-save-path directory") from None
        except OSError as e:
            raise ApiError(400, f"could not read {name}: {e.strerror or e}") from None
        n_restored = on_worker(lambda session: slot_files.restore(session, snap))
        return ok({"id_slot": 0, "filename": name, "n_restored": n_restored, "n_read": n_read,
                   "timings": {"restore_ms": round(1e3 * (time.perf_counter() - t0), 3)}})

    def slot_erase():
        n_erased = on_worker(lambda session: slot_files.erase(session, st.engine.prompt_cache))
        return ok({"id_slot": 0, "n_erased": n_erased})

    # -- health, the page, and everything else ----------------------------------------
    @app.get("/health")
    @app.get("/v1/health")
    def health():
        if st.error:
            return _health(503, {"status": "error", "message": st.error,
                                 **error_body(503, f"the model failed to load: {st.error}")})
        if st.engine is None:
            return _health(503, {"status": "loading", "progress": round(st.progress, 4),
                                 **error_body(503, "loading model")}, STATUS_HEADERS[503])
        return _health(200, {"status": "ok"})

    @app.post("/quit")
    def quit_server():
        """The page's Quit button: a chat started by a double-click may have no window to
        close. Only for a server started with a browser; one started for scripts
        (--no-browser) has no /quit."""
        if st.quit is None:
            return fail(404, "not found: /quit")
        if not _own_origin(bottle.request.environ, st):  # even with --cors: only our page
            return fail(403, "only the chat page of this server can stop it")
        try:
            check_auth()
        except ApiError as e:
            return fail_with(e)
        st.quit()
        return ok({"stopping": True})

    def _health(status, obj, headers=None):
        obj["can_quit"] = st.quit is not None  # (the page then offers Quit)
        if st.instance:  # (lets a second start of the same chat find this one)
            obj["instance"] = st.instance
        r = bottle.HTTPResponse(json_bytes(obj), status=status, headers=headers or {})
        r.content_type = "application/json"
        r.set_header("Cache-Control", "no-store")
        return r

    def web_file(rel: str):
        """The page's file at `rel`, or None: never a path outside runtime/web/."""
        root = WEB_DIR.resolve()
        parts = rel.replace("\\", "/").split("/")
        if "\x00" in rel or any(p in ("..", ".") for p in parts) or rel.startswith("/"):
            return None
        path = (root / rel).resolve()
        try:
            path.relative_to(root)
        except ValueError:
            return None
        return path if path.is_file() else None

    def static(rel: str):
        root = WEB_DIR.resolve()
        path = web_file(rel)
        if path is None:
            if rel == "index.html":
                return fail(404, "the chat page is not installed in this build")
            return fail(404, f"not found: /{rel}")
        r = bottle.static_file(str(path.relative_to(root)), root=str(root))
        if isinstance(r, bottle.HTTPError):
            return fail(r.status_code, f"cannot read /{rel}")
        r.set_header("Cache-Control", "no-cache")
        return r

    @app.get("/")
    def index():
        return static("index.html")

    @app.get("/<rel:path>")
    def static_or_404(rel):
        if "/" + rel in API_POST:
            return fail(405, f"use POST for /{rel}", headers={"Allow": "POST"})
        return static(rel)

    @app.route("/<rel:path>", method=["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
    @app.route("/", method=["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
    def other_methods(rel=""):
        path = "/" + rel
        if bottle.request.method == "OPTIONS" and st.cors:
            return bottle.HTTPResponse(status=204)
        if path in API_POST:
            return fail(405, f"method {bottle.request.method} is not allowed on {path}",
                        headers={"Allow": "POST"})
        # (not (WEB_DIR / rel).is_file(): 405 or 404 told anyone, before the API key,
        # whether /../../home/USER/.ssh/id_rsa exists)
        if path in API_GET or path == "/" or web_file(rel) is not None:
            return fail(405, f"method {bottle.request.method} is not allowed on {path}",
                        headers={"Allow": "GET, HEAD"})
        return fail(404, f"not found: {path}")

    return app


# ---- WSGI glue: body limit, CORS, last-resort error catching ----------------------------

def cors_headers(environ=None) -> list:
    """The CORS headers of a --cors reply. A preflight may send the request headers it
    asks for: the OpenAI JavaScript client sends x-stainless-* headers with every
    request, which a fixed list refused, so the browser never sent the request. Which
    origins are served is decided elsewhere (_foreign_request): any, under --cors."""
    out = list(CORS_HEADERS)
    asked = (environ or {}).get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS", "").strip()
    if (asked and len(asked) <= PREFLIGHT_HEADERS_MAX_CHARS
            and PREFLIGHT_HEADERS_RE.fullmatch(asked)):
        out[1] = ("Access-Control-Allow-Headers", f"{CORS_HEADERS[1][1]}, {asked}")
    return out


def shaped_error(path: str, status: int, message: str, type_=None, fields=None) -> dict:
    """An error body in the shape of the route's API: Anthropic's on its Messages routes
    (their clients read no other), OpenAI's everywhere else."""
    if messages_api.is_messages_path(path):
        return messages_api.error_body(status, message, fields)
    return error_body(status, message, type_, fields)


def wrap_app(app, st: State):
    def respond(environ, start_response, status, message, type_=None):
        data = json_bytes(shaped_error(environ.get("PATH_INFO", ""), status, message, type_))
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        if st.cors:
            headers += cors_headers()
        start_response(f"{status} {status_phrase(status)}", headers)
        return [data]

    def wsgi(environ, start_response):
        try:
            body = read_body(environ, st.max_body_bytes)
        except ApiError as e:
            return respond(environ, start_response, e.status, e.message, e.type)
        except TimeoutError as e:  # slower than _RequestReader's deadline
            return respond(environ, start_response, 408, str(e))
        except (OSError, ValueError):
            return respond(environ, start_response, 400, "could not read the request body")
        try:  # WSGI hands the path over as latin-1; Bottle would drop the bytes that are
            # not UTF-8 (so /%ff was the page) instead of refusing them
            environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
        except UnicodeError:
            return respond(environ, start_response, 400, "the URL's path is not UTF-8")
        refusal = _foreign_request(environ, st)
        if refusal is not None:
            return respond(environ, start_response, 403, refusal)
        environ["chatfile.body"] = body
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))

        def start(status, headers, exc_info=None):
            if st.cors:
                headers = list(headers) + cors_headers(environ)
            return start_response(status, headers, exc_info)
        try:
            return app(environ, start)
        except Exception:  # noqa: BLE001 - Bottle already catches; this is the last net
            return respond(environ, start_response, 500, "internal server error")
    return wsgi


def _foreign_request(environ, st: State) -> str | None:
    """Why a request that a web page of some other site made through the user's browser
    is refused; None for everyone else (curl, the openai client, the chat page itself).

    - DNS rebinding: a site whose name its owner re-points at 127.0.0.1 reaches a
      loopback server as a page of its own origin, and could read the replies and
      /props. A server bound to loopback answers only names nobody can re-point:
      localhost, *.localhost and loopback addresses (as Ollama does).
    - A page of another origin can still POST a "simple" request (text/plain) that
      needs no CORS preflight, and make the model work for it. Browsers say where such a
      request comes from (Origin); one that is not this server's own is refused, unless
      --cors asks to serve other sites. Clients that are not browsers send no Origin."""
    host = environ.get("HTTP_HOST")
    if st.loopback_only and host is not None and not _loopback_name(host) \
            and _host_name(host) not in st.allow_hosts:
        return (f"this server answers requests for localhost only, not for {host!r} "
                f"(--allow-host {_host_name(host) or 'NAME'} answers that name too)")
    if not st.cors and not _own_origin(environ, st):
        return (f"requests from web pages of other sites ({environ['HTTP_ORIGIN']}) are "
                f"refused; start the server with --cors to allow them")
    return None


def _own_origin(environ, st: State) -> bool:
    """No Origin (not a browser), or the one of the page this server serves: the same
    address as the request's Host, or a name of --allow-host (behind a proxy that
    rewrites Host)."""
    origin = environ.get("HTTP_ORIGIN")
    if origin is None:
        return True
    try:
        parts = urllib.parse.urlsplit(origin)
        name = (parts.hostname or "").removesuffix(".")
    except ValueError:
        return False
    host = environ.get("HTTP_HOST")
    return (host is not None and parts.netloc.lower() == host.lower()) or name in st.allow_hosts


def _host_name(host_header: str) -> str:
    """The name in a Host header, lower case, without port or final dot; "" if malformed."""
    try:
        parts = urllib.parse.urlsplit("//" + host_header)
        name, _ = parts.hostname or "", parts.port
    except ValueError:  # a port that is not a number, an unclosed [
        return ""
    return name.removesuffix(".")  # "localhost." is localhost, fully qualified


def _loopback_name(host_header: str) -> bool:
    name = _host_name(host_header)
    return name == "localhost" or name.endswith(".localhost") or (name != "" and is_loopback(name))


def instance_id(model_path, gguf_offset: int = 0, **options) -> str:
    """A short name for "this model file, served with these options". A server's /health
    says it, so that starting the same chat again (a second double-click on a bundle)
    finds the running one instead of loading a second copy of the model."""
    import hashlib
    path = os.path.realpath(os.fspath(model_path))
    try:  # a file replaced since (a new copy of a damaged download) is another model
        st = os.stat(path)
        version = [st.st_size, st.st_mtime_ns]
    except OSError:
        version = None
    key = json.dumps([path, version, gguf_offset, options], sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def running_instance(host: str, port: int, instance: str) -> str | None:
    """The URL of a chatfile that already serves `instance` on `port` or one of the ports
    bind() would try after it (an earlier start may have found `port` busy then, and
    that port may be free now); None when there is none, or when the one there failed to
    load its model (starting again is how the user retries). Asks with http.client,
    never through a proxy; a free port on this machine answers at once."""
    import http.client
    shown = _display_host(host)
    for p in range(port, min(port + PORT_TRIES, 65535) + 1):
        conn = http.client.HTTPConnection(shown.strip("[]"), p, timeout=2)
        try:
            conn.request("GET", "/health")
            body = conn.getresponse().read(65536)
        except (OSError, http.client.HTTPException):
            continue  # free, or something else listens here
        finally:
            conn.close()
        try:
            health = json.loads(body)
            if health.get("instance") == instance and health.get("status") != "error":
                return f"http://{shown}:{p}/"
        except (ValueError, AttributeError):  # not JSON, or not an object
            continue
    return None


def _display_host(host: str) -> str:
    if host in ANY_ADDRESS:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _load(st: State, path, offset, size, chat_template, n_ctx, mode, say):
    def log(msg):  # once the server has stopped, a load still under way says nothing
        if not st.stopping:
            say(msg)
    try:
        from runtime.model import Model
        tmpl = chat_template or None  # the template's text (the CLI reads the file)

        def progress(frac):
            st.progress = max(0.0, min(1.0, float(frac)))
        kw = {"size": size, "progress": progress, "mode": mode}
        if tmpl is not None:
            kw["chat_template"] = tmpl
        model = Model.load(path, offset, **kw)
        n = model.context_size(n_ctx)
        if 0 < n < n_ctx:
            log(f"chatfile: the model was trained with a context of {n} tokens; "
                f"using that instead of {n_ctx}")
        st.n_ctx = n
        st.model = model
        # The model's objects live as long as the server: keep them out of every future
        # garbage collection, whose full passes would otherwise stall requests.
        gc.freeze()
        st.model_id = str(getattr(model, "name", "") or Path(str(path)).stem)
        why = ""
        if mode == "auto" and model.mode == "quant":
            why = ": float32 would not fit in RAM, so it is slow"
            if model.int8_fits:
                why += ("; --mode int8 would fit, at nearly float32's speed, with "
                        "approximate logits")
        if not model.chat_template:
            from runtime.info import BASE_MODEL_NOTE
            log(f"chatfile: {BASE_MODEL_NOTE}")
        # Logged last and before the engine is set: /health turns 200 with it, and
        # whoever waits for that may then read this line.
        log(f"chatfile: model {st.model_id} loaded ({model.arch}, context {n} tokens, "
            f"{model.mode} weights{why})")
        st.engine = Engine(model, n, cache_ram_bytes=cache_ram_bytes(st.cache_ram_mib))
        st.progress = 1.0
    except Exception as e:  # noqa: BLE001 - any load failure is reported, not raised
        st.error = f"{type(e).__name__}: {e}" if not str(e) else str(e)
        if offset and isinstance(e, ValueError):  # a bundle's model (GGUFError is one)
            st.error += ("; the bundle may be damaged: run it with --verify, and copy or "
                         "download it again if that fails")
        log(f"chatfile: error: the model failed to load: {st.error}")


class Server:
    """A bound server; `serve()` is the usual entry, tests may drive this directly."""

    def __init__(self, model_path, *, gguf_offset=0, gguf_size=None, host="127.0.0.1",
                 port=8080, api_key=None, n_ctx=4096, threads=None, chat_template=None,
                 system=None, title=None, cors=False, max_body_bytes=1 << 20, temperature=None,
                 mode="auto", log=None):
        self.log = log or (lambda msg: print(msg, flush=True))
        self.state = State(model_path=os.fspath(model_path), n_ctx=int(n_ctx), api_key=api_key or None,
                           system=system or None, title=title, cors=cors,
                           loopback_only=is_loopback(host),
                           max_body_bytes=int(max_body_bytes), temperature=temperature,
                           log=self.log)
        self.state.model_id = Path(os.fspath(model_path)).stem
        self.httpd, self.port = bind(host, port)
        self.httpd.cors = cors
        if port and self.port != port:
            self.log(f"chatfile: port {port} is {why_not(host, port)}; using {self.port} "
                     f"instead (the chat page keeps its saved chats per port)")
        self.url = f"http://{_display_host(host)}:{self.port}/"
        self.httpd.set_app(wrap_app(build_app(self.state), self.state))
        self.stop_on_load_error = False
        self._loader = threading.Thread(
            target=self._load, name="chatfile-load", daemon=True,
            args=(self.state, model_path, gguf_offset, gguf_size, chat_template, int(n_ctx),
                  mode, self.log))

    def _load(self, *args):
        _load(*args)
        if self.state.error and self.stop_on_load_error:
            self.httpd.shutdown()  # serve_forever() returns

    def start_loading(self, stop_on_error: bool = False):
        """stop_on_error: a failed load also stops serve_forever(). Without a browser to
        show the error on the page, a server that could only answer 503 would hide the
        failure from whoever started it (a script, a service manager); llama-server
        exits then too."""
        self.stop_on_load_error = stop_on_error
        self._loader.start()

    def loading(self) -> bool:
        return self._loader.is_alive()

    def serve_forever(self):
        self.httpd.serve_forever(poll_interval=0.2)

    def shutdown(self):
        """Stop serve_forever() (from another thread), then close()."""
        self.httpd.shutdown()
        self.close()

    def close(self):
        """Close the listening socket and cancel the replies under way."""
        self.httpd.server_close()
        self.state.stopping = True
        stop_generating(self.state)


def serve(model_path, *, gguf_offset=0, gguf_size=None, host="127.0.0.1", port=8080,
          api_key=None, n_ctx=4096, threads=None, chat_template=None, system=None, title=None,
          cors=False, open_browser=True, max_body_bytes=1 << 20, ready=None, temperature=None,
          mode="auto", allow_hosts=(), template_kwargs=None, reasoning_budget=-1,
          reasoning_budget_message="", cache_ram_mib=None, terminal_chat=None,
          slot_save_path=None) -> int:
    """Serve until Ctrl+C. `ready(url)` is called once the socket is listening.

    chat_template: the template's text (runtime.cli reads the file). threads: the BLAS
    thread count must be set before NumPy loads, which runtime.cli does; kept here for
    callers that pass it. temperature: the default for requests that don't set one.
    template_kwargs: chat_template_kwargs for requests that don't set them (a request's own
    win, name by name), as llama-server's --reasoning-budget 0 sets enable_thinking.
    reasoning_budget, reasoning_budget_message: the default budget of chat requests (see
    get_reasoning_budget)."""
    budget = {k: v for k, v in (("reasoning_budget", reasoning_budget),  # when not the
                                ("reasoning_budget_message", reasoning_budget_message))
              if v not in (-1, "")}  # defaults: the ids of chats started before stay
    instance = instance_id(model_path, gguf_offset, size=gguf_size, host=host,
                           api_key=bool(api_key), n_ctx=n_ctx, chat_template=chat_template,
                           system=system, title=title, cors=cors, temperature=temperature,
                           mode=mode,
                           **({"template_kwargs": template_kwargs} if template_kwargs else {}),
                           **budget)
    if open_browser and port:
        # Started again (a second double-click): show the running chat, rather than load
        # the model a second time beside it on the next port.
        url = running_instance(host, port, instance)
        if url is not None:
            print(f"chatfile: this chat is already running at {url}; opening it there "
                  f"(--port with another number starts a second one).", flush=True)
            _open_browser(url, terminal_chat, stays=False)
            return 0
    try:
        srv = Server(model_path, gguf_offset=gguf_offset, gguf_size=gguf_size, host=host,
                     port=port, api_key=api_key, n_ctx=n_ctx, threads=threads,
                     chat_template=chat_template, system=system, title=title, cors=cors,
                     max_body_bytes=max_body_bytes, temperature=temperature, mode=mode)
    except OSError as e:
        print(f"chatfile: error: {e}", file=sys.stderr, flush=True)
        return 1
    # The inference worker and the request threads share one GIL: hand it over every
    # millisecond (not Python's default 5 ms), so /health and the page answer quickly
    # while tokens are being generated for several clients.
    sys.setswitchinterval(GIL_SWITCH_S)
    srv.state.instance = instance
    srv.state.allow_hosts = tuple(h.lower().removesuffix(".") for h in allow_hosts)
    srv.state.template_kwargs = dict(template_kwargs or {})
    srv.state.reasoning_budget = reasoning_budget
    srv.state.reasoning_budget_message = reasoning_budget_message
    srv.state.cache_ram_mib = cache_ram_mib
    srv.state.slot_save_path = os.path.abspath(slot_save_path) if slot_save_path else None
    quit_from_page = threading.Event()
    if open_browser:
        def on_quit():
            quit_from_page.set()
            # Shortly after, so that the page gets its answer first.
            threading.Timer(QUIT_DELAY_S, srv.httpd.shutdown).start()
        srv.state.quit = on_quit
    print(f"chatfile: listening on {srv.url}", flush=True)
    if not is_loopback(host):
        # The URL above is where this machine's browser goes; say what else can reach it.
        where = "every network interface" if host in ANY_ADDRESS else host
        print(f"chatfile: warning: listening on {where} (port {srv.port}): other machines "
              f"can reach this server" + ("" if api_key else
                                          ", and use it: no --api-key was given"), flush=True)
    if api_key:
        print("chatfile: API requests need 'Authorization: Bearer <key>'", flush=True)
    print("chatfile: close this window (or press Ctrl+C"
          + (", or use Quit on the chat page" if open_browser else "") + ") to stop.", flush=True)
    if ready is not None:
        ready(srv.url)
    if open_browser:
        threading.Thread(target=_open_browser, args=(srv.url, terminal_chat),
                         daemon=True).start()
    if threading.current_thread() is threading.main_thread():
        # `kill`, `systemctl stop`, `docker stop`: stop as Ctrl+C does, and exit with 0
        # rather than die by the signal.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    # A copy over the model file while it is mapped: stop as Ctrl+C does, with a line
    # that says why, rather than die of SIGBUS. Armed before the loader maps the file;
    # the loading starts inside, so that the stop always goes through the `try` there.
    with file_lease.armed():
        return _serve_until_stopped(srv, quit_from_page, stop_on_load_error=not open_browser)


def _serve_until_stopped(srv: Server, quit_from_page: threading.Event,
                         stop_on_load_error: bool) -> int:
    """Load the model and serve until Ctrl+C, `kill`, Quit on the page, or a program
    that opens the model file for writing; the exit status."""
    status = 0
    try:
        srv.start_loading(stop_on_error=stop_on_load_error)
        srv.serve_forever()
        if quit_from_page.is_set():
            srv.state.stopping = True
            print("chatfile: stopped from the chat page.", flush=True)
    except KeyboardInterrupt:
        srv.state.stopping = True
        print("chatfile: stopped.", flush=True)
    except file_lease.Overwritten:  # its handler has printed why
        srv.state.stopping = True
        status = file_lease.EXIT_STATUS
    finally:
        srv.close()
    if srv.state.error and srv.stop_on_load_error:
        return 1
    if srv.loading():
        # Stopped while the model loads: leave without waiting for it. Python's shutdown
        # would stop the dequantization pool under the loader (a false "failed to load")
        # while that thread may be writing to stdout, which aborts the process.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def stop_generating(st: State, wait_s: float = STOP_WAIT_S) -> None:
    """Cancel every reply under way and wait (up to wait_s) for the worker to go idle.
    A process that exits while the worker is inside a matrix product can hang for good
    in OpenBLAS's exit handler: its helper thread finishes the product after the handler
    told it to quit, then sleeps, and the handler waits for it forever (seen in about 1
    of 20 stops of a server streaming four replies)."""
    while True:
        try:
            cancels = list(st.cancels)
            break
        except RuntimeError:  # a request thread added one meanwhile: look again
            continue
    for cancel in cancels:
        cancel.set()
    eng = st.engine
    end = time.monotonic() + wait_s
    while eng is not None and eng.busy.is_set() and time.monotonic() < end:
        time.sleep(0.01)


def _open_browser(url, terminal_chat: str | None = None, stays: bool = True) -> None:
    """The page in the desktop's browser. Without a display (over SSH, on a server) there
    is none: Python's webbrowser would start a text browser (w3m, lynx) in this terminal
    and take its keyboard. When no browser opens, the user is told where the chat is:
    "listening on" alone does not say to go there; and, with terminal_chat (the command
    that chats in this terminal instead: a bundle's `--cli`), that there is another way.
    stays=False: this process ends at once (the chat was already running), so it is not
    to be stopped first."""
    opened = False
    if os.name != "posix" or sys.platform == "darwin" or (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        try:
            opened = webbrowser.open(url)
        except Exception:  # noqa: BLE001 - no browser is fine: the URL is printed
            pass
    if not opened:
        stop = "stop this (Ctrl+C) and " if stays else ""
        other = (f" Or {stop}run `{terminal_chat}` to chat in this terminal."
                 if terminal_chat else "")
        print(f"chatfile: no web browser could be opened here: open {url} in one to chat."
              f"{other}", flush=True)


def main(argv=None) -> int:
    """`python3 -m runtime.server MODEL [options]`: the server alone, without runtime.cli."""
    import argparse
    ap = argparse.ArgumentParser(prog="python3 -m runtime.server")
    ap.add_argument("model")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--api-key")
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--temp", type=float)
    ap.add_argument("--system")
    ap.add_argument("--title")
    ap.add_argument("--chat-template")
    ap.add_argument("--cors", action="store_true")
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--gguf-offset", type=int, default=0)
    ap.add_argument("--gguf-size", type=int)
    from runtime.cli import (add_cache_ram_arg, add_reasoning_budget_args,
                             add_slot_save_path_arg, cache_ram_problem, reasoning_budget_problem,
                             reasoning_kwargs, slot_save_path_problem)
    add_reasoning_budget_args(ap)
    add_cache_ram_arg(ap)
    add_slot_save_path_arg(ap)
    a = ap.parse_args(argv)
    problem = (reasoning_budget_problem(a.reasoning_budget) or cache_ram_problem(a.cache_ram)
               or slot_save_path_problem(a.slot_save_path))
    if problem:
        ap.error(problem)  # exit status 2, as argparse's own errors
    template = None
    if a.chat_template:
        from runtime.chat_template import TemplateError, load_template_file
        try:
            template = load_template_file(a.chat_template)
        except (TemplateError, OSError) as e:
            print(f"chatfile: error: {e}", file=sys.stderr)
            return 1
    return serve(a.model, gguf_offset=a.gguf_offset, gguf_size=a.gguf_size, host=a.host,
                 port=a.port, api_key=a.api_key, n_ctx=a.ctx, chat_template=template,
                 system=a.system, title=a.title, cors=a.cors, open_browser=not a.no_browser,
                 temperature=a.temp, reasoning_budget=a.reasoning_budget,
                 reasoning_budget_message=a.reasoning_budget_message,
                 template_kwargs=reasoning_kwargs(a), cache_ram_mib=a.cache_ram,
                 slot_save_path=a.slot_save_path)


if __name__ == "__main__":
    sys.exit(main())
