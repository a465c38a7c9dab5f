"""A review of the Responses and Messages APIs: request bodies a fuzzer (hypothesis,
each field of a valid request swapped for junk) found answered with a 500 and a
traceback instead of a clear 400.
"""
import pytest

from tests.e2e.conftest import post_json, wait_for
from tests.e2e.test_api_llama import _send_completion, _slots
from tests.e2e.test_api_responses import parrot  # noqa: F401 - the fixture

# A content part or block whose `type` is a list or an object: it was looked up in the
# dict of media types (images, files), and an unhashable key raised TypeError (a 500).
BAD_TYPES = [[], {}, [None]]


@pytest.mark.parametrize("bad", BAD_TYPES)
@pytest.mark.parametrize("path, body", [
    ("/v1/responses", lambda t: {"input": [{"role": "user", "content": [{"type": t}]}]}),
    ("/v1/responses", lambda t: {"input": [
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": [{"type": t}]}]}),
    ("/v1/messages", lambda t: {"max_tokens": 5, "messages": [
        {"role": "user", "content": [{"type": t, "text": "Hi"}]}]}),
    ("/v1/messages", lambda t: {"max_tokens": 5, "messages": [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f",
                                           "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                      "content": [{"type": t}]}]}]}),
    ("/v1/chat/completions", lambda t: {"messages": [
        {"role": "user", "content": [{"type": t, "text": "Hi"}]}]}),
])
def test_a_part_whose_type_is_not_a_string_is_a_400(parrot, path, body, bad):  # noqa: F811
    status, r = post_json(parrot[0] + path, {"model": "x", **body(bad)})
    assert status == 400, r
    error = r["error"]
    assert error["type"] == "invalid_request_error", r
    assert "content" in error["message"] or "output" in error["message"], r


@pytest.mark.parametrize("path, body", [
    ("/v1/responses", {"input": "Tell me about cats.", "max_output_tokens": 200}),
    ("/v1/messages", {"messages": [{"role": "user", "content": "Tell me about cats."}],
                      "max_tokens": 200}),
])
def test_a_client_that_hangs_up_mid_stream_stops_the_generation(tiny_server, path, body):
    """The chunks are read in a thread (with_pauses, for the keepalives): a client that
    hangs up mid-stream still cancels the generation, and the worker goes idle. (Passed
    before this review too: a guard for the thread's part.)"""
    url = tiny_server.url
    s = _send_completion(url, {**body, "stream": True, "temperature": 1.0, "seed": 3,
                               "ignore_eos": True, "cache_prompt": False}, path=path)
    got = b""
    while got.count(b"delta") < 3:  # the headers, then a few of the reply's deltas
        chunk = s.recv(4096)
        assert chunk, "the server closed the stream early"
        got += chunk
    s.close()
    wait_for(lambda: not _slots(url)["is_processing"], 30, "the generation went on")
    short = {"max_output_tokens": 2} if path == "/v1/responses" else {"max_tokens": 2}
    status, r = post_json(url + path, {**body, **short})  # and the next one is served
    assert status == 200, r
    assert "Traceback" not in tiny_server.output()


@pytest.mark.parametrize("n", [0, 2**31, 10**30, True, 1.0])
def test_max_output_tokens_out_of_range_is_named_as_sent(parrot, n):  # noqa: F811
    """A max_output_tokens past the chat route's bound was refused as "'max_tokens' must
    be between ...": a field the client never sent."""
    status, r = post_json(parrot[0] + "/v1/responses", {"input": "hi", "max_output_tokens": n})
    assert status == 400 and "'max_output_tokens'" in r["error"]["message"], r
    assert "'max_tokens'" not in r["error"]["message"], r
