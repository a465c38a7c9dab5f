"""llama-server's own API over raw HTTP: /completion, /tokenize, /detokenize,
/apply-template, /infill, /props, /health, /slots, the prompt cache and cancellation.

Expected texts come from our Model's greedy generation in this process; expected
probabilities from a softmax of Model.logits. A few in-process tests at the end drive
the WSGI app with a fake model, for the /infill path the tiny models cannot take.
"""
import io
import json
import math
import os
import socket
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import (TINY as TINY_PATH, continued_text, greedy_reference, http_request,
                                post_json, sse_events)




def ids_of(model, text):
    return model.tokenize(text, add_special=True, parse_special=True)


PROMPT = "In a hole in the ground there lived"


def test_completion_string_and_token_prompts(tiny_server, tiny_model):
    ids = ids_of(tiny_model, PROMPT)
    ref, ref_text = greedy_reference(tiny_model, ids, 12, continuation=True)
    status, r = post_json(tiny_server.url + "/completion",
                          {"prompt": PROMPT, "n_predict": 12, "temperature": 0})
    assert status == 200
    assert r["content"] == ref_text
    assert r["tokens"] == ref
    assert r["tokens_evaluated"] == len(ids)
    assert r["tokens_predicted"] == len(ref) + r["stopped_eos"]
    assert r["stop"] is True and r["stopped_limit"] == (len(ref) == 12)
    t = r["timings"]
    assert t["predicted_n"] == r["tokens_predicted"] and t["predicted_ms"] > 0
    assert t["predicted_per_second"] == pytest.approx(1e3 * t["predicted_n"] / t["predicted_ms"], rel=0.01)
    status, r2 = post_json(tiny_server.url + "/completion",
                           {"prompt": ids, "n_predict": 12, "temperature": 0})
    assert status == 200 and r2["content"] == r["content"]


def test_completion_stream(tiny_server, tiny_model):
    body = {"prompt": PROMPT, "n_predict": 8, "temperature": 0}
    _, full = post_json(tiny_server.url + "/completion", body)
    status, headers, data = http_request("POST", tiny_server.url + "/completion", {**body, "stream": True})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    evs = sse_events(data)
    assert all(not e["stop"] for e in evs[:-1]) and evs[-1]["stop"] is True
    assert "".join(e["content"] for e in evs) == full["content"]
    assert evs[-1]["tokens_predicted"] == full["tokens_predicted"]


def test_n_probs_match_model_logits(tiny_server, tiny_model):
    ids = ids_of(tiny_model, PROMPT)
    status, r = post_json(tiny_server.url + "/completion",
                          {"prompt": PROMPT, "n_predict": 3, "temperature": 0, "n_probs": 5,
                           "cache_prompt": False})
    assert status == 200
    probs = r["completion_probabilities"]
    assert len(probs) == len(r["tokens"]) and len(probs) >= 1
    for p in probs:
        lps = [t["logprob"] for t in p["top_logprobs"]]
        assert len(lps) == 5 and lps == sorted(lps, reverse=True)
        assert p["id"] == p["top_logprobs"][0]["id"]        # greedy takes the best
        assert p["logprob"] == pytest.approx(lps[0])
    # The first distribution is the softmax of the model's last-position logits.
    logits = tiny_model.logits(ids)[-1].astype(np.float64)
    ref = np.exp(logits - logits.max())
    ref /= ref.sum()
    top = np.argsort(-ref)[:5]
    first = probs[0]["top_logprobs"]
    assert [t["id"] for t in first][:2] == list(top[:2])
    for t in first:
        assert math.exp(t["logprob"]) == pytest.approx(ref[t["id"]], abs=1e-4)


def test_stop_string_from_real_output(tiny_server, tiny_model):
    body = {"prompt": PROMPT, "n_predict": 24, "temperature": 0}
    _, r = post_json(tiny_server.url + "/completion", body)
    text = r["content"]
    # A stop string taken from the middle of the actual greedy output, so it must trigger.
    stop = next((text[i:i + 3] for i in range(3, len(text) - 3)
                 if text[i:i + 3].strip() and "\ufffd" not in text[i:i + 3]), None)
    if stop is None:
        pytest.skip(f"the greedy output has no usable 3-char substring: {text!r}")
    cut = text.index(stop)
    status, r2 = post_json(tiny_server.url + "/completion", {**body, "stop": [stop, "\x00never"]})
    assert status == 200
    assert r2["content"] == text[:cut]
    assert r2["stopped_word"] is True and r2["stopping_word"] == stop
    # streamed: no piece of the stop string may have been sent
    _, _, data = http_request("POST", tiny_server.url + "/completion", {**body, "stop": stop, "stream": True})
    evs = sse_events(data)
    assert "".join(e["content"] for e in evs) == text[:cut]
    assert evs[-1]["stopping_word"] == stop


