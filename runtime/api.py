"""The API's requests and errors: reading the body (size limit, chunked encoding, JSON),
checking every field the routes take, and turning messages or prompts into token ids.

Each getter returns a value of the right type and range or raises `ApiError(400, ...)`
naming the field, so the routes in server.py read like the API documentation. Errors have
OpenAI's shape, {"error": {"message", "type", "code"}}.
"""
from __future__ import annotations

import codecs
import dataclasses
import json
import math
import queue
import re
import threading

from runtime import json_constraint
from runtime.engine import chat_prompt_ids, tokenize_prompt
from runtime.reasoning import FORMATS as REASONING_FORMATS
from runtime.tool_calls import declared_names

DRAIN_LIMIT_BYTES = 64 << 20   # read (and drop) at most this much of a refused body
MAX_STOP_STRINGS = 16
MAX_N_PROBS = 100
MAX_PROMPTS = 128          # prompts in one /v1/completions request (OpenAI's batch)
MAX_CHOICES = 128          # choices in one response, prompts × n (OpenAI's cap on n)
MAX_LOGIT_BIAS = 1024      # entries in 'logit_bias', and tokens they name once texts are tokenized
LOGIT_BIAS_LIMIT = 100     # OpenAI's range, [-100, 100]; false bans the token
INT32_MAX = 2**31 - 1
ROLES = ("system", "developer", "user", "assistant", "tool")

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
                413: "invalid_request_error", 500: "server_error", 501: "not_supported_error",
                503: "unavailable_error"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str | None = None,
                 headers: dict | None = None, fields: dict | None = None):
        """headers: None for the status's usual ones (the server's STATUS_HEADERS).
        fields: more keys for the error object (llama-server's n_prompt_tokens, n_ctx)."""
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_ or _ERROR_TYPES.get(status, "invalid_request_error")
        self.headers = headers
        self.fields = fields or {}


def error_body(status: int, message: str, type_: str | None = None,
               fields: dict | None = None) -> dict:
    return {"error": {"message": message,
                      "type": type_ or _ERROR_TYPES.get(status, "invalid_request_error"),
                      "code": status, **(fields or {})}}


def context_overflow(n_prompt_tok: int, n_ctx: int, n_ctx_train: int) -> ApiError:
    """A prompt that leaves no room for a reply, said as llama-server says it: clients
    (llama.vscode, agents that compact their history) recognise the error by its type
    "exceed_context_size_error", its n_prompt_tokens and n_ctx, or the words "exceeds the
    available context size"."""
    more = (f" or start the server with a larger context (--ctx, up to {n_ctx_train})"
            if n_ctx < n_ctx_train else "")  # past the trained context it is capped
    full = "" if n_prompt_tok > n_ctx else ", which leaves no room for a reply"
    return ApiError(400, f"the request ({n_prompt_tok} tokens) exceeds the available context "
                         f"size ({n_ctx} tokens){full}; shorten it{more}",
                    "exceed_context_size_error",
                    fields={"n_prompt_tokens": n_prompt_tok, "n_ctx": n_ctx})


def json_bytes(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


# ---- request body: size limit, chunked encoding, JSON -------------------------------------

def _drain(inp, n_bytes: int) -> None:
    """Read and drop a refused body, so that closing the socket doesn't reset the
    connection before the client has read our 413."""
    left = min(n_bytes, DRAIN_LIMIT_BYTES)
    try:
        while left > 0:
            chunk = inp.read(min(left, 1 << 16))
            if not chunk:
                return
            left -= len(chunk)
    except OSError:
        pass


def _read_chunked(inp, max_bytes: int) -> bytes:
    out = bytearray()
    total = 0          # bytes announced so far; past max_bytes we only drain
    while True:
        line = inp.readline(1024)
        if not line.endswith(b"\n"):
            raise ApiError(400, "malformed chunked request body")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ApiError(400, "malformed chunked request body") from None
        if size < 0:
            raise ApiError(400, "malformed chunked request body")
        if size == 0:
            while inp.readline(1024) not in (b"\r\n", b"\n", b""):
                pass  # trailers: ignored
            if total > max_bytes:
                raise ApiError(413, f"the request body is larger than {max_bytes} bytes")
            return bytes(out)
        total += size
        if total > max_bytes:
            # Too big: read the rest and drop it (up to a bound), so the client can
            # finish sending and then read our 413 instead of a connection reset.
            if total > DRAIN_LIMIT_BYTES:
                raise ApiError(413, f"the request body is larger than {max_bytes} bytes")
            _drain(inp, size)
            out.clear()
        else:
            data = inp.read(size)
            if len(data) != size:
                raise ApiError(400, "the chunked request body ended early")
            out += data
        inp.readline(16)  # the CRLF after each chunk


def read_body(environ, max_bytes: int) -> bytes:
    inp = environ["wsgi.input"]
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return _read_chunked(inp, max_bytes)
    cl = (environ.get("CONTENT_LENGTH") or "").strip()
    if not cl:
        return b""
    if not cl.isdigit():
        raise ApiError(400, "invalid Content-Length header")
    n = int(cl)
    if n > max_bytes:
        _drain(inp, n)
        raise ApiError(413, f"the request body is {n} bytes, more than the limit of {max_bytes}")
    data = inp.read(n) if n else b""
    if len(data) != n:
        raise ApiError(400, "the request body is shorter than its Content-Length")
    return data


def _no_constants(name):
    raise ValueError(f"{name} is not valid JSON")


MAX_NUMBER_DIGITS = 4300   # Python's own limit on converting an integer's digits


def _int_of(digits: str) -> int:
    if len(digits) > MAX_NUMBER_DIGITS:  # int() would say so in Python's words
        raise ValueError(f"a number has more than {MAX_NUMBER_DIGITS} digits")
    return int(digits)


def parse_json(raw: bytes) -> dict:
    if not raw.strip():
        raise ApiError(400, "the request body is empty; send a JSON object")
    try:
        # utf-8-sig: a file saved with a byte order mark (Windows editors, PowerShell's
        # Out-File) and sent as it is (`curl -d @body.json`) is read, as llama-server reads it.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ApiError(400, f"the request body is not valid UTF-8 (byte {e.start})") from None
    try:
        obj = json.loads(text, parse_constant=_no_constants, parse_int=_int_of)
    except RecursionError:
        raise ApiError(400, "the JSON body is nested too deeply") from None
    except ValueError as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:  # "\ud800" parses into a lone surrogate, which no tokenizer can encode
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "the request contains an invalid \\u escape (a lone surrogate)") from None
    except RecursionError:
        raise ApiError(400, "the JSON body is nested too deeply") from None
    return obj


