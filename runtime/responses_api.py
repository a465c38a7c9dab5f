"""OpenAI's Responses API (`POST /v1/responses`) over the chat route, as llama-server
serves it: a request is translated into a chat completions body, the chat route's own
machinery (templates, tool calls, JSON constraints, the reasoning split) makes the
reply, and the reply is translated back into a response object, or its stream of named
events. Stateless, as llama-server is: nothing is stored, so a request must carry the
whole conversation (`previous_response_id` and `conversation` are refused).

Plain functions, no server state: `chat_body` (Responses request -> chat body), `head`
(what the response object repeats of its request), and back `whole_response` (the chat
response object -> a response) and `Events.stream` (the chat route's chunks -> the
Server-Sent Events). Errors keep OpenAI's shape, as on the chat route, and name the
Responses fields (`in_clients_words`). Around it: `count_object` (POST
/v1/responses/input_tokens) and `not_stored` (GET/DELETE /v1/responses/{id}).
"""
from __future__ import annotations

import contextlib
import time
import uuid

from runtime.api import KEEPALIVE_EVERY_S, ApiError, each_tool, json_bytes, stream_pieces

PATHS = ("/v1/responses", "/responses")
COUNT_PATHS = ("/v1/responses/input_tokens", "/responses/input_tokens")
# OpenAI's compaction of a conversation into an opaque item: not done here (see not_compacted).
COMPACT_PATHS = ("/v1/responses/compact", "/responses/compact")
ROLES = ("user", "assistant", "system", "developer")
# The sampling fields passed on as they are; the chat route checks them. (top_k is
# llama-server's, sent by clients that know it.)
SAMPLING_KEYS = ("temperature", "top_p", "top_k")
# Content parts that carry something the model cannot read.
MEDIA_PARTS = {"input_image": "image", "input_file": "file", "input_audio": "audio"}
TEXT_PARTS = ("input_text", "output_text", "text")
# A silent stream (api.KEEPALIVE_EVERY_S) sends response.in_progress again, for Codex
# CLI's idle timeout (300 s by default). An SSE comment would not do for it: clients' SSE
# readers drop comments before any timer sees them.
# Fields that need state this server does not keep, or work it does not do.
STATEFUL = {"previous_response_id": "no response is stored: send the whole conversation "
                                    "in 'input'",
            "conversation": "no conversation is stored: send the whole conversation in "
                            "'input'",
            "prompt": "no prompt template is stored: send 'instructions' and 'input'"}


# The chat route's names of the fields it checks, and the Responses fields they came from.
CHAT_FIELDS = (("'messages'", "'input'"),
               ("'response_format.json_schema.", "'text.format."),
               ("'response_format", "'text.format"))


def event(data: dict) -> bytes:
    """One Server-Sent Event as OpenAI sends it: its type on the `event:` line too."""
    return b"event: " + data["type"].encode() + b"\ndata: " + json_bytes(data) + b"\n\n"


# ---- the request ---------------------------------------------------------------------

@contextlib.contextmanager
def in_clients_words():
    """The chat route's 400s said with the fields the client sent: its checks name its
    own ('messages', 'response_format'), which a Responses request has not."""
    try:
        yield
    except ApiError as e:
        message = e.message
        for chat, ours in CHAT_FIELDS:
            message = message.replace(chat, ours)
        if message == e.message:
            raise
        raise ApiError(e.status, message, e.type, e.headers, e.fields) from None


def not_stored(response_id: str) -> ApiError:
    """GET/DELETE /v1/responses/{id}, and everything under it (POST .../cancel, GET
    .../input_items): nothing is stored, so there is no response to give, delete or
    cancel; a 404, as OpenAI's for an unknown id."""
    return ApiError(404, f"no response {response_id[:80]!r} is stored: this server "
                         f"stores none (its replies say \"store\": false)")


