"""Anthropic's Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`) over the
chat route, as llama-server serves it: a request is translated into a chat completions
body, the chat route's own machinery (templates, tool calls, the reasoning split and
budget) makes the reply, and the reply is translated back into Anthropic's message, or
its stream of events.

Plain functions, no server state: `chat_body` (Anthropic request -> chat body), and back
`whole_message` (the chat response object -> a message) and `stream_events` (the chat
route's chunks -> Anthropic's Server-Sent Events). Errors on these routes have
Anthropic's shape: `error_body`, `error_event`.
"""
from __future__ import annotations

import json
import re
import uuid

from runtime.api import (KEEPALIVE_EVERY_S, ApiError, content_text, each_message, each_tool,
                         json_bytes, stream_pieces)

PATHS = ("/v1/messages", "/v1/messages/count_tokens")
# Claude Code 2.1 (its beta "mid-conversation-system-2026-04-07") puts system turns among
# the messages, such as its list of agent types after the user's first turn; llama-server
# passes them to the chat template as they are, as the chat route does.
ROLES = ("user", "assistant", "system")
# Anthropic's error types by HTTP status; any other 4xx is an invalid_request_error, any
# other 5xx an api_error (https://docs.anthropic.com/en/api/errors).
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 500: "api_error", 503: "overloaded_error"}
# The sampling fields passed on as they are; the chat route checks them.
SAMPLING_KEYS = ("temperature", "top_p", "top_k")
# Content blocks that carry something the model cannot read.
MEDIA_BLOCKS = {"image": "image", "document": "document", "search_result": "search result",
                "container_upload": "file"}
# Tool types of Anthropic's own server-side tools (web search, bash, ...): not ours to run.
CLIENT_TOOL_TYPES = (None, "custom")
# Claude Code starts its system prompt with a line such as "x-anthropic-billing-header:
# cc_version=...; cch=a5145;": a stamp that changes with every request, so the prompt
# cache would be lost from the first line on. The stamp means nothing to a local model.
BILLING_STAMP_RE = re.compile(r"\A(x-anthropic-billing-header:[^\n]*?\bcch=)[0-9A-Za-z]+;")
# A silent stream (api.KEEPALIVE_EVERY_S) sends an empty delta. Claude Code (2.1) drops a
# stream that sent no event for 300 s and asks again, unstreamed: on a CPU the prefill of
# its prompt (some 19,000 tokens) is silent for longer, so it never got a reply. A ping
# does not do: its client drops pings before its watchdog sees them.


def is_messages_path(path: str) -> bool:
    return path.rstrip("/") in PATHS


def error_body(status: int, message: str, fields=None) -> dict:
    """Anthropic's error body. `fields` of a prompt too long for the context
    (n_prompt_tokens, n_ctx) put Anthropic's words first: Claude Code knows such an error
    only by "prompt is too long: N tokens > M" (it then says "Prompt is too long" and can
    compact the conversation); any other 400 it shows as a bare API error."""
    kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    fields = fields or {}
    if "n_prompt_tokens" in fields and "n_ctx" in fields:
        message = (f"prompt is too long: {fields['n_prompt_tokens']} tokens > "
                   f"{fields['n_ctx']} maximum; {message}")
    return {"type": "error", "error": {"type": kind, "message": message}}


def event(name: str, data: dict) -> bytes:
    """One Server-Sent Event as Anthropic sends it: its type on the `event:` line too."""
    return b"event: " + name.encode() + b"\ndata: " + json_bytes(data) + b"\n\n"


def error_event(e: ApiError) -> bytes:
    """An error once the stream's headers are sent (Anthropic's `error` event)."""
    return event("error", error_body(e.status, e.message))


# ---- the request ---------------------------------------------------------------------

def chat_body(body: dict, count_tokens: bool = False) -> dict:
    """The chat completions body of a Messages request; ApiError(400) naming the field
    for what it cannot be. count_tokens: /v1/messages/count_tokens, whose body has no
    max_tokens."""
    out = {"messages": system_messages(body.get("system")) + chat_messages(body.get("messages"))}
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "'model' must be a string")
    if not count_tokens:
        out["max_tokens"] = max_tokens_of(body)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise ApiError(400, "'stream' must be a boolean")
        out["stream"] = stream
        stops = body.get("stop_sequences")
        if stops is not None:
            if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
                raise ApiError(400, "'stop_sequences' must be a list of strings")
            out["stop"] = stops
        for key in SAMPLING_KEYS:
            if body.get(key) is not None:
                out[key] = body[key]
        out.update(thinking_fields(body.get("thinking")))
    if body.get("chat_template_kwargs") is not None:  # it changes the prompt: counted too
        out["chat_template_kwargs"] = body["chat_template_kwargs"]
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise ApiError(400, "'metadata' must be an object")
    out.update(tool_fields(body.get("tools"), body.get("tool_choice")))
    return out