# ---- field validation ---------------------------------------------------------------------

MISSING = object()


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def get_int(body, key, default, lo=None, hi=None):
    v = body.get(key, MISSING)
    if v is MISSING or v is None:
        return default
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        v = int(v)
    if not is_int(v):
        raise ApiError(400, f"'{key}' must be an integer")
    _check_range(key, v, lo, hi)
    return v


def get_num(body, key, default, lo=None, hi=None):
    v = body.get(key, MISSING)
    if v is MISSING or v is None:
        return default
    if not is_num(v):
        raise ApiError(400, f"'{key}' must be a number")
    _check_range(key, v, lo, hi)
    return float(v)


def _check_range(key, v, lo, hi) -> None:
    """A 400 when v is outside [lo, hi]; None is no bound on that side."""
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        bound = (f"between {lo} and {hi}" if lo is not None and hi is not None
                 else f"{lo} or more" if lo is not None else f"{hi} or less")
        raise ApiError(400, f"'{key}' must be {bound}, got {v}")


def get_bool(body, key, default):
    v = body.get(key, MISSING)
    if v is MISSING or v is None:
        return default
    if not isinstance(v, bool):
        raise ApiError(400, f"'{key}' must be true or false")
    return v


def get_str(body, key, default=MISSING):
    v = body.get(key, MISSING)
    if v is MISSING or v is None:
        if default is MISSING:
            raise ApiError(400, f"'{key}' is required")
        return default
    if not isinstance(v, str):
        raise ApiError(400, f"'{key}' must be a string")
    return v


def get_stop(body) -> list:
    v = body.get("stop")
    if v is None:
        return []
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise ApiError(400, "'stop' must be a string or a list of strings")
    if len(v) > MAX_STOP_STRINGS:
        raise ApiError(400, f"at most {MAX_STOP_STRINGS} stop strings are supported")
    return [s for s in v if s]


# The reply's token limit, in llama-server's order of precedence: every route reads all
# three, n_predict first (params_from_json_cmpl).
LIMIT_KEYS = ("n_predict", "max_completion_tokens", "max_tokens")


def get_max_tokens(body, n_ctx) -> int:
    """The first of LIMIT_KEYS the request sets, capped at the context size; -1 = until
    done, on every route and under every name, as llama-server reads them (its own web
    UI sends max_tokens -1 to /v1/chat/completions by default)."""
    for key in LIMIT_KEYS:
        if body.get(key) is not None:
            v = get_int(body, key, None, lo=-1, hi=INT32_MAX)
            return -1 if v < 0 else min(v, n_ctx)
    return -1


def limit_is_set(body) -> bool:
    return any(body.get(key) is not None for key in LIMIT_KEYS)


def _bias_value(v, where: str) -> float:
    if v is False:  # llama-server: never this token
        return -math.inf
    if not is_num(v) or not -LOGIT_BIAS_LIMIT <= v <= LOGIT_BIAS_LIMIT:
        raise ApiError(400, f"'logit_bias'{where}: a bias must be a number between "
                            f"-{LOGIT_BIAS_LIMIT} and {LOGIT_BIAS_LIMIT}, or false")
    return float(v)


def get_logit_bias(body, model) -> dict | None:
    """'logit_bias': OpenAI's {"token id": bias} (llama-server's {"text": bias} too), or
    llama-server's [[token id or text, bias], ...]; a text's bias goes to every token of
    its tokenization. Biases of the same token add up. -> {token id: bias}, -inf for
    false."""
    v = body.get("logit_bias")
    if v is None:
        return None
    if isinstance(v, dict):
        entries = list(v.items())
    elif isinstance(v, list):
        entries = v
    else:
        raise ApiError(400, "'logit_bias' must be an object {\"token id\": bias} or a list of "
                            "[token id or text, bias] pairs")
    if len(entries) > MAX_LOGIT_BIAS:
        raise ApiError(400, f"'logit_bias' may have at most {MAX_LOGIT_BIAS} entries")
    n_vocab = model.n_vocab
    out: dict = {}
    for i, entry in enumerate(entries):
        if isinstance(v, dict):
            key, bias = entry
            where = f" for {key[:40]!r}"
            if re.fullmatch(r"-?[0-9]{1,12}", key.strip()):
                ids = [int(key)]
            else:  # a text, as llama-server reads such a key: {"<string or token id>": bias}
                ids = model.tokenize(key, add_special=False, parse_special=False)
                if not ids:
                    raise ApiError(400, f"'logit_bias'{where}: the text has no tokens")
        else:
            where = f"[{i}]"
            if not isinstance(entry, list) or len(entry) != 2:
                raise ApiError(400, f"'logit_bias'{where} must be a [token id or text, bias] pair")
            key, bias = entry
            if is_int(key):
                ids = [key]
            elif isinstance(key, str):
                ids = model.tokenize(key, add_special=False, parse_special=False)
                if not ids:
                    raise ApiError(400, f"'logit_bias'{where}: the text {key[:40]!r} has no tokens")
            else:
                raise ApiError(400, f"'logit_bias'{where}: the first item must be a token id or a text")
        b = _bias_value(bias, where)
        for t in ids:
            if not 0 <= t < n_vocab:
                raise ApiError(400, f"'logit_bias'{where}: token id {t} is out of range [0, {n_vocab})")
            out[t] = out.get(t, 0.0) + b
    if len(out) > MAX_LOGIT_BIAS:
        raise ApiError(400, f"'logit_bias' names more than {MAX_LOGIT_BIAS} tokens")
    _refuse_banning_all(out, n_vocab, "'logit_bias' bans every token")
    return out or None


def _refuse_banning_all(bias: dict, n_vocab: int, message: str) -> None:
    """A bias that bans (-inf) every token leaves the sampler nothing to choose: a 400."""
    if sum(1 for b in bias.values() if b == -math.inf) >= n_vocab:
        raise ApiError(400, message)


# llama-server fields with no effect here that clients send on every request: checked for
# type, no more (docs/api.md says why each is inert). Every sampler of llama-server's is
# ours too (sampler_fields). return_progress is read by the routes that stream progress
# (a streamed chat, /completion, /infill); elsewhere it is inert too.
INERT_NUMBERS = ("n_keep", "n_discard", "n_cache_reuse", "n_indent", "t_max_prompt_ms",
                 "t_max_predict_ms")