def not_compacted() -> str:
    """Why POST /v1/responses/compact is a 501 (the server's not_supported): OpenAI's
    compaction gives an item only its own server can read back, and this one stores
    nothing. A client that compacts with an ordinary request (a summary asked of the
    model) is served as usual."""
    return ("this server does not compact conversations: it stores no responses (its "
            "replies say \"store\": false); send the whole conversation in 'input'")


def count_object(n_input_tok: int) -> dict:
    """POST /v1/responses/input_tokens: the prompt's size, as OpenAI gives it."""
    return {"object": "response.input_tokens", "input_tokens": n_input_tok}


def chat_body(body: dict) -> dict:
    """The chat completions body of a Responses request; ApiError(400) naming the field
    for what it cannot be."""
    for key, why in STATEFUL.items():
        if body.get(key) is not None:
            raise ApiError(400, f"'{key}' is not supported: {why}")
    if body.get("background"):
        raise ApiError(400, "'background' is not supported: a reply is made while the "
                            "request waits (stream it to see it as it comes)")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "'model' must be a string")
    out = {"messages": instruction_messages(body.get("instructions"))
               + input_messages(body.get("input"))}
    n = body.get("max_output_tokens")
    if n is not None:
        # (the chat route's own bound, checked here to name the field the client sent)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 2**31 - 1:
            raise ApiError(400, "'max_output_tokens' must be an integer from 1 to 2147483647")
        out["max_tokens"] = n
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be a boolean")
    out["stream"] = stream
    for key in SAMPLING_KEYS + ("parallel_tool_calls", "chat_template_kwargs"):
        if body.get(key) is not None:
            out[key] = body[key]
    for key in ("metadata", "reasoning"):
        if body.get(key) is not None and not isinstance(body[key], dict):
            raise ApiError(400, f"'{key}' must be an object")
    out.update(text_format(body.get("text")))
    out.update(tool_fields(body.get("tools"), body.get("tool_choice")))
    return out


def instruction_messages(instructions) -> list:
    """`instructions`: a system message before the input."""
    if instructions is None or instructions == "":
        return []
    if not isinstance(instructions, str):
        raise ApiError(400, "'instructions' must be a string")
    return [{"role": "system", "content": instructions}]


def input_messages(items) -> list:
    """`input` as chat messages: a string is one user message; a list holds messages and
    the items of past replies (function calls, their outputs, reasoning), which become
    the assistant turns' tool_calls and reasoning_content, and tool messages."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if items is None:
        raise ApiError(400, "'input' is required")
    if not isinstance(items, list) or not items:
        raise ApiError(400, "'input' must be a string or a non-empty list of items")
    out = []
    for i, item in enumerate(items):
        at = f"input[{i}]"
        if not isinstance(item, dict):
            raise ApiError(400, f"{at} must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            message(out, item, at)
        elif kind == "function_call":
            name = string(item, "name", at)
            if item.get("namespace") is not None:  # the name the model was shown
                name = flat_name(string(item, "namespace", at), name)
            assistant_turn(out).setdefault("tool_calls", []).append({
                "id": string(item, "call_id", at), "type": "function",
                "function": {"name": name, "arguments": string(item, "arguments", at)}})
        elif kind == "function_call_output":
            out.append({"role": "tool", "tool_call_id": string(item, "call_id", at),
                        "content": parts_text(item.get("output"), at, "output")})
        elif kind == "reasoning":
            thought = reasoning_text(item, at)
            if thought:  # an encrypted thought only: nothing a local model can read
                turn = assistant_turn(out)
                turn["reasoning_content"] = turn.get("reasoning_content", "") + thought
        elif kind == "item_reference":
            raise ApiError(400, f"{at}: 'item_reference' is not supported: no item is "
                                f"stored, send the item itself")
        else:
            raise ApiError(400, f"{at}: items of type {str(kind)[:40]!r} are not supported; "
                                f"send messages, function_call, function_call_output or "
                                f"reasoning items")
    return out


def message(out: list, item: dict, at: str) -> None:
    """A message item, added to `out`; an assistant's text joins the assistant turn its
    reasoning item began (the Responses API gives one turn as several items)."""
    role = item.get("role")
    if role not in ROLES:
        raise ApiError(400, f"{at}: 'role' must be \"user\", \"assistant\", \"system\" or "
                            f"\"developer\", got {str(role)[:40]!r}")
    text = parts_text(item.get("content"), at, "content")
    if role != "assistant":
        out.append({"role": role, "content": text})
        return
    turn = assistant_turn(out)
    if turn.get("content") or turn.get("tool_calls"):  # a turn's second text, or text
        turn = {"role": "assistant", "content": ""}     # after its calls: a turn of its own
        out.append(turn)
    turn["content"] = text


def assistant_turn(out: list) -> dict:
    """The assistant turn that items of a past reply go to: the last message, if it is
    the assistant's, else a new one."""
    if not out or out[-1]["role"] != "assistant":
        out.append({"role": "assistant", "content": ""})
    return out[-1]