def greedy_without_eog(model, ids, n):
    """The greedy continuation when no end-of-generation token may be chosen."""
    out = []
    for _ in range(n):
        logits = model.logits(ids + out)[-1].astype(np.float64)
        logits[list(model.eog_ids)] = -np.inf
        out.append(int(np.argmax(logits)))
    return out


def test_ignore_eos_runs_to_n_predict(tiny_server, tiny_model):
    # Greedy "a" ends with an end token after 5 tokens; llama-server's ignore_eos bans the
    # end tokens (a -inf logit bias), so the reply runs to n_predict.
    body = {"prompt": "a", "n_predict": 12, "temperature": 0}
    _, plain = post_json(tiny_server.url + "/completion", body)
    assert plain["stopped_eos"] and plain["tokens_predicted"] < 12, "precondition"
    status, r = post_json(tiny_server.url + "/completion", {**body, "ignore_eos": True})
    assert status == 200, r
    assert r["tokens"] == greedy_without_eog(tiny_model, ids_of(tiny_model, "a"), 12)
    assert r["tokens_predicted"] == 12 and r["stopped_limit"] and not r["stopped_eos"]
    assert r["content"] == continued_text(tiny_model, ids_of(tiny_model, "a"), r["tokens"])
    _, _, data = http_request("POST", tiny_server.url + "/completion",
                              {**body, "ignore_eos": True, "stream": True})
    evs = sse_events(data)
    assert "".join(e["content"] for e in evs) == r["content"] and evs[-1]["stopped_limit"]
    # With other banned tokens, and with llama-server's "no limit": to the context's end.
    status, r = post_json(tiny_server.url + "/completion",
                          {**body, "ignore_eos": True, "n_predict": -1,
                           "logit_bias": [[plain["tokens"][0], False]]})
    assert status == 200 and r["stopped_limit"] and r["stop_type"] == "limit", r
    assert r["tokens_evaluated"] + r["tokens_predicted"] == tiny_model.n_ctx_train  # fills it exactly
    assert not set(r["tokens"]) & (set(tiny_model.eog_ids) | {plain["tokens"][0]})


def test_completion_prompt_lists(tiny_server, tiny_model):
    """llama-server's prompt shapes: a list of strings or of lists is several prompts
    (an array of results: test_api_llama_batch), a list holding a token id is one prompt."""
    url = tiny_server.url + "/completion"
    body = {"n_predict": 4, "temperature": 0}
    _, one = post_json(url, {**body, "prompt": PROMPT})
    for same in ([PROMPT], [ids_of(tiny_model, PROMPT)]):
        status, r = post_json(url, {**body, "prompt": same})
        assert status == 200 and r["tokens"] == one["tokens"], (same, r)
    bos = tiny_model.tokenizer.bos_id
    status, r = post_json(url, {**body, "prompt": [bos, PROMPT[:5], 300, PROMPT[5:]]})
    assert status == 200, r
    assert r["tokens_evaluated"] == (1 + len(tiny_model.tokenize(PROMPT[:5], add_special=False))
                                     + 1 + len(tiny_model.tokenize(PROMPT[5:], add_special=False)))
    for several in (["Hi", "there"], [[bos, 5], [bos, 6]], ["Hi", [bos, 6]]):
        status, r = post_json(url, {**body, "prompt": several})
        assert status == 200 and [res["index"] for res in r] == [0, 1], (several, r)


def test_tokenize_detokenize_round_trip(tiny_server, tiny_model):
    # (no space before a character the 512-token vocab lacks: SPM's byte fallback then
    # spells the space as U+2581, exactly as llama.cpp does)
    text = "world, numbers 12345 and symbols!"
    status, r = post_json(tiny_server.url + "/tokenize", {"content": text})
    assert status == 200
    assert r["tokens"] == tiny_model.tokenize(text, add_special=False, parse_special=True)
    status, r2 = post_json(tiny_server.url + "/tokenize", {"content": text, "add_special": True,
                                                          "with_pieces": True})
    pieces = r2["tokens"]
    assert pieces[0]["id"] == tiny_model.tokenizer.bos_id
    assert [p["id"] for p in pieces[1:]] == r["tokens"]
    assert all(isinstance(p["piece"], (str, list)) for p in pieces)
    status, d = post_json(tiny_server.url + "/detokenize", {"tokens": r["tokens"]})
    assert status == 200
    assert d["content"].lstrip(" ") == text      # SPM may keep the space it prefixed
    # As llama-server: special tokens are spelled out, in pieces and in text.
    bos = tiny_model.tokenizer.bos_id
    bos_text = tiny_model.tokenizer.token_to_piece(bos, special=True).decode()
    assert bos_text and pieces[0]["piece"] == bos_text
    status, d = post_json(tiny_server.url + "/detokenize", {"tokens": [bos] + r["tokens"]})
    assert status == 200 and d["content"].startswith(bos_text)


def test_apply_template(tiny_server, tiny_model):
    msgs = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi there"}]
    status, r = post_json(tiny_server.url + "/apply-template", {"messages": msgs})
    assert status == 200
    assert r["prompt"] == tiny_model.chat_prompt(msgs, add_generation_prompt=True)
    assert "Hi there" in r["prompt"] and "Be kind." in r["prompt"]


