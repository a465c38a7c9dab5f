"""llama.cpp's samplers past top-k, top-p and min-p (typical_p, min_keep, mirostat,
dynatemp_range, top_n_sigma, xtc_probability), through the real server: the `openai`
client's extra_body and llama-server's /completion. How each one chooses tokens is checked
in tests/runtime/test_samplers_more.py; here, that the fields reach the sampler, that a
seed still repeats a reply, and that nonsense values are 400s naming the field.
"""
import json

import pytest

from tests.e2e.conftest import http_request, post_json

openai = pytest.importorskip("openai", reason="the openai client is not installed")

MSGS = [{"role": "user", "content": "Tell me a story about a cat."}]
MAX_TOK = 12
SAMPLERS = [{"typical_p": 0.5}, {"typical_p": 0.9, "min_keep": 5},
            {"min_keep": 4, "top_p": 0.05}, {"mirostat": 1},
            {"mirostat": 2, "mirostat_tau": 3.0, "mirostat_eta": 0.2},
            {"dynatemp_range": 0.5, "dynatemp_exponent": 2.0}, {"top_n_sigma": 1.0},
            {"xtc_probability": 0.7, "xtc_threshold": 0.05}]


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="x", max_retries=0, timeout=60)


def chat(client, **kw):
    return client.chat.completions.create(model="x", messages=MSGS, max_tokens=MAX_TOK, **kw)


@pytest.mark.parametrize("fields", SAMPLERS, ids=[",".join(f) for f in SAMPLERS])
def test_each_sampler_is_taken_and_a_seed_repeats_its_reply(client, tiny_server, fields):
    a = chat(client, temperature=1.0, seed=11, extra_body=fields)
    assert a.choices[0].finish_reason in ("stop", "length")
    assert a.usage.completion_tokens >= 1
    b = chat(client, temperature=1.0, seed=11, extra_body=fields)
    assert b.choices[0].message.content == a.choices[0].message.content
    # llama-server's own route takes them as well
    status, r = post_json(tiny_server.url + "/completion",
                          {"prompt": "Once upon a time", "n_predict": MAX_TOK, "seed": 3,
                           "temperature": 1.0, **fields})
    assert status == 200 and r["tokens_predicted"] >= 1, r


def test_the_fields_reach_the_sampler(client, tiny_server):
    """Two settings that leave the best token alone at every step, whatever the
    temperature and seed: a hot, seeded draw with either must be the greedy reply."""
    greedy = chat(client, temperature=0).choices[0].message.content
    assert greedy
    hot = dict(temperature=1.5, seed=5)
    # top-n-sigma: only tokens within 1e-6 deviations of the best logit
    assert chat(client, **hot, extra_body={"top_n_sigma": 1e-6}).choices[0].message.content == greedy
    # Mirostat 2 with a target surprise of 0 bits: no token is that sure, so the best one
    assert chat(client, **hot, extra_body={"mirostat": 2, "mirostat_tau": 0}
                ).choices[0].message.content == greedy
    # and without them the same hot draw is not greedy (or the checks above prove nothing)
    assert chat(client, **hot).choices[0].message.content != greedy


BAD = [({"typical_p": "x"}, "'typical_p'"), ({"mirostat": 3}, "'mirostat'"),
       ({"mirostat_tau": "5"}, "'mirostat_tau'"), ({"mirostat_eta": [0.5]}, "'mirostat_eta'"),
       ({"xtc_threshold": 2}, "'xtc_threshold'"), ({"xtc_probability": 1.5}, "'xtc_probability'"),
       ({"min_keep": -2}, "'min_keep'"), ({"dynatemp_exponent": "2"}, "'dynatemp_exponent'"),
       ({"top_n_sigma": "1"}, "'top_n_sigma'"), ({"dry_penalty_last_n": -2}, "'dry_penalty_last_n'")]


@pytest.mark.parametrize("fields, named", BAD, ids=[n for _, n in BAD])
def test_out_of_range_values_are_400s_that_name_the_field(client, tiny_server, fields, named):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, extra_body=fields)
    assert named in str(e.value)
    status, r = post_json(tiny_server.url + "/completion", {"prompt": "hi", "n_predict": 2, **fields})
    assert status == 400 and named in r["error"]["message"] and "\n" not in r["error"]["message"], r


def test_props_defaults_sent_back_change_nothing(client, tiny_server):
    """/props lists every sampler's default (llama-server's web UI reads them and sends
    them back with each message): sent back, a seeded hot draw is the one without them."""
    status, _, body = http_request("GET", tiny_server.url + "/props")
    assert status == 200
    defaults = json.loads(body)["default_generation_settings"]["params"]
    for field in ("typical_p", "min_keep", "mirostat", "mirostat_tau", "mirostat_eta",
                  "dynatemp_range", "dynatemp_exponent", "top_n_sigma", "xtc_probability",
                  "xtc_threshold"):
        assert field in defaults, field
    sent = {k: v for k, v in defaults.items() if k not in ("temperature", "n_predict")}
    hot = dict(temperature=1.2, seed=21)
    assert (chat(client, **hot, extra_body=sent).choices[0].message.content
            == chat(client, **hot).choices[0].message.content)