def max_tokens_of(body: dict) -> int:
    # Anthropic requires it; llama-server takes 4096 when it is missing.
    n = body.get("max_tokens")
    if n is None:
        raise ApiError(400, "'max_tokens' is required")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ApiError(400, "'max_tokens' must be an integer, 1 or more")
    return n


def system_messages(system) -> list:
    """`system`: a string or a list of text blocks, as one system message."""
    if system is None or system == "" or system == []:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": unstamped(system)}]
    if not isinstance(system, list):
        raise ApiError(400, "'system' must be a string or a list of text blocks")
    for i, b in enumerate(system):
        if not isinstance(b, dict) or b.get("type") != "text" or not isinstance(b.get("text"), str):
            raise ApiError(400, f"'system[{i}]' must be a text block {{\"type\": \"text\", "
                                f"\"text\": ...}}")
    return [{"role": "system", "content": [{"type": "text", "text": unstamped(b["text"])}
                                           for b in system]}]


def unstamped(text: str) -> str:
    """A system text with Claude Code's per-request stamp made constant (as llama-server
    does), so that one request's prompt is a prefix of the next one's."""
    return BILLING_STAMP_RE.sub(r"\g<1>00000;", text, count=1)


def chat_messages(messages) -> list:
    """Anthropic's user, assistant (and system) turns as chat messages: an assistant's
    tool_use blocks become its tool_calls and its thinking its reasoning_content; a
    user's tool_result blocks become tool messages, before the user's own text."""
    out = []
    for where, m in each_message(messages):
        role = m.get("role")
        if role not in ROLES:
            raise ApiError(400, f"{where}: 'role' must be \"user\", \"assistant\" or "
                                f"\"system\", got {str(role)[:40]!r}")
        content = m.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif isinstance(content, list):
            out += turn_messages(role, content, where)
        else:
            raise ApiError(400, f"{where}: 'content' must be a string or a list of content blocks")
    return out


def turn_messages(role: str, blocks: list, where: str) -> list:
    """The chat messages of one turn given as content blocks."""
    texts, calls, thoughts, results = [], [], [], []
    for j, b in enumerate(blocks):
        at = f"{where}.content[{j}]"
        kind = b.get("type") if isinstance(b, dict) else None
        if isinstance(kind, str) and kind in MEDIA_BLOCKS:  # (a list as a type: unhashable)
            raise ApiError(400, f"{at}: {MEDIA_BLOCKS[kind]} input is not supported: this "
                                f"server's model reads text only")
        if kind == "text":
            texts.append({"type": "text", "text": text_of(b, "text", at)})
        elif kind == "thinking" and role == "assistant":
            thoughts.append(text_of(b, "thinking", at))
        elif kind == "redacted_thinking" and role == "assistant":
            continue  # encrypted by Anthropic's models: nothing a local model can read
        elif kind == "tool_use" and role == "assistant":
            calls.append(tool_call(b, at))
        elif kind == "tool_result" and role == "user":
            results.append({"role": "tool", "tool_call_id": text_of(b, "tool_use_id", at),
                            "content": result_text(b.get("content"), at)})
        else:
            raise ApiError(400, f"{at}: a {role} message cannot have a block of type "
                                f"{str(kind)[:40]!r}")
    msgs = list(results)
    if texts or calls or thoughts or not results:
        msg = {"role": role, "content": texts}
        if calls:
            msg["tool_calls"] = calls
        if thoughts:
            msg["reasoning_content"] = "".join(thoughts)
        msgs.append(msg)
    return msgs


def text_of(block: dict, key: str, at: str) -> str:
    v = block.get(key)
    if not isinstance(v, str):
        raise ApiError(400, f"{at}: '{key}' must be a string")
    return v


def tool_call(block: dict, at: str) -> dict:
    """A tool_use block as an OpenAI tool call (arguments: the input as JSON text)."""
    args = block.get("input", {})
    if not isinstance(args, dict):
        raise ApiError(400, f"{at}: 'input' must be an object")
    return {"id": text_of(block, "id", at), "type": "function",
            "function": {"name": text_of(block, "name", at),
                         "arguments": json.dumps(args, ensure_ascii=False)}}


