"""The thirteenth session's review of the HTTP API, as a llama-server/llamafile/Ollama user
pointing existing code at chatfile would use it.

- /v1/completions' text_offset: a token after bytes that make no character (they come
  out as one U+FFFD) had the offset of that U+FFFD instead of its own text's.
- /v1/chat/completions with `top_logprobs` but without `logprobs: true` answered 200 with
  no logprobs at all; OpenAI and llama-server refuse it.
- A body that starts with a UTF-8 byte order mark (a file saved by a Windows editor, sent
  with `curl -d @file`) was a 400 that said "decode using utf-8-sig"; llama-server reads it.
- A number of more than 4,300 digits was a 400 that told the client to call
  sys.set_int_max_str_digits().
"""
from __future__ import annotations

import json

import pytest

from runtime.api import TextOffsets
from tests.e2e.conftest import http_request, post_json
from tests.e2e.test_api_more import _offsets

HI = [{"role": "user", "content": "hi"}]


# ---- /v1/completions: text_offset around characters split over tokens -------------------

# Byte sequences, each byte its own token, and the text_offset of each: a token that goes
# on with an unfinished character has that character's offset; bytes that get no rest
# are one U+FFFD, and the token that shows it begins after it.
SPLIT_CASES = [
    (b"\xe2a", [0, 1]),                       # "\ufffda"
    (b"\xf0\x9f\x98\x80a", [0, 0, 0, 0, 1]),  # "😀a"
    (b"\xe2\x82A", [0, 0, 1]),                # "\ufffdA": one U+FFFD for E2 82
    (b"\xe2\xe2\x82\xac", [0, 1, 1, 1]),      # "\ufffd€"
    (b"\xc3\xc3", [0, 1]),                    # "\ufffd\ufffd"
]


@pytest.mark.parametrize("raw, want", SPLIT_CASES)
def test_text_offset_of_byte_tokens_points_into_the_decoded_text(tiny_model, raw, want):
    tok = tiny_model.tokenizer
    ids = [tok._byte_token(b) for b in raw]
    offsets = TextOffsets(tiny_model, start=0)
    got = [offsets.push(t) for t in ids]
    text = tok.detokenize(ids)
    assert got == want, (raw, got, text)
    assert text == raw.decode("utf-8", "replace")


@pytest.mark.parametrize("prompt", ["hello world, this is", "Once upon a time"])
def test_every_token_after_a_broken_character_points_at_its_own_text(tiny_server, prompt):
    """The tiny random model's greedy replies to these write lead bytes with no rest
    (U+FFFD in the text). Each token's text now stands at its offset, the one right after
    such bytes included (it had the U+FFFD's offset), streamed or not."""
    text, toks, offs = _offsets(tiny_server.url, prompt, stream=False)
    assert _offsets(tiny_server.url, prompt, stream=True) == (text, toks, offs)
    full = prompt + text
    assert "\ufffd" in text, "the reply has no broken character: the test tests nothing"
    assert offs == sorted(offs) and offs[0] == len(prompt) and offs[-1] < len(full), offs
    after_broken = 0
    for i, (tok, off) in enumerate(zip(toks, offs)):
        assert full[off:off + len(tok)] == tok, (i, tok, off, full)
        after_broken += i > 0 and toks[i - 1] == "\ufffd" and tok != "\ufffd"
    assert after_broken, toks


def test_a_character_split_over_byte_tokens_keeps_one_offset(tiny_server):
    """The tiny vocabulary has no 😀 or é: the JSON constraint makes the model spell them
    in byte tokens, which all get their character's offset, streamed or not."""
    schema = {"type": "json_schema", "json_schema": {"name": "e", "schema": {"enum": ["😀é!"]}}}
    text, toks, offs = _offsets(tiny_server.url, "x", stream=False, response_format=schema,
                                max_tokens=12)
    assert _offsets(tiny_server.url, "x", stream=True, response_format=schema,
                    max_tokens=12) == (text, toks, offs)
    assert text.startswith('"😀é!"'), text
    full = "x" + text
    assert offs[:9] == [1, 2, 2, 2, 2, 3, 3, 4, 5], (toks, offs)
    assert [full[o] for o in offs[:9]] == ['"', "😀", "😀", "😀", "😀", "é", "é", "!", '"']


# ---- /v1/chat/completions: top_logprobs without logprobs --------------------------------

def test_top_logprobs_without_logprobs_is_refused(tiny_server):
    url = tiny_server.url + "/v1/chat/completions"
    for lp in ({}, {"logprobs": False}, {"logprobs": None}):
        status, r = post_json(url, {"messages": HI, "max_tokens": 2, "top_logprobs": 3, **lp})
        assert status == 400, (lp, r)
        assert "'top_logprobs'" in r["error"]["message"] and "logprobs" in r["error"]["message"]
    # Asking for no alternatives asks for nothing that would be missing; with logprobs on,
    # the alternatives come.
    status, r = post_json(url, {"messages": HI, "max_tokens": 2, "top_logprobs": 0})
    assert status == 200 and r["choices"][0]["logprobs"] is None, r
    status, r = post_json(url, {"messages": HI, "max_tokens": 2, "top_logprobs": 3,
                                "logprobs": True, "temperature": 0})
    assert status == 200, r
    assert len(r["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 3, r


# ---- the request body ------------------------------------------------------------------

def test_a_body_with_a_byte_order_mark_is_read(tiny_server):
    body = json.dumps({"messages": HI, "max_tokens": 2, "temperature": 0}).encode()
    status, _, plain = http_request("POST", tiny_server.url + "/v1/chat/completions", body)
    assert status == 200, plain
    status, _, data = http_request("POST", tiny_server.url + "/v1/chat/completions",
                                   b"\xef\xbb\xbf" + body)
    assert status == 200, data
    assert (json.loads(data)["choices"][0]["message"]
            == json.loads(plain)["choices"][0]["message"])


def test_a_number_with_too_many_digits_is_said_plainly(tiny_server):
    body = b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + b"9" * 5000 + b"}"
    status, _, data = http_request("POST", tiny_server.url + "/v1/chat/completions", body)
    assert status == 400, data
    message = json.loads(data)["error"]["message"]
    assert "more than 4300 digits" in message and "sys." not in message, message