def string(item: dict, key: str, at: str) -> str:
    v = item.get(key)
    if not isinstance(v, str):
        raise ApiError(400, f"{at}: '{key}' must be a string")
    return v


def parts_text(content, at: str, key: str) -> str:
    """A message's content, or a function call's output: a string, or text parts joined
    by newlines (as the chat route joins them); images and files refused."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(400, f"{at}: '{key}' must be a string or a list of content parts")
    texts = []
    for j, p in enumerate(content):
        kind = p.get("type") if isinstance(p, dict) else None
        if isinstance(kind, str) and kind in MEDIA_PARTS:  # (a list as a type: unhashable)
            raise ApiError(400, f"{at}.{key}[{j}]: {MEDIA_PARTS[kind]} input is not "
                                f"supported: this server's model reads text only")
        if kind == "refusal" and isinstance(p.get("refusal"), str):
            texts.append(p["refusal"])
        elif kind in TEXT_PARTS and isinstance(p.get("text"), str):
            texts.append(p["text"])
        else:
            raise ApiError(400, f"{at}.{key}[{j}] must be a text part {{\"type\": "
                                f"\"input_text\", \"text\": ...}}")
    return "\n".join(texts)


def reasoning_text(item: dict, at: str) -> str:
    """A reasoning item's text: its content (reasoning_text parts), else its summary
    (some clients send back the summary only)."""
    for key in ("content", "summary"):
        parts = item.get(key)
        if parts is None or parts == []:
            continue
        if not isinstance(parts, list) or not all(
                isinstance(p, dict) and isinstance(p.get("text"), str) for p in parts):
            raise ApiError(400, f"{at}: '{key}' must be a list of parts with a 'text' string")
        return "\n".join(p["text"] for p in parts)
    return ""


def text_format(text) -> dict:
    """`text.format` as the chat route's response_format. (`text.verbosity` is taken and
    not applied: the model is run as it is.)"""
    if text is None:
        return {}
    if not isinstance(text, dict):
        raise ApiError(400, "'text' must be an object")
    fmt = text.get("format")
    if fmt is None:
        return {}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"response_format": {"type": "json_object"}}
    if kind == "json_schema":
        spec = {k: fmt[k] for k in ("name", "schema", "strict") if fmt.get(k) is not None}
        return {"response_format": {"type": "json_schema", "json_schema": spec}}
    raise ApiError(400, "'text.format' must be {\"type\": \"text\"}, {\"type\": "
                        "\"json_object\"} or {\"type\": \"json_schema\", \"name\": ..., "
                        "\"schema\": {...}}")


def tool_fields(tools, choice) -> dict:
    """`tools` (functions: {type, name, description, parameters, strict}, and namespaces
    of functions) and `tool_choice` as the chat route's. OpenAI's built-in tools (web
    search, file search, ...) are left out: nothing here runs them, so the model is not
    offered them, as llama-server and vLLM leave them out. Codex CLI offers web_search
    on every request by default, and a 400 there made every request fail."""
    out = {}
    if tools is not None:
        fns = []
        for i, t in each_tool(tools):
            if t.get("type") == "namespace":
                fns += namespace_functions(t, f"tools[{i}]")
                continue
            if t.get("type") == "function":
                fns.append(function_tool(t, f"tools[{i}]"))
            elif not isinstance(t.get("type"), str):
                raise ApiError(400, f"'tools[{i}]': 'type' must be \"function\" (or a "
                                    f"built-in tool's name, which is left out)")
        if fns or not tools:    # (only built-in tools: as if none were given)
            out["tools"] = fns
    if choice is None or choice in ("auto", "none", "required"):
        if choice is not None:
            out["tool_choice"] = choice
        return out
    if isinstance(choice, dict) and choice.get("type") == "function":
        if not isinstance(choice.get("name"), str):
            raise ApiError(400, "'tool_choice': {\"type\": \"function\"} needs a 'name' string")
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        return out
    raise ApiError(400, "'tool_choice' must be \"auto\", \"none\", \"required\" or "
                        "{\"type\": \"function\", \"name\": ...}")


def function_tool(t: dict, at: str, namespace: str | None = None) -> dict:
    """A function tool as the chat route's (one in a namespace under its flat_name)."""
    if not isinstance(t.get("name"), str) or not t["name"]:
        raise ApiError(400, f"'{at}': 'name' must be a non-empty string")
    params = t.get("parameters") or {"type": "object"}
    if not isinstance(params, dict):
        raise ApiError(400, f"'{at}': 'parameters' must be an object")
    name = t["name"] if namespace is None else flat_name(namespace, t["name"])
    fn = {"name": name, "parameters": params}
    for key in ("description", "strict"):
        if t.get(key) is not None:
            fn[key] = t[key]
    return {"type": "function", "function": fn}