INERT_BOOLS = ("return_tokens", "timings_per_token", "return_progress")
INERT_STRING_LISTS = ("response_fields",)
# DRY's sequence breakers a request may send: each new one is looked for in every token's
# text (15-30 ms for Qwen's 151,936 tokens; then cached). llama-server sets no limit.
MAX_DRY_BREAKERS = 64


def check_llama_fields(body) -> None:
    """llama-server's sampling and slot fields: a 400 for each one set to something we
    cannot do, rather than a reply that silently ignores it."""
    if get_bool(body, "post_sampling_probs", False):
        raise ApiError(400, "'post_sampling_probs' is not supported: n_probs gives the "
                            "probabilities before sampling")
    if get_int(body, "id_slot", -1) not in (-1, 0):
        raise ApiError(400, "'id_slot' must be -1 or 0: this server has one slot")
    lora = body.get("lora")
    if lora is not None and lora != []:
        raise ApiError(400, "'lora' is not supported: this server loads no LoRA adapters")
    for key in INERT_NUMBERS:
        get_num(body, key, None)
    for key in INERT_BOOLS:
        get_bool(body, key, False)
    for key in INERT_STRING_LISTS:
        _string_list(body, key)


# The most steps a request's chain may have (llama-server sets none). Each step runs for
# every token and may cost a pass over the vocabulary (the penalties, DRY): a body of
# 60,000 "dry" made every token of the tiny test model cost 5 s, uncancellable, and
# Qwen's vocabulary is 300 times larger. llama.cpp's own names are 11.
SAMPLERS_MAX_STEPS = 64


def get_samplers(body, default: tuple) -> tuple:
    """llama-server's 'samplers': the chain's order, a list of names ("top_k", "min-p",
    "temp", ... any case) or a string of its letters ("edskypmxt"). A name or letter
    llama-server does not know is skipped, as it skips it; a sampler named twice runs
    twice; one not named does not run (an empty list: the plain draw at temperature 1,
    after the logit bias). Absent: `default`."""
    from runtime.sampling import samplers_from_letters, samplers_from_names
    v = body.get("samplers")
    if v is None:
        return default
    if isinstance(v, str):
        return capped_chain(samplers_from_letters(v))
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ApiError(400, "'samplers' must be a list of sampler names "
                            "([\"top_k\", \"min_p\", \"temperature\"]) or a string of their "
                            "letters (\"kmt\")")
    return capped_chain(samplers_from_names(v))


def capped_chain(chain: tuple) -> tuple:
    """The chain, or a 400 when it has more than SAMPLERS_MAX_STEPS steps."""
    if len(chain) > SAMPLERS_MAX_STEPS:
        raise ApiError(400, f"'samplers' names {len(chain)} samplers; at most "
                            f"{SAMPLERS_MAX_STEPS} may run (each of llama.cpp's 11 can be named "
                            f"more than once)")
    return chain


def check_chat_fields(body) -> None:
    """OpenAI's and llama-server's chat fields that would change the reply and that we do
    not implement: a 400 for each one set to more than its default, not a reply that
    quietly lacks what was asked for."""
    modalities = body.get("modalities")
    if modalities is not None and (not isinstance(modalities, list)
                                   or any(m != "text" for m in modalities)):
        raise ApiError(400, "'modalities': only [\"text\"] is supported: the model writes "
                            "no audio")
    if body.get("audio") is not None:
        raise ApiError(400, "'audio' is not supported: the model writes no audio")
    if body.get("web_search_options") is not None:
        raise ApiError(400, "'web_search_options' is not supported: this server does not "
                            "search the web")
    for key in ("reasoning_effort", "verbosity"):  # OpenAI refuses them for most models too
        if body.get(key) is not None:
            raise ApiError(400, f"'{key}' is not supported: the model is run as it is, with "
                                f"no setting for how much it reasons or writes")


def get_reasoning_format(body) -> str:
    """llama-server's 'reasoning_format' (the chat route only): "auto" (the default) and
    "deepseek" return a thinking model's `<think>` text as reasoning_content, "none"
    leaves it in content (runtime/reasoning.py). llama-server's "deepseek-legacy" (the
    tags kept in content too) is not done: a 400, as any other name."""
    v = body.get("reasoning_format")
    if v is None:
        return "auto"
    if not isinstance(v, str) or v not in REASONING_FORMATS:
        raise ApiError(400, f"'reasoning_format' must be one of "
                            f"{', '.join(map(repr, REASONING_FORMATS))}, got {str(v)[:40]!r}")
    return v


# What the server itself gives a chat template (and chat_template.render's own keywords):
# chat_template_kwargs may not set them.
TEMPLATE_OWN_NAMES = frozenset({"messages", "tools", "add_generation_prompt", "bos_token",
                                "eos_token", "clock", "limits", "generic_tools",
                                "fold_system", "template"})


def get_template_kwargs(body) -> dict:
    """llama-server's chat_template_kwargs: more variables for the chat template, such as
    Qwen3's {"enable_thinking": false}. A template that does not read one ignores it."""
    kwargs = body.get("chat_template_kwargs")
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise ApiError(400, "'chat_template_kwargs' must be an object")
    for name in kwargs:
        if not name.isidentifier():
            raise ApiError(400, f"'chat_template_kwargs': {name[:60]!r} is not a name a "
                                f"template can read")
        if name in TEMPLATE_OWN_NAMES:
            raise ApiError(400, f"'chat_template_kwargs': {name!r} is set by the server "
                                f"itself; send it as the request's own field")
    return kwargs


def get_parallel_tool_calls(body) -> bool:
    """OpenAI's 'parallel_tool_calls' (true by default): false allows one call per reply."""
    return get_bool(body, "parallel_tool_calls", True)


# A prediction's characters read per token of context: a reply fits in the context, so a
# prediction past that is never repeated; cutting it there bounds its tokenizing by the
# context, as a prompt's (one token rarely spells more than 16 characters).
PREDICTION_CHARS_PER_CTX_TOK = 16


def get_prediction(body, model, n_ctx: int) -> list | None:
    """OpenAI's Predicted Outputs: {"type": "content", "content": TEXT or a list of text
    parts}, the text the reply is expected to largely repeat. Only a speed hint (greedy
    speculation drafts from it) -> its token ids, at most n_ctx of them, from its first
    n_ctx × 16 characters (PREDICTION_CHARS_PER_CTX_TOK: a reply never repeats more);
    [] for an empty one (sent: usage reports its counts); None when absent."""
    pred = body.get("prediction")
    if pred is None:
        return None
    if not isinstance(pred, dict) or pred.get("type") != "content":
        raise ApiError(400, "'prediction' must be an object {\"type\": \"content\", "
                            "\"content\": TEXT}")
    content = pred.get("content")
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise ApiError(400, "'prediction.content' must be a string or a list of "
                            "{\"type\": \"text\", \"text\": TEXT} parts")
    text = content[:n_ctx * PREDICTION_CHARS_PER_CTX_TOK]
    return model.tokenize(text, add_special=False)[:n_ctx] if text else []