def test_apply_template_prefill_and_generation_prompt(tiny_server, tiny_model):
    """llama-server's /apply-template: a last assistant message is continued (rendered
    after the generation prompt, unclosed); add_generation_prompt false leaves it off."""
    user = [{"role": "user", "content": "Hi there"}]
    url = tiny_server.url + "/apply-template"
    status, r = post_json(url, {"messages": user + [{"role": "assistant", "content": "Once upon"}]})
    assert status == 200
    assert r["prompt"] == tiny_model.chat_prompt(user, add_generation_prompt=True) + "Once upon"
    status, r = post_json(url, {"messages": user, "add_generation_prompt": False})
    assert status == 200 and r["prompt"] == tiny_model.chat_prompt(user, add_generation_prompt=False)
    assert r["prompt"] != tiny_model.chat_prompt(user)
    # A prefill always follows the generation prompt, as in llama-server.
    status, r = post_json(url, {"messages": user + [{"role": "assistant", "content": "x"}],
                                "add_generation_prompt": False})
    assert status == 200 and r["prompt"] == tiny_model.chat_prompt(user) + "x"
    # An assistant message alone is a past turn to answer: there is nothing to continue.
    alone = [{"role": "assistant", "content": "Hello"}]
    status, r = post_json(url, {"messages": alone})
    assert status == 200 and r["prompt"] == tiny_model.chat_prompt(alone, add_generation_prompt=True)
    two = user + [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]
    status, r = post_json(url, {"messages": two})
    assert status == 400 and "2 or more assistant messages" in r["error"]["message"]
    assert "'messages'" in r["error"]["message"]


def test_developer_messages_are_system_messages(server_factory, tiny_model):
    # OpenAI's newer name for the system role; chat templates only know "system", and the
    # server's default system prompt must give way to it as to a system message.
    h = server_factory(TINY_PATH, "--system", "You are a pirate.")
    msgs = [{"role": "developer", "content": "Answer in French."}, {"role": "user", "content": "Hi"}]
    status, r = post_json(h.url + "/apply-template", {"messages": msgs})
    assert status == 200
    assert r["prompt"] == tiny_model.chat_prompt([{**msgs[0], "role": "system"}, msgs[1]])
    assert "Answer in French." in r["prompt"] and "pirate" not in r["prompt"]


def test_system_text_reaches_a_template_without_a_system_role(server_factory):
    """Gemma 2's template refuses a system message: with --system, or a system prompt set
    on the page, every request was a 400 "System role not supported". Its text now opens
    the first user turn, as llama.cpp's server does."""
    from tests.conftest import FIXTURES
    gemma2 = FIXTURES / "templates" / "google-gemma-2-2b-it.jinja"
    h = server_factory(FIXTURES / "models" / "tiny-gemma2-q8_0.gguf",
                       "--chat-template", str(gemma2), "--system", "Be brief.")
    status, r = post_json(h.url + "/apply-template", {"messages": [{"role": "user", "content": "Hi"}]})
    assert status == 200, r
    assert "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n" in r["prompt"]
    status, r = post_json(h.url + "/v1/chat/completions", {"max_tokens": 2, "messages": [
        {"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi"}]})
    assert status == 200 and r["usage"]["completion_tokens"] >= 1, r


def test_tool_call_arguments_reach_the_template_as_an_object(server_factory, tiny_model, tmp_path):
    # OpenAI clients send a tool call's arguments as a JSON string; templates print them
    # with `| tojson` (Qwen 2.5 asks for an object there) or walk them with `| items`
    # (Llama 3.1). Expected: the template rendered with the arguments as an object, which
    # is what transformers' apply_chat_template is given (test_chat_template checks our
    # renderer against its renderings).
    from tests.conftest import FIXTURES
    args = '{"city": "Paris", "days": 2}'
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]

    def msgs(arguments):
        call = {"id": "c1", "type": "function",
                "function": {"name": "get_weather", "arguments": arguments}}
        return [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]

    def rendered(source, messages, tools=None):
        saved, tiny_model.chat_template = tiny_model.chat_template, source
        try:
            return tiny_model.chat_prompt(messages, tools=tools)
        finally:
            tiny_model.chat_template = saved

    for name, shown in (("Qwen-Qwen2.5-7B-Instruct", '"arguments": {"city": "Paris", "days": 2}'),
                        ("meta-llama-Llama-3.1-8B-Instruct", '"parameters": {"city": "Paris", "days": 2}')):
        path = FIXTURES / "templates" / f"{name}.jinja"
        h = server_factory(TINY_PATH, "--chat-template", path)
        status, r = post_json(h.url + "/apply-template", {"messages": msgs(args), "tools": tools})
        assert status == 200, r
        assert r["prompt"] == rendered(path.read_text(), msgs(json.loads(args)), tools)
        assert shown in r["prompt"], r["prompt"]
    # A template that prints the arguments as they are gets the client's own text, and
    # arguments that are not a JSON object pass through untouched.
    raw = tmp_path / "raw-arguments.jinja"
    raw.write_text("{% for m in messages %}{% for c in m.tool_calls or [] %}"
                   "[{{ c.function.arguments }}]{% endfor %}{% endfor %}")
    h = server_factory(TINY_PATH, "--chat-template", raw)
    for a in (args, "not json", "[1, 2]", '{"a": {"b": [1, "x"]}}'):
        status, r = post_json(h.url + "/apply-template", {"messages": msgs(a)})
        assert status == 200 and r["prompt"] == f"[{a}]", (a, r)