def namespace_functions(t: dict, at: str) -> list:
    """A namespace (functions grouped under a name, as Codex CLI sends its sub-agent
    tools): each function as a chat function named flat_name(namespace, name)."""
    ns = t.get("name")
    if not isinstance(ns, str) or not ns:
        raise ApiError(400, f"'{at}': 'name' must be a non-empty string")
    inner = t.get("tools")
    if not isinstance(inner, list) or not all(isinstance(f, dict) for f in inner):
        raise ApiError(400, f"'{at}': 'tools' must be a list of functions")
    fns = []
    for j, f in enumerate(inner):
        if f.get("type") != "function":
            raise ApiError(400, f"'{at}.tools[{j}]': tools of type {str(f.get('type'))[:40]!r} "
                                f"are not supported in a namespace; give functions")
        fns.append(function_tool(f, f"{at}.tools[{j}]", ns))
    return fns


def flat_name(namespace: str, name: str) -> str:
    """A namespaced function's name as the model sees it, one word: the namespace and
    the name joined by "__", as Codex CLI joins them where a namespace cannot be said."""
    return namespace.rstrip("_") + "__" + name.lstrip("_")


def namespaced(tools) -> dict:
    """{flat name: (namespace, name)} of the request's namespaced functions: a call the
    model makes to one is given back as OpenAI gives it, with its `namespace`."""
    out = {}
    for t in tools if isinstance(tools, list) else []:
        if isinstance(t, dict) and t.get("type") == "namespace":
            for f in t.get("tools") or []:
                out[flat_name(t["name"], f["name"])] = (t["name"], f["name"])
    return out


# ---- the reply -----------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return prefix + "_" + uuid.uuid4().hex[:24]


def head(body: dict, model_id: str) -> dict:
    """The response object's fields known before the reply: its id, and what it repeats
    of its request (as OpenAI's does). `store` is false whatever was asked: nothing is
    stored."""
    fmt = (body.get("text") or {}).get("format") or {"type": "text"}
    return {"id": new_id("resp"), "object": "response", "created_at": int(time.time()),
            "status": "in_progress", "error": None, "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"), "model": model_id,
            "output": [], "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": None, "reasoning": {"effort": None, "summary": None},
            "store": False, "temperature": body.get("temperature"),
            "text": {"format": fmt}, "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [], "top_p": body.get("top_p"),
            "truncation": body.get("truncation", "disabled"), "usage": None,
            "user": body.get("user"), "metadata": body.get("metadata") or {}}