def refuse_with_prediction(body, n: int, logprobs: bool, params, tools) -> None:
    """The fields OpenAI refuses together with a `prediction` (its Predicted Outputs
    guide, "Limitations"): n above 1, logprobs (and top_logprobs), a presence_penalty
    or frequency_penalty above 0, and tools. Here too, so that a request that works
    here works there, and no one reads a prediction that did nothing as a speed-up (a
    reply with logprobs is never speculated). max_completion_tokens, which the guide
    also lists, is kept: clients send it on every request, and a limit is honoured."""
    if body.get("prediction") is None:
        return
    n_field = "'n_cmpl'" if "n" not in body and "n_cmpl" in body else "'n'"  # (the one sent)
    refused = [(f"{n_field} above 1", n > 1),
               ("'logprobs'", logprobs),  # (top_logprobs needs it: a 400 of its own)
               ("a 'presence_penalty' above 0", params.presence_penalty > 0),
               ("a 'frequency_penalty' above 0", params.frequency_penalty > 0),
               ("'tools'", bool(tools))]
    for what, found in refused:
        if found:
            raise ApiError(400, f"'prediction' cannot be combined with {what} "
                                f"(as in OpenAI's API); send one or the other")


def _string_list(body, key) -> None:
    v = body.get(key)
    if v is not None and (not isinstance(v, list) or not all(isinstance(x, str) for x in v)):
        raise ApiError(400, f"'{key}' must be a list of strings")


def eog_banned(bias: dict | None, model) -> dict:
    """'ignore_eos', as llama-server does it: a -inf logit bias on every
    end-of-generation token, so the reply runs to its token limit or the context's end."""
    out = dict(bias or {})
    for t in getattr(model, "eog_ids", ()) or ():
        out[t] = -math.inf
    _refuse_banning_all(out, model.n_vocab, "'logit_bias' with 'ignore_eos' bans every token")
    return out


def sampler_fields(body, d) -> dict:
    """llama.cpp's samplers past top-k, top-p and min-p (runtime/sampling.py), each off at
    llama-server's default (d's). A value llama-server reads as off is taken as off
    (typical_p above 1; top_n_sigma, dynatemp_range, xtc_probability at or below 0;
    adaptive_target below 0). Where llama-server takes any number and llama.cpp's sampler
    does something with it, so do we, the same thing: typical_p 0 or below keeps the most
    typical token (min_keep of them), a negative dynatemp_exponent heats a sure model,
    a negative mirostat_tau or mirostat_eta is taken as it is. One with no meaning is a
    400. (DRY's fields: dry_fields.)"""
    mirostat = get_int(body, "mirostat", d.mirostat)
    if mirostat not in (0, 1, 2):
        raise ApiError(400, f"'mirostat' must be 0 (off), 1 or 2 (Mirostat v1, v2), "
                            f"got {mirostat}")
    xtc_probability = get_num(body, "xtc_probability", d.xtc_probability)
    if xtc_probability > 1:
        raise ApiError(400, f"'xtc_probability' must be at most 1 (0: off), "
                            f"got {xtc_probability}")
    return dict(
        min_keep=get_int(body, "min_keep", d.min_keep, lo=0, hi=INT32_MAX),
        typical_p=get_num(body, "typical_p", d.typical_p),
        top_n_sigma=get_num(body, "top_n_sigma", d.top_n_sigma),
        xtc_probability=xtc_probability,
        xtc_threshold=get_num(body, "xtc_threshold", d.xtc_threshold, 0, 1),
        dynatemp_range=get_num(body, "dynatemp_range", d.dynatemp_range),
        dynatemp_exponent=get_num(body, "dynatemp_exponent", d.dynatemp_exponent),
        mirostat=mirostat,
        mirostat_tau=get_num(body, "mirostat_tau", d.mirostat_tau),  # bits
        mirostat_eta=get_num(body, "mirostat_eta", d.mirostat_eta),
        # adaptive-p: llama.cpp takes its decay in [0, 0.99] (sampling.clamped_adaptive_decay)
        adaptive_target=get_num(body, "adaptive_target", d.adaptive_target),
        adaptive_decay=get_num(body, "adaptive_decay", d.adaptive_decay),
    )


def dry_fields(body, d) -> tuple[dict, list]:
    """llama-server's DRY settings, with its limits: dry_penalty_last_n -1 (the whole
    history) or more, dry_base below 1 taken as its default 1.75, dry_sequence_breakers a
    non-empty list of strings. -> (SamplingParams' fields, the breakers as strings:
    sampling_params turns them into tokens when DRY is on)."""
    from runtime.dry import DRY_SEQUENCE_BREAKERS
    out = dict(
        dry_multiplier=get_num(body, "dry_multiplier", d.dry_multiplier),
        dry_base=get_num(body, "dry_base", d.dry_base),
        dry_allowed_length=get_int(body, "dry_allowed_length", d.dry_allowed_length,
                                   lo=-INT32_MAX - 1, hi=INT32_MAX),
        dry_penalty_last_n=get_int(body, "dry_penalty_last_n", d.dry_penalty_last_n,
                                   lo=-1, hi=INT32_MAX))
    if out["dry_base"] < 1:
        out["dry_base"] = d.dry_base
    breakers = body.get("dry_sequence_breakers")
    if breakers is None:
        breakers = DRY_SEQUENCE_BREAKERS
    elif not isinstance(breakers, list) or not breakers or \
            not all(isinstance(b, str) for b in breakers):
        raise ApiError(400, "'dry_sequence_breakers' must be a non-empty list of strings "
                            "(llama-server's default: [\"\\n\", \":\", \"\\\"\", \"*\"])")
    elif len(breakers) > MAX_DRY_BREAKERS:
        raise ApiError(400, f"'dry_sequence_breakers' may have at most {MAX_DRY_BREAKERS} "
                            f"strings, got {len(breakers)}")
    return out, breakers