def result_text(content, at: str) -> str:
    """A tool_result's content: a string, or text blocks (joined by newlines, as the chat
    route joins text parts)."""
    return content_text(content, at, MEDIA_BLOCKS)


def tool_fields(tools, choice) -> dict:
    """`tools` and `tool_choice` as the chat route's: {name, description, input_schema}
    -> a function; auto / any / tool NAME / none -> "auto" / "required" / that function
    / "none"; disable_parallel_tool_use -> parallel_tool_calls false."""
    out = {}
    if tools is not None:
        fns = []
        for i, t in each_tool(tools):
            if t.get("type") not in CLIENT_TOOL_TYPES:
                raise ApiError(400, f"'tools[{i}]': Anthropic's server tool "
                                    f"{str(t.get('type'))[:40]!r} is not supported; give "
                                    f"tools with a name, description and input_schema")
            name, schema = t.get("name"), t.get("input_schema", {"type": "object"})
            if not isinstance(name, str) or not name:
                raise ApiError(400, f"'tools[{i}]': 'name' must be a non-empty string")
            if not isinstance(schema, dict):
                raise ApiError(400, f"'tools[{i}]': 'input_schema' must be an object")
            fn = {"name": name, "parameters": schema}
            if t.get("description") is not None:
                fn["description"] = t["description"]
            fns.append({"type": "function", "function": fn})
        out["tools"] = fns
    if choice is None:
        return out
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "tool":
        if not isinstance(choice.get("name"), str):
            raise ApiError(400, "'tool_choice': {\"type\": \"tool\"} needs a 'name' string")
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif kind in ("auto", "any", "none"):
        out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    else:
        raise ApiError(400, "'tool_choice' must be {\"type\": \"auto\"}, {\"type\": \"any\"}, "
                            "{\"type\": \"tool\", \"name\": ...} or {\"type\": \"none\"}")
    parallel_off = choice.get("disable_parallel_tool_use", False)
    if not isinstance(parallel_off, bool):
        raise ApiError(400, "'tool_choice.disable_parallel_tool_use' must be a boolean")
    if parallel_off:
        out["parallel_tool_calls"] = False
    return out


def thinking_fields(thinking) -> dict:
    """`thinking` as the chat route's reasoning budget: enabled with budget_tokens N
    closes a thought after N tokens (llama-server's thinking_budget_tokens); disabled
    closes it at once; absent (or adaptive) leaves the server's --reasoning-budget."""
    if thinking is None:
        return {}
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "enabled":
        n = thinking.get("budget_tokens")
        if n is None:
            return {}
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ApiError(400, "'thinking.budget_tokens' must be an integer, 0 or more")
        return {"thinking_budget_tokens": n}
    if kind == "disabled":
        return {"thinking_budget_tokens": 0}
    if kind == "adaptive":
        return {}
    raise ApiError(400, "'thinking' must be {\"type\": \"enabled\", \"budget_tokens\": N} "
                        "or {\"type\": \"disabled\"}")


# ---- the reply -----------------------------------------------------------------------

def message_id() -> str:
    return "msg_" + uuid.uuid4().hex[:24]


def stop_reason(finish_reason: str, final) -> tuple:
    """(stop_reason, stop_sequence) of a reply from the chat route's finish_reason and
    the engine's final event."""
    if finish_reason == "tool_calls":
        return "tool_use", None
    if finish_reason == "length":
        return "max_tokens", None
    if final is not None and final.stopped_word:
        return "stop_sequence", final.stopping_word
    return "end_turn", None


def tool_use(call: dict) -> dict:
    """An OpenAI tool call as a tool_use block (its arguments, JSON text, as `input`)."""
    fn = call["function"]
    try:
        args = json.loads(fn.get("arguments") or "{}")
    except ValueError:
        args = {}
    return {"type": "tool_use", "id": call["id"], "name": fn["name"],
            "input": args if isinstance(args, dict) else {}}