def usage(finals: list, reasoning_tok=()) -> dict:
    """The usage of a reply from the engine's final event; reasoning_tok: the chat
    route's count of its reasoning tokens (ChatReply.reasoning_tok), among the output
    tokens. The prompt tokens found in the cache are cached_tokens."""
    final = finals[0]
    cached = final.timings.cached_n if final.timings is not None else 0
    return {"input_tokens": final.prompt_tokens,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": final.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning_tok[0] if reasoning_tok else 0},
            "total_tokens": final.prompt_tokens + final.completion_tokens}


def ended(resp: dict, finish_reason: str, output: list, finals: list,
          reasoning_tok=()) -> dict:
    """The finished response: "incomplete" when the reply ran out of max_output_tokens."""
    short = finish_reason == "length"
    return {**resp, "status": "incomplete" if short else "completed",
            "incomplete_details": {"reason": "max_output_tokens"} if short else None,
            "output": output, "usage": usage(finals, reasoning_tok)}


def reasoning_item(item_id: str, text: str) -> dict:
    # The thought as it was written (reasoning_text), as OpenAI's open-weight models give
    # theirs; no summary is made.
    return {"type": "reasoning", "id": item_id, "summary": [],
            "content": [{"type": "reasoning_text", "text": text}], "status": "completed"}


def message_item(item_id: str, text: str, status: str = "completed") -> dict:
    return {"type": "message", "id": item_id, "role": "assistant", "status": status,
            "content": [output_text(text)]}