def sampling_params(body, *, openai: bool, default_temp: float | None = None, model=None):
    from runtime.dry import dry_breakers_from_text
    from runtime.sampling import SamplingParams, infill_vocab
    check_llama_fields(body)
    d = SamplingParams()
    if default_temp is not None:
        d.temperature = default_temp
    seed = get_int(body, "seed", None, lo=-(2**63), hi=2**64 - 1)
    # llama-server: -1 = random, on every route: apps that always send a seed send -1 for
    # "none" (OpenAI gives it no meaning), and read as a seed it made every regenerated
    # reply the same. Other negative seeds: random on llama-server's own routes, a seed
    # like any other on OpenAI's.
    if seed is not None and (seed == -1 or (seed < 0 and not openai)):
        seed = None
    elif seed is not None:
        seed = seed % 2**64  # numpy wants a non-negative seed
    bias = get_logit_bias(body, model) if model is not None else None
    if get_bool(body, "ignore_eos", False) and model is not None:
        bias = eog_banned(bias, model)
    dry, breakers = dry_fields(body, d)
    params = SamplingParams(
        temperature=get_num(body, "temperature", d.temperature, *((0, 2) if openai else (None, None))),
        top_k=get_int(body, "top_k", d.top_k, lo=-1, hi=INT32_MAX),
        top_p=get_num(body, "top_p", d.top_p, 0, 1),
        min_p=get_num(body, "min_p", d.min_p, 0, 1),
        # penalized logits are divided by it: 0 would make them infinite
        repeat_penalty=get_num(body, "repeat_penalty", d.repeat_penalty, 1e-3, 1e4),
        repeat_last_n=get_int(body, "repeat_last_n", d.repeat_last_n, lo=-1, hi=INT32_MAX),
        presence_penalty=get_num(body, "presence_penalty", d.presence_penalty, -2, 2),
        frequency_penalty=get_num(body, "frequency_penalty", d.frequency_penalty, -2, 2),
        seed=seed,
        logit_bias=bias,
        samplers=get_samplers(body, d.samplers),
        **sampler_fields(body, d),
        **dry,
    )
    # The breakers' tokens cost a search of the vocabulary (then cached): only when DRY is
    # on (params.dry_on), and with a model to tokenize them (tests call this without one).
    if params.dry_on and model is not None:
        params.dry_breakers = dry_breakers_from_text(model.tokenizer, breakers)
    # The infill step reads the tokens' texts (a table built once per tokenizer): only
    # when the chain names it (Mirostat's chain has none).
    if "infill" in params.samplers and not params.mirostat and model is not None:
        params.infill_vocab = infill_vocab(model.tokenizer)
    return params


def get_n(body, n_prompts: int = 1, stream: bool = False) -> int:
    """Choices per prompt, on a route that ranks no candidates (all but /v1/completions):
    get_choices' n, with 'best_of' taken only when it asks for nothing more."""
    n, best_of = get_choices(body, n_prompts, stream)
    if best_of > n:
        raise ApiError(400, f"'best_of' above 'n' is only supported on /v1/completions (OpenAI's "
                            f"legacy completions); ask for n={best_of} and choose among the "
                            f"choices")
    return n


def get_choices(body, n_prompts: int = 1, stream: bool = False) -> tuple[int, int]:
    """(n, best_of): choices per prompt, OpenAI's 'n' or llama-server's 'n_cmpl', each its
    own generation (choice_params gives each its seed), and the candidates made for each
    prompt (get_best_of), n unless more are to be ranked; prompts × best_of is capped."""
    n = get_int(body, "n", None, lo=1, hi=MAX_CHOICES)
    n_cmpl = get_int(body, "n_cmpl", None, lo=1, hi=MAX_CHOICES)  # llama-server's name
    if n is not None and n_cmpl is not None and n != n_cmpl:
        raise ApiError(400, f"'n' ({n}) and 'n_cmpl' ({n_cmpl}) disagree; send one of them")
    n = n or n_cmpl or 1
    best_of = get_best_of(body, n, stream)
    if best_of * n_prompts > MAX_CHOICES:
        what = (f"n={n}", "choices") if best_of == n else (f"best_of={best_of}", "candidates")
        raise ApiError(400, f"{n_prompts} prompts × {what[0]} asks for {best_of * n_prompts} "
                            f"{what[1]}; at most {MAX_CHOICES} are made in one request")
    v = body.get("model")
    if v is not None and not isinstance(v, str):
        raise ApiError(400, "'model' must be a string")
    return n, best_of


def get_best_of(body, n: int, stream: bool = False) -> int:
    """OpenAI's legacy 'best_of': candidates made for each prompt, of which the n with the
    highest mean token logprob are returned. 1 (its default, which clients such as
    LangChain send whatever n is) asks for nothing more: n. OpenAI refuses it below n and
    with stream (the best are known only once every candidate is made)."""
    best_of = get_int(body, "best_of", 1, lo=1, hi=MAX_CHOICES)
    if best_of == 1:
        return n
    if best_of < n:
        raise ApiError(400, f"'best_of' ({best_of}) must be at least 'n' ({n})")
    if stream:
        raise ApiError(400, "'best_of' cannot be combined with 'stream'")
    return best_of


def choice_params(params, j: int):
    """The sampling of choice j of a prompt (0 first): with a seed, seed + j (modulo
    2**64), so that each choice is the reply a request of its own with that seed gets;
    without one, each choice's Sampler draws its own random seed."""
    if params.seed is None or j == 0:
        return params
    return dataclasses.replace(params, seed=(params.seed + j) % 2**64)


# OpenAI's content parts that carry something other than text, and what each is.
MEDIA_PARTS = {"image_url": "image", "input_image": "image", "image": "image",
               "input_audio": "audio", "audio": "audio", "file": "file", "input_file": "file"}


def stream_pieces(chunks, pause_s: float | None = None):
    """The chat route's streamed chunks (dicts, then the [DONE] bytes) read back, for the
    routes that translate them (messages_api, responses_api): ("reasoning", text),
    ("content", text) and ("tool_call", call) in order, ("pause", None) whenever no
    chunk came for pause_s (when given: with_pauses), and last ("finish", finish_reason)."""
    finish_reason = "stop"
    for chunk in chunks if pause_s is None else with_pauses(chunks, pause_s):
        if chunk is None:
            yield "pause", None
            continue
        if isinstance(chunk, bytes):  # [DONE]: the other APIs end their streams their way
            continue
        for choice in chunk.get("choices", []):
            delta = choice.get("delta", {})
            if delta.get("reasoning_content"):
                yield "reasoning", delta["reasoning_content"]
            if delta.get("content"):
                yield "content", delta["content"]
            for call in delta.get("tool_calls", []):
                yield "tool_call", call
            finish_reason = choice.get("finish_reason") or finish_reason
    yield "finish", finish_reason