def whole_message(reply: dict, final, msg_id: str, model_id: str) -> dict:
    """The chat route's response object (one choice) as Anthropic's message: a thinking
    block (an empty signature: a local model signs nothing), a text block, tool_use
    blocks, each only when there is one."""
    choice = reply["choices"][0]
    msg = choice["message"]
    content = []
    if msg.get("reasoning_content"):
        content.append({"type": "thinking", "thinking": msg["reasoning_content"], "signature": ""})
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    content += [tool_use(c) for c in msg.get("tool_calls") or []]
    reason, sequence = stop_reason(choice["finish_reason"], final)
    return {"id": msg_id, "type": "message", "role": "assistant", "model": model_id,
            "content": content, "stop_reason": reason, "stop_sequence": sequence,
            "usage": {"input_tokens": reply["usage"]["prompt_tokens"],
                      "output_tokens": reply["usage"]["completion_tokens"]}}


def stream_events(chunks, n_input_tok: int, msg_id: str, model_id: str, finals: list,
                  keepalive_every_s: float = KEEPALIVE_EVERY_S):
    """Anthropic's events of a streamed reply, from the chat route's chunks (dicts, then
    the `[DONE]` bytes): message_start and a ping, then each block's content_block_start,
    its deltas and content_block_stop (thinking, text, then the tool calls), then
    message_delta with stop_reason and usage, and message_stop. Whenever no chunk came
    for keepalive_every_s (a long prefill, or a held tool call), an empty delta (see
    Blocks.keepalive). `finals` holds the engine's final event once the chunks are all
    taken."""
    yield event("message_start", {"type": "message_start", "message": {
        "id": msg_id, "type": "message", "role": "assistant", "model": model_id,
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": n_input_tok, "output_tokens": 0}}})
    yield event("ping", {"type": "ping"})
    blocks = Blocks()
    finish_reason = "stop"
    for kind, value in stream_pieces(chunks, keepalive_every_s):
        if kind == "pause":  # nothing for a while: an event for the client's idle watchdog
            yield from blocks.keepalive()
        elif kind in ("reasoning", "content"):
            yield from blocks.add("thinking" if kind == "reasoning" else "text", value)
        elif kind == "tool_call":
            yield from blocks.tool(value)
        else:
            finish_reason = value
    yield from blocks.close()
    final = finals[0] if finals else None
    reason, sequence = stop_reason(finish_reason, final)
    yield event("message_delta", {
        "type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
        "usage": {"output_tokens": final.completion_tokens if final else 0}})
    yield event("message_stop", {"type": "message_stop"})


class Blocks:
    """The content blocks of a stream: the open one's type, and the next one's index."""

    def __init__(self):
        self.open, self.index = None, 0

    def add(self, kind: str, text: str):
        """Text for a thinking or text block: the open one, or a new one."""
        if self.open != kind:
            yield from self.close()
            yield self._start({"type": kind, kind: ""})
            self.open = kind
        delta_type = "thinking_delta" if kind == "thinking" else "text_delta"
        yield self._delta({"type": delta_type, kind: text})

    def keepalive(self):
        """An empty delta on the open block (an input_json_delta on a tool_use block, as
        Anthropic's own streams send), else on a new text block, which the reply's text,
        if it begins with text, goes on filling. Only before the first block is none
        open: Claude Code's watchdog counts every event but a ping, and the others would
        end the message (message_stop) or count its usage again (message_delta)."""
        if self.open == "tool_use":
            yield self._delta({"type": "input_json_delta", "partial_json": ""})
        else:
            yield from self.add(self.open if self.open in ("thinking", "text") else "text", "")

    def tool(self, call: dict):
        """A whole tool call (the chat route sends each one complete) as its own block,
        left open until the next piece comes (the next call or the end: the chat route
        sends them together), so that a keepalive meanwhile has a block to go on."""
        yield from self.close()
        yield self._start({"type": "tool_use", "id": call["id"],
                           "name": call["function"]["name"], "input": {}})
        self.open = "tool_use"
        yield self._delta({"type": "input_json_delta",
                           "partial_json": call["function"].get("arguments") or "{}"})

    def close(self):
        if self.open is None:
            return
        if self.open == "thinking":  # Anthropic signs a thought before it ends; we cannot
            yield self._delta({"type": "signature_delta", "signature": ""})
        yield event("content_block_stop", {"type": "content_block_stop", "index": self.index})
        self.open, self.index = None, self.index + 1

    def _start(self, block: dict) -> bytes:
        return event("content_block_start", {"type": "content_block_start",
                                              "index": self.index, "content_block": block})

    def _delta(self, delta: dict) -> bytes:
        return event("content_block_delta", {"type": "content_block_delta",
                                              "index": self.index, "delta": delta})