def output_text(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(call: dict, names: dict, status: str = "completed") -> dict:
    """A chat tool call as a function_call item (its id, the chat route's, is call_id);
    a call to a namespaced function (`names`: see namespaced) names its namespace."""
    fn = call["function"]
    named = ({"namespace": names[fn["name"]][0], "name": names[fn["name"]][1]}
             if fn["name"] in names else {"name": fn["name"]})
    return {"type": "function_call", "id": new_id("fc"), "call_id": call["id"], **named,
            "arguments": fn.get("arguments") or "{}", "status": status}


def whole_response(reply: dict, finals: list, resp: dict, reasoning_tok=()) -> dict:
    """The chat route's response object (one choice) as a response: a reasoning item, a
    message, function_call items, each only when there is one (a message, empty, when
    there is nothing else)."""
    choice = reply["choices"][0]
    msg, status = choice["message"], ("incomplete" if choice["finish_reason"] == "length"
                                      else "completed")
    output = []
    if msg.get("reasoning_content"):
        output.append(reasoning_item(new_id("rs"), msg["reasoning_content"]))
    calls = msg.get("tool_calls") or []
    if msg.get("content") or not calls:
        output.append(message_item(new_id("msg"), msg.get("content") or "", status))
    names = namespaced(resp["tools"])
    output += [call_item(c, names) for c in calls]
    return ended(resp, choice["finish_reason"], output, finals, reasoning_tok)


class Events:
    """The named events of a streamed reply, each with its sequence number: made from the
    chat route's chunks by `stream`; `error` gives the in-band error event."""

    def __init__(self, resp: dict):
        self.resp, self.seq = resp, 0
        self.output = []          # the items done
        self.open = None          # the item being written: (kind, item id, text so far)
        self.names = namespaced(resp["tools"])  # see call_item

    def error(self, e: ApiError) -> bytes:
        """An error once the stream's headers are sent: OpenAI's `error` event, then
        response.failed, which ends the stream as response.completed would (clients such
        as Codex read the error there, and take a stream with no end as a dropped one)."""
        code = "server_error" if e.status >= 500 else "invalid_prompt"
        failed = {**self.resp, "status": "failed", "output": self.output,
                  "error": {"code": code, "message": e.message}}
        return (self._event("error", code=e.type or code, message=e.message, param=None)
                + self._event("response.failed", response=failed))

    def stream(self, chunks, finals: list, keepalive_every_s: float = KEEPALIVE_EVERY_S,
               reasoning_tok=()):
        """response.created and response.in_progress; each item's events (a reasoning
        item, a message, function calls) as its text comes, and response.in_progress
        again whenever nothing went out for keepalive_every_s; then response.completed,
        or response.incomplete when the reply ran out of max_output_tokens. `finals`
        holds the engine's final event once the chunks are all taken, and
        `reasoning_tok` the reply's reasoning tokens then (see usage)."""
        yield self._event("response.created", response=self.resp)
        yield self._event("response.in_progress", response=self.resp)
        finish_reason = "stop"
        for kind, value in stream_pieces(chunks, keepalive_every_s):
            if kind == "pause":  # a long prefill, or a call held until it is whole
                yield self._event("response.in_progress", response=self.resp)
            elif kind in ("reasoning", "content"):
                yield from self._text("reasoning" if kind == "reasoning" else "message", value)
            elif kind == "tool_call":
                yield from self._call(value)
            else:
                finish_reason = value
        if not self.output and self.open is None:  # nothing written: an empty message
            yield from self._text("message", "")
        yield from self._close("incomplete" if finish_reason == "length" else "completed")
        resp = ended(self.resp, finish_reason, self.output, finals, reasoning_tok)
        yield self._event("response.incomplete" if resp["status"] == "incomplete"
                          else "response.completed", response=resp)

    def _event(self, kind: str, **fields) -> bytes:
        self.seq += 1
        return event({"type": kind, "sequence_number": self.seq - 1, **fields})

    def _where(self) -> dict:
        return {"item_id": self.open[1], "output_index": len(self.output)}

    def _text(self, kind: str, text: str):
        """Text for a reasoning item or a message: the open one, or a new one."""
        if self.open is None or self.open[0] != kind:
            yield from self._close("completed")
            item_id = new_id("rs" if kind == "reasoning" else "msg")
            item = (reasoning_item(item_id, "") if kind == "reasoning"
                    else message_item(item_id, ""))
            part = item["content"].pop()
            self.open = [kind, item_id, ""]
            yield self._event("response.output_item.added", output_index=len(self.output),
                              item={**item, "status": "in_progress"})
            yield self._event("response.content_part.added", **self._where(),
                              content_index=0, part=part)
        self.open[2] += text
        if kind == "reasoning":
            yield self._event("response.reasoning_text.delta", **self._where(),
                              content_index=0, delta=text)
        elif text:
            yield self._event("response.output_text.delta", **self._where(),
                              content_index=0, delta=text, logprobs=[])

    def _close(self, status: str):
        """The open item's done events; it joins the output."""
        if self.open is None:
            return
        kind, item_id, text = self.open
        if kind == "reasoning":
            item = reasoning_item(item_id, text)
            yield self._event("response.reasoning_text.done", **self._where(),
                              content_index=0, text=text)
        else:
            item = message_item(item_id, text, status)
            yield self._event("response.output_text.done", **self._where(),
                              content_index=0, text=text, logprobs=[])
        yield self._event("response.content_part.done", **self._where(), content_index=0,
                          part=item["content"][0])
        yield self._event("response.output_item.done", output_index=len(self.output),
                          item=item)
        self.output.append(item)
        self.open = None

    def _call(self, call: dict):
        """A whole tool call (the chat route sends each one complete) as its item."""
        yield from self._close("completed")
        item = call_item(call, self.names)
        where = {"item_id": item["id"], "output_index": len(self.output)}
        yield self._event("response.output_item.added", output_index=len(self.output),
                          item={**item, "arguments": "", "status": "in_progress"})
        yield self._event("response.function_call_arguments.delta", **where,
                          delta=item["arguments"])
        yield self._event("response.function_call_arguments.done", **where,
                          name=item["name"], arguments=item["arguments"])
        yield self._event("response.output_item.done", output_index=len(self.output),
                          item=item)
        self.output.append(item)