# How long a stream may stay silent before it sends something that changes nothing (each
# API its own way: an SSE comment, an empty delta, response.in_progress). Agents drop a
# stream that sent nothing for 300 s and ask again (Claude Code, Codex CLI, OpenCode), and
# on a CPU the prefill of their first prompt (6,000-19,000 tokens) is silent for longer,
# and so is a tool call held back until it is whole.
KEEPALIVE_EVERY_S = 15.0


def with_pauses(items, every_s: float):
    """The items of an iterator, taken in a thread, with a None whenever none came for
    every_s. An exception it raises is raised here. A client that goes away stops the
    thread too: the server cancels the request, and the engine ends its events."""
    q, end = queue.Queue(), object()

    def pump():
        try:
            for item in items:
                q.put((item, None))
        except BaseException as e:  # noqa: BLE001 - handed to the reading side
            q.put((end, e))
        else:
            q.put((end, None))
    threading.Thread(target=pump, name="stream-pump", daemon=True).start()
    while True:
        try:
            item, error = q.get(timeout=every_s)
        except queue.Empty:
            yield None
            continue
        if item is end:
            if error is not None:
                raise error
            return
        yield item


def content_text(content, where: str, media: dict = MEDIA_PARTS) -> str:
    """A message's content as text: a string, or text parts joined by newlines; the
    parts `media` names (type -> what it holds) refused as input we cannot read."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        parts = []
        for p in content:
            if not isinstance(p, dict):
                raise ApiError(400, f"{where}: each content part must be an object")
            kind = p.get("type")
            if isinstance(kind, str) and kind in media:  # (a list as a type: unhashable)
                raise ApiError(400, f"{where}: {media[kind]} input is not supported: "
                                    f"this server's model reads text only")
            if kind != "text":
                raise ApiError(400, f"{where}: only text content parts are supported, "
                                    f"got type {str(kind)[:40]!r}")
            if not isinstance(p.get("text"), str):
                raise ApiError(400, f"{where}: a text part needs a 'text' string")
            parts.append(p["text"])
        return "\n".join(parts)
    raise ApiError(400, f"{where}: 'content' must be a string or a list of text parts")


def each_message(msgs) -> list:
    """A request's `messages` as (where, message) pairs: a non-empty list of objects
    (OpenAI's and Anthropic's alike), else ApiError(400) saying which."""
    if msgs is MISSING or msgs is None:
        raise ApiError(400, "'messages' is required")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] must be an object")
        out.append((f"messages[{i}]", m))
    return out


def each_tool(tools) -> list:
    """A request's `tools` as (i, tool) pairs: a list of objects (OpenAI's and
    Anthropic's alike), else ApiError(400) saying which; each API reads its own fields."""
    if not isinstance(tools, list):
        raise ApiError(400, "'tools' must be a list of tools")
    for i, t in enumerate(tools):
        if not isinstance(t, dict):
            raise ApiError(400, f"'tools[{i}]' must be an object")
    return list(enumerate(tools))


def get_messages(body, system: str | None) -> list:
    out = []
    for where, m in each_message(body.get("messages", MISSING)):
        role = m.get("role")
        if not isinstance(role, str):
            raise ApiError(400, f"{where}: 'role' is required and must be a string")
        if role not in ROLES:
            raise ApiError(400, f"{where}: unknown role {role[:40]!r}; use one of {', '.join(ROLES)}")
        if "content" not in m and role != "assistant":
            raise ApiError(400, f"{where}: 'content' is required")
        msg = dict(m)
        if role == "developer":  # OpenAI's newer name for it; chat templates know "system"
            msg["role"] = "system"
        msg["content"] = content_text(m.get("content"), where)
        if "name" in msg and not isinstance(msg["name"], str):
            raise ApiError(400, f"{where}: 'name' must be a string")
        if isinstance(msg.get("tool_calls"), list):
            msg["tool_calls"] = [_with_object_arguments(c) for c in msg["tool_calls"]]
        out.append(msg)
    if system and not any(m["role"] == "system" for m in out):
        out.insert(0, {"role": "system", "content": system})
    return out


class ToolArguments(dict):
    """A tool call's arguments. OpenAI clients send them as a JSON string, and chat
    templates expect an object (`arguments | tojson`, `arguments | items`), so they get
    one, as llama.cpp and vLLM give them. Printed as is (`{{ arguments }}`), it is the
    text the client sent."""

    def __init__(self, obj: dict, text: str):
        super().__init__(obj)
        self.text = text

    def __str__(self) -> str:
        return self.text


def _with_object_arguments(call):
    fn = call.get("function") if isinstance(call, dict) else None
    text = fn.get("arguments") if isinstance(fn, dict) else None
    if not isinstance(text, str):
        return call
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return call  # not JSON: the template gets the text as sent
    if not isinstance(obj, dict):
        return call
    return {**call, "function": {**fn, "arguments": ToolArguments(obj, text)}}


# ---- model helpers ---------------------------------------------------------------------

def get_tools(body) -> list | None:
    """'tools': OpenAI's {"type": "function", "function": {...}} objects; a bare function
    {"name": ...} is taken too (see tool_calls.declared_names). OpenAI's older 'functions'
    and 'function_call' are refused rather than ignored: no client would notice."""
    for old, new in (("functions", "tools"), ("function_call", "tool_choice")):
        if body.get(old) not in (None, []):  # an empty list asks for nothing either
            raise ApiError(400, f"'{old}' (OpenAI's deprecated form) is not supported; "
                                f"use '{new}'")
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise ApiError(400, "'tools' must be a list of objects")
    for i, t in enumerate(tools):
        if t.get("type", "function") != "function":
            raise ApiError(400, f"'tools[{i}]': only type \"function\" is supported, "
                                f"got {str(t.get('type'))[:40]!r}")
    return tools or None


TOOL_CHOICES = ("none", "auto", "required")


def get_tool_choice(body, tools: list | None):
    """'tool_choice': "none", "auto" (the default), "required" or
    {"type": "function", "function": {"name": NAME}}. "none" means the reply is not
    searched for calls; "required" and a named function constrain the reply to be a
    call (see reply_grammar), so they need 'tools', and a named function must be one of
    them: otherwise the client has a bug."""
    v = body.get("tool_choice")
    if v is None:
        return "auto"
    if v == "required" and not declared_names(tools):
        raise ApiError(400, "'tool_choice' \"required\" needs 'tools' with named functions")
    if isinstance(v, str) and v in TOOL_CHOICES:
        return v
    fn = v.get("function") if isinstance(v, dict) else None
    if (not isinstance(v, dict) or v.get("type") != "function" or not isinstance(fn, dict)
            or not isinstance(fn.get("name"), str)):
        raise ApiError(400, "'tool_choice' must be \"none\", \"auto\", \"required\" or "
                            "{\"type\": \"function\", \"function\": {\"name\": ...}}")
    if fn["name"] not in declared_names(tools):
        raise ApiError(400, f"'tool_choice' names the function {fn['name'][:60]!r}, "
                            f"which is not in 'tools'")
    return v