def test_a_template_file_without_tags_is_a_template(server_factory, tmp_path):
    """The server took template text without "{{" or "{%" for a path to read, and failed
    to load with "cannot read the chat template file <the text>"."""
    plain = tmp_path / "plain.jinja"
    plain.write_text("You are chatting.\n")
    h = server_factory(TINY_PATH, "--chat-template", plain)
    status, r = post_json(h.url + "/apply-template", {"messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and r["prompt"] == "You are chatting.", r  # (Jinja drops the final newline)


def test_infill_without_fim_tokens_is_a_clear_400(tiny_server):
    status, r = post_json(tiny_server.url + "/infill", {"input_prefix": "def f(", "input_suffix": "):"})
    assert status == 400
    assert "fill in the middle" in r["error"]["message"]


def test_props_and_health(tiny_server, tiny_model):
    status, _, data = http_request("GET", tiny_server.url + "/props")
    p = json.loads(data)
    assert status == 200
    assert p["n_ctx"] == tiny_model.n_ctx_train == 256     # --ctx 4096 capped at training
    assert p["total_slots"] == 1 and p["model_name"] == tiny_model.name
    assert "<|im_start|>" in p["chat_template"]             # the ChatML fallback
    assert p["default_generation_settings"]["n_ctx"] == 256
    assert p["max_body_bytes"] == 1 << 20  # the page's size check before sending
    status, _, data = http_request("GET", tiny_server.url + "/health")
    h = json.loads(data)
    assert status == 200 and h["status"] == "ok"
    # Beyond llama-server's {"status": "ok"}: whether the page may offer Quit (not with
    # --no-browser), and which model and options this is (see running_instance).
    assert h["can_quit"] is False and len(h["instance"]) == 16 and len(h) == 3


def test_prompt_cache_prefills_only_new_tokens(tiny_server):
    rng = np.random.default_rng(7)
    base = [1] + [int(x) for x in rng.integers(3, 500, 180)]
    url = tiny_server.url + "/completion"
    _, r1 = post_json(url, {"prompt": base, "n_predict": 0, "cache_prompt": False})
    extra = [int(x) for x in rng.integers(3, 500, 4)]
    _, r2 = post_json(url, {"prompt": base + extra, "n_predict": 0})
    t1, t2 = r1["timings"], r2["timings"]
    assert t1["prompt_n"] == len(base) and t1["cache_n"] == 0
    # The second turn's time to first token counts only the new tokens: that is what it
    # evaluated (its prompt_ms is printed, not asserted: timings are the benchmark's job).
    assert t2["cache_n"] == len(base) and t2["prompt_n"] == len(extra)
    print(f"\nprefill: {t1['prompt_ms']:.1f} ms for {len(base)} tokens, then "
          f"{t2['prompt_ms']:.1f} ms for {len(extra)} new ones")
    # cached or not, the continuation is the same
    _, a = post_json(url, {"prompt": base + extra, "n_predict": 6, "temperature": 0})
    _, b = post_json(url, {"prompt": base + extra, "n_predict": 6, "temperature": 0,
                           "cache_prompt": False})
    assert a["timings"]["cache_n"] > 0 and a["content"] == b["content"]


def _send_completion(url, req, path="/completion") -> socket.socket:
    """POST /completion (or `path`) on a raw socket, so that a test can hang up whenever
    it likes."""
    u = urllib.parse.urlsplit(url)
    body = json.dumps(req).encode()
    s = socket.create_connection((u.hostname, u.port), timeout=30)
    s.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              b"Content-Type: application/json\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    return s


def _slots(url):
    status, _, data = http_request("GET", url + "/slots")
    assert status == 200
    return json.loads(data)[0]


def test_cancel_on_disconnect_frees_the_worker(tiny_server):
    url = tiny_server.url
    prompt = [1, 50, 60, 70]
    s = _send_completion(url, {"prompt": prompt, "n_predict": 240, "temperature": 1.0, "seed": 3,
                                "stream": True, "cache_prompt": False})
    got = b""
    while got.count(b"data: ") < 3:         # headers, then two chunks
        chunk = s.recv(4096)
        assert chunk, "the server closed the stream early"
        got += chunk
    s.close()
    t_close = time.monotonic()
    deadline = t_close + 10
    while _slots(url)["is_processing"] and time.monotonic() < deadline:
        time.sleep(0.01)
    slot = _slots(url)
    assert not slot["is_processing"]
    # it stopped within a few tokens of the disconnect, far from the 240 asked for
    assert slot["n_past"] <= len(prompt) + 30, slot
    t0 = time.monotonic()
    status, r = post_json(url + "/completion", {"prompt": "Hi", "n_predict": 4, "temperature": 0})
    assert status == 200 and r["tokens_predicted"] >= 1
    assert time.monotonic() - t0 < 5


def test_cancel_when_a_non_streamed_client_hangs_up(tiny_server):
    """Without a stream there is nothing to write to: the server must notice the hang-up."""
    url = tiny_server.url
    req = {"prompt": [1, 50, 60, 70], "n_predict": 240, "temperature": 1.0, "seed": 8,
           "cache_prompt": False}
    # Left alone, this request runs to its limit (no end token within 240 tokens).
    _, full = post_json(url + "/completion", req)
    assert full["tokens_predicted"] == 240 and full["stopped_limit"]
    s = _send_completion(url, req)
    deadline = time.monotonic() + 10
    while not _slots(url)["is_processing"] and time.monotonic() < deadline:
        time.sleep(0.002)
    s.close()
    while _slots(url)["is_processing"] and time.monotonic() < deadline:
        time.sleep(0.01)
    slot = _slots(url)
    assert not slot["is_processing"]
    assert slot["n_past"] < len(req["prompt"]) + 240, slot  # it stopped before its limit
    assert "Traceback" not in tiny_server.output()


def test_a_stream_whose_client_leaves_before_its_first_token_never_runs(tiny_server):
    """A streamed request writes nothing until its first token, so the server must watch
    the connection meanwhile: here while it waits behind other requests (the same check
    covers a long prefill)."""
    url = tiny_server.url
    ahead = {"prompt": [1, 50, 60, 70], "n_predict": 240, "temperature": 1.0, "seed": 8,
             "cache_prompt": False}  # runs to its limit (see the test above)
    results = []
    threads = [threading.Thread(target=lambda: results.append(post_json(url + "/completion", ahead)))
               for _ in range(3)]  # a second or so of work on the worker
    for th in threads:
        th.start()
    deadline = time.monotonic() + 10
    while not _slots(url)["is_processing"] and time.monotonic() < deadline:
        time.sleep(0.002)
    s = _send_completion(url, {"prompt": [1, 9, 9, 9, 9, 9, 9], "n_predict": 5, "stream": True,
                               "cache_prompt": False})
    s.close()  # the request is in the server's socket buffer, followed by the hang-up
    for th in threads:
        th.join(60)
    assert [(st, r["tokens_predicted"]) for st, r in results] == [(200, 240)] * 3
    while _slots(url)["is_processing"] and time.monotonic() < deadline + 60:
        time.sleep(0.01)
    # Had the stream run, the session would hold its 7 prompt tokens and its 5 new ones.
    assert _slots(url)["n_past"] >= 240, _slots(url)
    assert "Traceback" not in tiny_server.output()


def test_health_answers_while_generating(tiny_server):
    url = tiny_server.url
    result = {}

    def long_request():
        result["r"] = post_json(url + "/completion", {"prompt": [1, 9, 8, 7], "n_predict": 200,
                                                      "temperature": 1.0, "seed": 1,
                                                      "cache_prompt": False})
    th = threading.Thread(target=long_request)
    th.start()
    seen_busy, worst_s = False, 0.0
    while th.is_alive():
        t0 = time.monotonic()
        status, _, _ = http_request("GET", url + "/health", timeout=5)
        worst_s = max(worst_s, time.monotonic() - t0)
        assert status == 200
        seen_busy = seen_busy or _slots(url)["is_processing"]
        time.sleep(0.01)
    th.join()
    assert result["r"][0] == 200
    assert seen_busy, "the generation finished before /health could be asked"
    assert worst_s < 1.0


# ---- in-process: the WSGI app with a fake model (the /infill success path) ----------------

def _wsgi_call(app, method, path, body=None, headers=None, environ=None):
    """(status, JSON body); with `headers` (a dict), the response's headers are put in it.
    environ: more of the request (HTTP_HOST, HTTP_ORIGIN, ...)."""
    from wsgiref.util import setup_testing_defaults
    raw = b"" if body is None else json.dumps(body).encode()
    env = {"REQUEST_METHOD": method, "PATH_INFO": path, "wsgi.input": io.BytesIO(raw),
           "CONTENT_LENGTH": str(len(raw)), "CONTENT_TYPE": "application/json", **(environ or {})}
    setup_testing_defaults(env)
    out = {}

    def start_response(status, hdrs, exc_info=None):
        out["status"] = int(status.split()[0])
        if headers is not None:
            headers.update(hdrs)
    data = b"".join(app(env, start_response))
    return out["status"], json.loads(data)


def test_infill_builds_the_fim_prompt_in_process():
    from runtime import server
    from runtime.engine import Engine
    from tests.runtime.test_engine import FakeModel

    class FimModel(FakeModel):
        name, arch, n_ctx_train, chat_template = "fake", "fake", 64, "x"
        seen = None

        def fim_prompt(self, prefix, suffix, **kw):
            FimModel.seen = (prefix, suffix, kw)
            return [0, 1] + self.tokenize(kw["prompt"])  # 'a' 'b' prompt: greedy walks on

        def tokenize(self, text, add_special=True, parse_special=False):
            return [ord(c) - 97 for c in text]

    model = FimModel()
    st = server.State(model_path="fake.gguf", n_ctx=64, model=model, model_id="fake")
    st.engine = Engine(model, 64)
    app = server.wrap_app(server.build_app(st), st)
    status, r = _wsgi_call(app, "POST", "/infill", {"input_prefix": "P", "input_suffix": "S",
                                                    "n_predict": 3, "temperature": 0})
    assert status == 200, r
    assert FimModel.seen == ("P", "S", {"extra": [], "prompt": "", "n_ctx": 64, "n_predict": 3})
    assert r["content"] == "cde" and r["tokens_evaluated"] == 2
    # The prompt and the other files' chunks go to the tokenizer's layout (tested in
    # tests/runtime/test_tokenizer.py); a chunk without a filename is "tmp", as in llama-server.
    status, r = _wsgi_call(app, "POST", "/infill", {
        "input_prefix": "P", "input_suffix": "S", "prompt": "x", "temperature": 0,
        "input_extra": [{"filename": "a.py", "text": "A"}, {"text": "B"}]})
    assert status == 200, r
    assert FimModel.seen[2] == {"extra": [("a.py", "A"), ("tmp", "B")], "prompt": "x",
                                "n_ctx": 64, "n_predict": -1}
    assert r["content"] == "yz" and r["stopped_eos"] is True
    for bad, message in (("x", "must be a list"), (["x"], "input_extra[0]"),
                         ([{"filename": "a"}], "string 'text'"),
                         ([{"text": "t"}, {"text": "t", "filename": 3}], "input_extra[1].filename")):
        status, r = _wsgi_call(app, "POST", "/infill", {"input_prefix": "P", "input_extra": bad})
        assert status == 400 and message in r["error"]["message"], r
    # /completion's fields work here too: ignore_eos bans the end token (after "z" the
    # runner-up is "g", see FakeModel), and fields we cannot honour are refused.
    status, r = _wsgi_call(app, "POST", "/infill", {"input_prefix": "P", "prompt": "x",
                                                    "temperature": 0, "n_predict": 4,
                                                    "ignore_eos": True})
    assert status == 200 and r["content"] == "yzgh" and r["stopped_limit"], r
    for field, value in (("grammar", 'root ::= "a"'), ("dry_penalty_last_n", -2),
                         ("dry_sequence_breakers", [])):
        status, r = _wsgi_call(app, "POST", "/infill", {"input_prefix": "P", field: value})
        assert status == 400 and f"'{field}'" in r["error"]["message"], r


def _fake_state(**kw):
    from runtime import server
    st = server.State(model_path="fake.gguf", n_ctx=64, model_id="fake", **kw)
    return st, server.wrap_app(server.build_app(st), st)


def test_loading_state_in_process():
    st, app = _fake_state()
    st.progress = 0.42
    hdrs = {}
    status, r = _wsgi_call(app, "GET", "/health", headers=hdrs)
    assert status == 503 and r["status"] == "loading" and r["progress"] == 0.42
    assert hdrs.get("Retry-After") == "1"
    hdrs = {}
    status, r = _wsgi_call(app, "POST", "/completion", {"prompt": "x"}, headers=hdrs)
    assert status == 503 and r["error"]["type"] == "unavailable_error"
    assert "loading" in r["error"]["message"]
    assert hdrs.get("Retry-After") == "1"  # a client may try again (the OpenAI client does)
    st.error = "not a GGUF file"
    for path in ("/health", "/v1/models"):  # no Retry-After: trying again cannot help
        hdrs = {}
        status, r = _wsgi_call(app, "GET", path, headers=hdrs)
        assert status == 503 and "not a GGUF file" in json.dumps(r) and "Retry-After" not in hdrs
    assert r["error"]["message"] == "the model failed to load: not a GGUF file"


def test_quit_wants_the_api_key():
    st, app = _fake_state(api_key="k")
    calls = []
    st.quit = lambda: calls.append(1)
    status, _ = _wsgi_call(app, "POST", "/quit", {})
    assert status == 401 and not calls
    # Any other site's page could stop it with a text/plain POST if --cors let it.
    for cors in (False, True):
        st.cors = cors
        status, _ = _wsgi_call(app, "POST", "/quit", {}, environ={
            "HTTP_AUTHORIZATION": "Bearer k", "HTTP_ORIGIN": "http://evil.example"})
        assert status == 403 and not calls
    status, r = _wsgi_call(app, "POST", "/quit", {}, environ={"HTTP_AUTHORIZATION": "Bearer k"})
    assert status == 200 and r == {"stopping": True} and calls == [1]


def test_cors_only_when_enabled():
    from wsgiref.util import setup_testing_defaults
    for cors in (False, True):
        st, app = _fake_state(cors=cors)
        for method in ("GET", "OPTIONS"):
            env = {"REQUEST_METHOD": method, "PATH_INFO": "/health" if method == "GET" else "/completion",
                   "wsgi.input": io.BytesIO(b"")}
            setup_testing_defaults(env)
            seen = {}

            def start_response(status, headers, exc_info=None):
                seen["status"] = int(status.split()[0])
                seen["headers"] = {k.lower(): v for k, v in headers}
            b"".join(app(env, start_response))
            assert ("access-control-allow-origin" in seen["headers"]) == cors
            if method == "OPTIONS":
                assert seen["status"] == (204 if cors else 405)


def test_busy_port_moves_to_the_next_free_one():
    from runtime import connections
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        srv, port = connections.bind("127.0.0.1", busy)
        srv.server_close()
        assert connections.why_not("127.0.0.1", busy) == "busy"
    assert port != busy and busy < port <= busy + connections.PORT_TRIES


def test_a_port_reserved_for_administrators_is_not_called_busy():
    """`--port 1010` without the right to it said "port 1010 is busy; using 1024"."""
    import shutil
    import subprocess
    import sys
    from tests.e2e.conftest import ROOT
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is needed to drop the right to low ports")
    start = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
    if start.exists() and int(start.read_text()) <= 1010:
        pytest.skip("this kernel lets anyone bind port 1010")
    code = "from runtime import connections; print(connections.why_not('127.0.0.1', 1010))"
    r = subprocess.run(["setpriv", "--bounding-set=-net_bind_service",
                        "--inh-caps=-net_bind_service", sys.executable, "-c", code],
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "reserved for administrators", r.stdout + r.stderr


def test_a_burst_of_connections_waits_for_a_busy_accept_loop():
    """While a reply generates, the accept loop can fall behind a burst of clients. With
    socketserver's backlog of 5 the kernel dropped the rest (clients saw resets or
    time-outs); each must instead wait its turn. Here nothing accepts at all."""
    from runtime import connections
    srv, port = connections.bind("127.0.0.1", 0)
    clients = []
    try:
        for _ in range(40):
            c = socket.create_connection(("127.0.0.1", port), timeout=2)
            clients.append(c)
    finally:
        for c in clients:
            c.close()
        srv.server_close()
    assert len(clients) == 40


def test_no_free_port_or_an_impossible_one_is_a_clear_error():
    from runtime import connections
    with socket.socket() as s:  # the last port: nothing above it to try
        s.bind(("127.0.0.1", 65535))
        s.listen()
        with pytest.raises(OSError, match=r"cannot listen on 127.0.0.1 ports 65535\.\.65535"):
            connections.bind("127.0.0.1", 65535)
    for port in (65536, 99999, -1):
        with pytest.raises(OSError, match="is not between 0 and 65535"):
            connections.bind("127.0.0.1", port)


def test_an_ipv6_address_is_served(server_factory):
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError as e:
        pytest.skip(f"this machine has no IPv6 loopback: {e}")
    h = server_factory(TINY_PATH, "--host", "::1")
    assert h.url.startswith("http://[::1]:")
    status, r = post_json(h.url + "/completion", {"prompt": "Hi", "n_predict": 2})
    assert status == 200 and r["tokens_predicted"] >= 1


def test_listening_beyond_this_machine_is_said_and_warned(server_factory):
    """--host 0.0.0.0 printed only "listening on http://127.0.0.1:PORT/", as if nothing
    had changed: the log now says other machines can reach the server, and warns that
    without --api-key they can use it too. On the loopback nothing is added."""
    h = server_factory(TINY_PATH, "--host", "0.0.0.0")
    assert h.url.startswith("http://127.0.0.1:")  # where this machine's browser goes
    assert (f"warning: listening on every network interface (port {h.port}): other "
            "machines can reach this server, and use it: no --api-key was given") in h.output()
    keyed = server_factory(TINY_PATH, "--host", "0.0.0.0", "--api-key", "k")
    assert "other machines can reach this server\n" in keyed.output()
    assert "no --api-key" not in keyed.output()
    local = server_factory(TINY_PATH)
    assert "warning" not in local.output()


def test_starting_the_same_chat_again_opens_the_running_one(server_factory):
    """A second double-click on a bundle loaded a second copy of the model (2 GB for
    Qwen) on the next port, with a page that had none of the chats. Started again with
    the same model and options, it now points the browser at the running one and exits.
    Other options, or --no-browser (a script wanting its own server), still start anew."""
    import subprocess
    import sys
    from tests.e2e.conftest import ROOT
    first = server_factory(TINY_PATH, "--system", "Be brief.")
    port = urllib.parse.urlsplit(first.url).port
    env = dict(os.environ, PYTHONPATH=str(ROOT), DISPLAY="", WAYLAND_DISPLAY="")  # no browser

    def again(*args):
        return subprocess.run([sys.executable, "-m", "runtime.cli", "run", str(TINY_PATH),
                               "--port", str(port), *args], cwd=ROOT, env=env, timeout=60,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True)
    r = again("--system", "Be brief.")
    assert r.returncode == 0, r.stderr
    assert f"already running at http://127.0.0.1:{port}/" in r.stdout, r.stdout
    assert "listening" not in r.stdout
    for args in (["--system", "Be long."], ["--system", "Be brief.", "--no-browser"]):
        other = server_factory(TINY_PATH, *args[:2], "--port", str(port), *args[2:],
                               wait_healthy=False)
        assert urllib.parse.urlsplit(other.url).port != port, (args, other.output())
        other.stop()
    # Found on a later port too, after the one it once found busy has become free.
    first.stop()
    later = server_factory(TINY_PATH, "--system", "Be brief.", "--port", str(port + 1))
    r = again("--system", "Be brief.")
    assert f"already running at http://127.0.0.1:{later.port}/" in r.stdout, r.stdout


def test_starting_again_after_a_failed_load_or_a_new_copy_loads_anew(tmp_path):
    """A chat whose model failed to load ("download or copy it again"), started again once
    the file was copied again, was sent back to the old error page; so was a model file
    replaced by a new version at the same path."""
    import subprocess
    import sys
    from tests.e2e.conftest import ROOT, start_server
    model = tmp_path / "model.gguf"
    good = TINY_PATH.read_bytes()
    model.write_bytes(good[:len(good) // 2])  # a cut-off download
    broken = start_server(model, browser=True, wait_healthy=False)
    try:
        deadline = time.monotonic() + 60
        while "failed to load" not in broken.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert broken.proc.poll() is None, broken.output()  # (kept up for the page)
        model.write_bytes(good)
        env = dict(os.environ, PYTHONPATH=str(ROOT), DISPLAY="", WAYLAND_DISPLAY="")
        proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "run", str(model), "--port",
                                 str(broken.port)], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            out = ""
            for line in proc.stdout:
                out += line
                if "loaded" in line or "already running" in line:
                    break
            assert "already running" not in out and "model tiny-llama loaded" in out, out
        finally:
            proc.kill()
            proc.wait()
    finally:
        broken.stop()


def test_unloadable_model_reports_the_error(tmp_path, server_factory):
    """Without a browser (--no-browser, as these servers run) nobody would see the error
    on the page: the server says it and exits with 1, as llama-server does. It used to
    stay up answering 503s, and a script's exit status never showed the failure. (With a
    browser it stays up and the page shows the error: test_loading_state_in_process.)"""
    bad = tmp_path / "not-a-model.gguf"
    bad.write_bytes(b"this is not a GGUF file at all" * 10)
    h = server_factory(bad, wait_healthy=False)
    assert h.proc.wait(60) == 1, h.output()
    time.sleep(0.2)  # the reader thread drains what is left of the output
    assert "chatfile: error: the model failed to load: " in h.output()
    assert "not a GGUF file" in h.output()
    assert "Traceback" not in h.output()


def test_default_system_prompt_and_title(server_factory, tiny_model):
    h = server_factory(TINY_PATH, "--system", "You are a pirate.", "--title", "Pirate chat")
    user = [{"role": "user", "content": "Hi"}]
    _, r = post_json(h.url + "/apply-template", {"messages": user})
    assert r["prompt"] == tiny_model.chat_prompt(
        [{"role": "system", "content": "You are a pirate."}] + user)
    own = [{"role": "system", "content": "Be formal."}] + user
    _, r = post_json(h.url + "/apply-template", {"messages": own})
    assert r["prompt"] == tiny_model.chat_prompt(own)       # the request's own system wins
    _, _, data = http_request("GET", h.url + "/props")
    p = json.loads(data)
    assert p["title"] == "Pirate chat" and p["system_prompt"] == "You are a pirate."


def test_a_bundle_whose_model_fails_to_load_suggests_verify(tmp_path):
    """A damaged GGUF inside a bundle (found at an offset) is most likely a bad copy: the
    error says how to check, as `--verify` is the tool for it."""
    from runtime import server
    data = TINY_PATH.read_bytes()
    bundle = tmp_path / "bundle"
    bundle.write_bytes(b"\0" * 4096 + data[:8] + b"\xff" * 8 + data[16:])  # tensor count
    lines = []
    for offset, path in ((4096, bundle), (0, tmp_path / "plain.gguf")):
        if offset == 0:
            path.write_bytes(data[:8] + b"\xff" * 8 + data[16:])
        st = server.State(model_path=str(path), n_ctx=64, model_id="x", log=lines.append)
        server._load(st, path, offset, len(data), None, 64, "auto", lines.append)
        assert st.error and ("--verify" in st.error) == (offset > 0), st.error
