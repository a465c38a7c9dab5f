"""OpenAI's Predicted Outputs (`prediction`) through the real server and the openai client.

A prediction drafts greedy speculation: the reply must be the one without it, and usage
must say how many drafted tokens the reply kept (accepted_prediction_tokens) and threw
away (rejected_prediction_tokens). If these fail, a prediction changes a reply, is
ignored where it could speed one up, is counted wrong, or a malformed one is not a 400.
"""
import pytest

from tests.e2e.conftest import greedy_reference, http_request, post_json, sse_events
from tests.e2e.test_api_openai import MSGS, chat_ids, client  # noqa: F401 - a fixture
from tests.e2e.test_api_semantics import bad_request

N_TOK = 24
# The tiny model's replies are mostly byte tokens, whose text does not tokenize back to
# them. Biased to the vocabulary's word-inner "a" and "b", its reply is a string of a's
# and b's (which of the two, the model says), and that text tokenizes back to the reply's
# own tokens after the first (a word's first letter is another token).
AB_BIAS = {"386": 100, "388": 100}


@pytest.fixture(scope="module")
def reference(tiny_model):
    """The greedy chat reply to MSGS (ids, text), without any prediction."""
    return greedy_reference(tiny_model, chat_ids(tiny_model, MSGS), N_TOK)


def _chat(client, prediction, **kw):
    kw = {"temperature": 0, **kw}
    return client.chat.completions.create(model="x", messages=MSGS, max_tokens=N_TOK,
                                          prediction=prediction, **kw)


def _counts(usage):
    d = usage.completion_tokens_details
    assert d is not None, usage
    return d.accepted_prediction_tokens, d.rejected_prediction_tokens


@pytest.fixture(scope="module")
def ab_reply(client):
    text = _chat(client, None, logit_bias=AB_BIAS).choices[0].message.content
    assert len(text) == N_TOK and set(text) == {"a", "b"}, text  # the test's premise
    return text


def test_a_prediction_that_is_the_reply_is_accepted(client, ab_reply):
    r = _chat(client, {"type": "content", "content": ab_reply}, logit_bias=AB_BIAS)
    assert r.choices[0].message.content == ab_reply
    accepted, rejected = _counts(r.usage)
    # The reply is found in the prediction after its first 3 tokens; all the rest can be
    # drafted (at most the reply's tokens after the first, the model's own).
    assert N_TOK - 10 <= accepted <= N_TOK - 1, accepted
    assert rejected >= 0


def test_a_prediction_that_goes_elsewhere_leaves_the_reply_as_it_is(client, ab_reply):
    wrong = ab_reply[:6] + ab_reply[6:].translate(str.maketrans("ab", "ba"))
    r = _chat(client, {"type": "content", "content": wrong}, logit_bias=AB_BIAS)
    assert r.choices[0].message.content == ab_reply
    accepted, rejected = _counts(r.usage)
    assert rejected > 0  # its drafts were tried, and the model refused them


@pytest.mark.parametrize("prediction", [
    {"type": "content", "content": "Once upon a time there was a dog who did not like cats."},
    {"type": "content", "content": ""},
    {"type": "content", "content": []},
])
def test_a_wrong_or_empty_prediction_leaves_the_reply_as_it_is(client, reference, prediction):
    r = _chat(client, prediction)
    assert r.choices[0].message.content == reference[1]
    accepted, rejected = _counts(r.usage)
    assert accepted >= 0 and rejected >= 0
    if not prediction["content"]:
        assert (accepted, rejected) == (0, 0)  # nothing to draft from


def test_text_parts_are_one_prediction(client, ab_reply):
    parts = [{"type": "text", "text": ab_reply[:10]}, {"type": "text", "text": ab_reply[10:]}]
    r = _chat(client, {"type": "content", "content": parts}, logit_bias=AB_BIAS)
    assert r.choices[0].message.content == ab_reply
    assert _counts(r.usage)[0] >= N_TOK - 10


def test_a_sampled_reply_ignores_the_prediction(client, ab_reply):
    kw = dict(temperature=1.0, seed=77, logit_bias=AB_BIAS)
    plain = client.chat.completions.create(model="x", messages=MSGS, max_tokens=N_TOK, **kw)
    r = _chat(client, {"type": "content", "content": ab_reply}, **kw)
    assert r.choices[0].message.content == plain.choices[0].message.content
    assert _counts(r.usage) == (0, 0)  # nothing is drafted for a sampled reply


def test_streamed_usage_counts_the_prediction(tiny_server, ab_reply):
    body = {"messages": MSGS, "max_tokens": N_TOK, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "logit_bias": AB_BIAS,
            "prediction": {"type": "content", "content": ab_reply}}
    status, _, data = http_request("POST", tiny_server.url + "/v1/chat/completions", body)
    assert status == 200
    chunks = [e for e in sse_events(data) if e != "[DONE]"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == ab_reply
    details = chunks[-1]["usage"]["completion_tokens_details"]
    assert details["accepted_prediction_tokens"] >= N_TOK - 10


def test_completions_take_a_prediction_too(client, tiny_server):
    body = {"prompt": "The quick brown fox", "max_tokens": N_TOK, "temperature": 0,
            "logit_bias": AB_BIAS}
    plain = post_json(tiny_server.url + "/v1/completions", body)[1]["choices"][0]["text"]
    status, obj = post_json(tiny_server.url + "/v1/completions", {
        **body, "prediction": {"type": "content", "content": plain}})
    assert status == 200, obj
    assert obj["choices"][0]["text"] == plain
    assert obj["usage"]["completion_tokens_details"]["accepted_prediction_tokens"] >= N_TOK - 10


def test_a_huge_prediction_is_cut_to_what_a_reply_could_repeat(client, ab_reply):
    # 600 KB: a reply fits in the context, so only the prediction's start is tokenized.
    r = _chat(client, {"type": "content", "content": ab_reply + "x y z " * 100_000},
              logit_bias=AB_BIAS)
    assert r.choices[0].message.content == ab_reply
    assert _counts(r.usage)[0] >= N_TOK - 10


@pytest.mark.parametrize("prediction, needle", [
    ("some text", "'prediction' must be an object"),
    ({"content": "some text"}, "'prediction' must be an object"),
    ({"type": "text", "content": "some text"}, "'prediction' must be an object"),
    ({"type": "content"}, "'prediction.content' must be a string or a list"),
    ({"type": "content", "content": 42}, "'prediction.content' must be a string or a list"),
    ({"type": "content", "content": ["a"]}, "'prediction.content' must be a string or a list"),
    ({"type": "content", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
     "'prediction.content' must be a string or a list"),
    ({"type": "content", "content": [{"type": "text", "text": 5}]},
     "'prediction.content' must be a string or a list"),
])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_a_malformed_prediction_is_a_400(tiny_server, path, prediction, needle):
    body = {"max_tokens": 2, "prediction": prediction,
            **({"messages": MSGS} if "chat" in path else {"prompt": "Hi"})}
    bad_request(tiny_server.url, path, body, needle)