def prompt_tools(model, tools: list | None, choice) -> list | None:
    """The tools the prompt shows. With tool_choice "none", a model shown them in
    llama.cpp's generic format (its template cannot show them) is not shown them at all:
    that text asks for JSON that nothing would read. A template with a tool format of its
    own keeps them, as it always did."""
    from runtime.tool_calls import uses_generic_format
    if tools and choice == "none" and uses_generic_format(template_in_effect(model)):
        return None
    return tools


def reply_grammar(model, tools: list | None, choice, json_start):
    """The start state of the constraint on a chat reply, or None for free text.
    tool_choice "required" (any of the tools) or a named function: a tool call, in place
    of a JSON response_format (json_start). "auto", for a model shown its tools in
    llama.cpp's generic format (its template cannot show them): the request's own JSON
    format if it has one, else a call or {"response": TEXT}, as llama.cpp constrains it
    (a model told to answer in JSON is held to it). Otherwise json_start."""
    from runtime.tool_calls import call_grammar, uses_generic_format
    if not tools or choice == "none":
        return json_start
    if choice == "auto":
        template = template_in_effect(model)
        if json_start is not None or not uses_generic_format(template):
            return json_start
        return call_grammar(tools, None, template, answer=True)
    names = None if choice == "required" else {choice["function"]["name"]}
    return call_grammar(tools, names, template_in_effect(model))


RESPONSE_TYPES = ("text", "json_object", "json_schema")


def _schema_node(schema, where: str, strict: bool = False):
    try:
        return json_constraint.compile_schema(schema, strict=strict)
    except json_constraint.SchemaError as e:
        raise ApiError(400, f"{where}: {e}") from None


def get_json_grammar(body):
    """'response_format' (OpenAI; llama-server's {"type": "json_object", "schema": ...}
    too) or llama-server's 'json_schema' -> the start state of the constraint that makes
    the reply one JSON value of that schema, or None for free text."""
    grammar = body.get("grammar")
    if grammar is not None and grammar != "":  # llama-server reads "" as no grammar
        raise ApiError(400, "'grammar' (GBNF) is not supported; for JSON replies use "
                            "'json_schema' or 'response_format'")
    rf = body.get("response_format")
    node = None
    if rf is not None:
        kind = rf.get("type") if isinstance(rf, dict) else None
        if kind not in RESPONSE_TYPES:
            raise ApiError(400, "'response_format' must be {\"type\": \"text\"}, "
                                "{\"type\": \"json_object\"} or {\"type\": \"json_schema\", "
                                "\"json_schema\": {\"name\": ..., \"schema\": {...}}}")
        if kind == "json_object":
            node = json_constraint.any_object()
            if rf.get("schema") is not None:
                node = json_constraint.only_objects(
                    _schema_node(rf["schema"], "'response_format.schema'"))
                if node is None:
                    raise ApiError(400, "'response_format.schema': a json_object reply is an "
                                        "object, and this schema allows no object")
        elif kind == "json_schema":
            spec = rf.get("json_schema")
            if spec is None and "schema" in rf:
                spec = {"schema": rf["schema"]}
            if not isinstance(spec, dict):
                raise ApiError(400, "'response_format.json_schema' must be an object "
                                    "{\"name\": ..., \"schema\": {...}}")
            if spec.get("name") is not None and not isinstance(spec["name"], str):
                raise ApiError(400, "'response_format.json_schema.name' must be a string")
            strict = get_bool(spec, "strict", False)
            schema = spec.get("schema")
            node = (json_constraint.any_object() if schema is None else
                    _schema_node(schema, "'response_format.json_schema.schema'", strict))
    if body.get("json_schema") is not None:
        if node is not None:
            raise ApiError(400, "give either 'json_schema' or a JSON 'response_format', not both")
        node = _schema_node(body["json_schema"], "'json_schema'")
    return None if node is None else json_constraint.value_grammar(node)


def output_constraint(model, start):
    """The request's TokenConstraint for a start state, or None without one."""
    return None if start is None else json_constraint.make_constraint(model, start)


def split_prefill(messages: list) -> tuple[list, str | None]:
    """llama-server's assistant prefill: a last message from the assistant (with no tool
    calls) is the start of the reply, which the model continues. -> (the messages before
    it, its text), or (messages, None) when the last message is not one. An assistant
    message alone is not one: it is rendered as a past turn and answered (templates
    such as Qwen's cannot render an empty list of messages)."""
    last = messages[-1]
    if last["role"] != "assistant" or last.get("tool_calls") or len(messages) == 1:
        return messages, None
    if len(messages) >= 2 and messages[-2]["role"] == "assistant":
        raise ApiError(400, "'messages': cannot have 2 or more assistant messages at the end "
                            "of the list")
    return messages[:-1], last["content"]


def chat_ids(model, messages, tools=None, add_generation_prompt=True,
             template_kwargs=None) -> tuple[str, list]:
    """The prompt of a chat request and its ids. A prefill is rendered as llama-server
    renders it: the messages before it with the generation prompt, then its text, so that
    the reply holds only the continuation. template_kwargs: see get_template_kwargs."""
    from runtime.chat_template import TemplateError
    messages, prefill = split_prefill(messages)
    if prefill is not None:
        add_generation_prompt = True  # the prefill goes where the reply would begin
    try:
        return chat_prompt_ids(model, messages, tools, add_generation_prompt, prefill or "",
                               template_kwargs)
    except TemplateError as e:
        raise ApiError(400, f"the chat template refused these messages: {e}") from None


def _is_one_prompt(prompt: list) -> bool:
    """llama-server's rule: a list of token ids, or of ids and strings with at least one
    id, is one prompt; any other list (of strings, of lists) is several prompts."""
    return (all(is_int(p) or isinstance(p, str) for p in prompt)
            and any(is_int(p) for p in prompt))


def _split_prompts(prompt, key: str) -> list:
    """llama-server's prompt forms as a list of prompts: a string, token ids, or a list
    mixing both is one prompt; any other non-empty list holds several (each checked by
    _one_prompt_ids)."""
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise ApiError(400, f"'{key}' must be a non-empty string or list of token ids")
    return [prompt] if _is_one_prompt(prompt) else prompt


def _one_prompt_ids(model, prompt, key: str) -> list:
    """llama-server's one prompt: a string, token ids, or a list mixing both."""
    if isinstance(prompt, str):
        return tokenize_prompt(model, prompt)
    if not isinstance(prompt, list) or not prompt:
        raise ApiError(400, f"'{key}' must be a string, or a list of token ids and strings")
    return _mixed_prompt_ids(model, prompt, key)


def completion_prompts(model, prompt, key="prompt") -> list:
    """The prompt of /v1/completions and /completion: one prompt (a string, token ids, or
    a list mixing both), or a list of several (OpenAI's batch), each answered in n
    choices of its own (see get_n for the cap on prompts × n). -> [(ids, the prompt as
    sent), ...], for prompt_text."""
    prompts = _split_prompts(prompt, key)
    if len(prompts) > MAX_PROMPTS:
        raise ApiError(400, f"'{key}' holds {len(prompts)} prompts; at most {MAX_PROMPTS} "
                            f"are taken in one request")
    many = len(prompts) > 1
    return [(_one_prompt_ids(model, p, f"{key}[{i}]" if many else key), p)
            for i, p in enumerate(prompts)]


def prompt_text(model, prompt, ids: list) -> str:
    """The text of a prompt that completion_prompts read as `ids`: what /v1/completions' echo
    returns. A string (or a batch of one string) as sent, as OpenAI echoes it; token ids,
    or ids mixed with strings, as the text of the ids, which the completion continues
    (detokenizing the string instead could change it: a SentencePiece vocabulary drops
    the space at its start)."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    return prompt if isinstance(prompt, str) else model.detokenize(ids)


def _mixed_prompt_ids(model, prompt: list, key: str) -> list:
    ids = []
    for i, p in enumerate(prompt):
        if is_int(p):
            if not 0 <= p < model.n_vocab:
                raise ApiError(400, f"'{key}': token id {p} is out of range "
                                    f"[0, {model.n_vocab})")
            ids.append(p)
        elif isinstance(p, str):
            ids += tokenize_prompt(model, p, add_special=(i == 0))
        else:
            raise ApiError(400, f"'{key}' must be a string, or a list of token ids and strings")
    return ids


def template_in_effect(model) -> str:
    """The model's template, or the built-in fallback that chat_prompt uses without one
    (found once per model: it scans the vocabulary)."""
    if model.chat_template:
        return model.chat_template
    cached = getattr(model, "_fallback_template", None)
    if cached is not None:
        return cached
    try:
        from runtime.chat_template import fallback_template
        specials = {model.tokenizer.token_text(i) for i in range(model.tokenizer.n_vocab)
                    if model.tokenizer.is_control(i)}
        found = fallback_template(model.arch, specials)
    except Exception:  # noqa: BLE001 - informational only
        found = ""
    model._fallback_template = found
    return found


def piece(model, tok: int) -> tuple[str, list]:
    b = model.tokenizer.token_to_piece(tok)
    if isinstance(b, str):
        b = b.encode("utf-8")
    return b.decode("utf-8", "replace"), list(b)


def logprob(p: float) -> float:
    return math.log(p) if p > 0 else -1e30


def legacy_tops(model, probs) -> dict:
    """The legacy `top_logprobs` entry of one token from its [(id, prob), ...], best
    first. Keyed by text: tokens that read the same (byte tokens of an unfinished
    character all read "\ufffd") keep the likeliest, which is listed first."""
    tops = {}
    for t, p in probs or []:
        tops.setdefault(piece(model, t)[0], logprob(p))
    return tops


def prompt_logprobs(model, ids: list, probs: list, text: str) -> dict:
    """echo's part of the legacy `logprobs`: every prompt token, its logprob and its
    likeliest alternatives given the tokens before it (null for the first, which has
    none, as in OpenAI's answer), and where its text begins in the prompt's `text`. The
    offsets are those of the text the ids decode to, which is `text` for token ids and
    for a string that decodes back to itself; they never pass the end of `text`.
    probs: the engine's prompt_probs, one (prob, [(id, prob), ...]) per token after the
    first."""
    offsets = TextOffsets(model, start=0, continuation=False)
    return {"tokens": [piece(model, t)[0] for t in ids],
            "token_logprobs": [None] + [logprob(p) for p, _ in probs],
            "top_logprobs": [None] + [legacy_tops(model, tops) for _, tops in probs],
            "text_offset": [min(offsets.push(t), len(text)) for t in ids]}


def joined_logprobs(first: dict, then: dict) -> dict:
    """Two legacy `logprobs` objects one after the other (the prompt's, the reply's)."""
    return {k: first[k] + then[k] for k in first}


def _continues_char(held: bytes, more: bytes) -> bool:
    """Whether `more`'s first byte goes on with the unfinished UTF-8 character `held`."""
    try:
        (held + more[:1]).decode("utf-8")
        return True
    except UnicodeDecodeError as e:
        return e.reason == "unexpected end of data"


class TextOffsets:
    """The legacy `text_offset` of each completion token, one token at a time: where its
    text begins in the returned text, in characters, counted from `start`.

    The text is what the engine's decoder (fed the same tokens) brings out. A token that
    goes on with an unfinished character has that character's offset. Bytes that wait for
    the rest of a character and then get none come out as one U+FFFD just before the
    token that shows it (Python's decoder makes one U+FFFD of such bytes): that token's
    text begins after it, so it gets the offset after it. Each offset depends only on the
    tokens up to its own, so streamed and whole replies agree.
    """

    def __init__(self, model, start: int, continuation: bool = True):
        """continuation: the tokens go on from text before them (a completion); False
        for a text of its own (the prompt), whose first word drops a SentencePiece
        vocabulary's space as detokenize does."""
        self._tok = model.tokenizer
        self._text = self._tok.decoder(continuation=continuation)
        self._bytes = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._n_out = start   # characters the decoder has brought out, from `start`
        self._last = start

    def push(self, token: int) -> int:
        raw = self._tok.token_to_piece(token)
        held = self._bytes.getstate()[0]   # an unfinished character's bytes
        broken = bool(held) and bool(raw) and not _continues_char(held, raw)
        # max: a vocabulary that cleans spaces may bring the U+FFFD out a token later.
        self._last = max(self._last, self._n_out + broken)
        self._bytes.decode(raw)
        self._n_out += len(self._text.push(token))
        return self._last
