"""DRY and adaptive-p through the real server: the `openai` client's extra_body and
llama-server's /completion. How they choose tokens is checked in
tests/runtime/test_samplers_dry.py; here, that the fields reach the sampler (a seeded
reply changes, and repeats with the same seed), that /props lists their defaults, and
that bad values are 400s naming the field.
"""
import json

import pytest

from tests.e2e.conftest import http_request, post_json

openai = pytest.importorskip("openai", reason="the openai client is not installed")

# A prompt that repeats itself: continuing the pattern is what DRY pushes down.
LOOP = "one two three four. " * 12 + "one two"
DRY = {"dry_multiplier": 3.0, "dry_base": 2.0, "dry_allowed_length": 1}


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="x", max_retries=0, timeout=60)


def complete(client, **kw):
    return client.completions.create(model="x", prompt=LOOP, max_tokens=16, **kw).choices[0].text


def test_dry_changes_a_seeded_reply_and_the_seed_still_repeats_it(client, tiny_server):
    plain = complete(client, temperature=0)
    with_dry = complete(client, temperature=0, extra_body=DRY)
    assert with_dry != plain
    assert complete(client, temperature=0, extra_body=DRY) == with_dry
    hot = dict(temperature=1.0, seed=17)
    a = complete(client, **hot, extra_body={**DRY, "dry_sequence_breakers": ["."]})
    assert a == complete(client, **hot, extra_body={**DRY, "dry_sequence_breakers": ["."]})
    # llama-server's own route takes them as well, and DRY off is the plain reply
    body = {"prompt": LOOP, "n_predict": 16, "temperature": 0}
    status, r = post_json(tiny_server.url + "/completion", {**body, **DRY})
    assert status == 200 and r["content"] == with_dry, r
    status, r = post_json(tiny_server.url + "/completion", {**body, **DRY, "dry_multiplier": 0})
    assert status == 200 and r["content"] == plain, r


def test_adaptive_p_and_the_other_edge_values_are_taken(client):
    hot = dict(temperature=1.0, seed=5)
    plain = complete(client, **hot)
    for extra in ({"adaptive_target": 0.05, "adaptive_decay": 0.5}, {"typical_p": 0},
                  {"dynatemp_exponent": -1.0, "dynatemp_range": 0.5},
                  {"mirostat": 2, "mirostat_tau": -1, "mirostat_eta": -0.1}):
        a = complete(client, **hot, extra_body=extra)
        assert a == complete(client, **hot, extra_body=extra), extra
    # adaptive-p aiming at unlikely tokens changes the hot reply; temperature 0 with a
    # dynamic range samples (llama.cpp's temp-ext), so it is no longer the greedy reply
    assert complete(client, **hot, extra_body={"adaptive_target": 0.0}) != plain
    greedy = complete(client, temperature=0)
    assert complete(client, temperature=0, seed=5, extra_body={"dynatemp_range": 1.5}) != greedy


BAD = [({"dry_penalty_last_n": -2}, "'dry_penalty_last_n'"),
       ({"dry_sequence_breakers": []}, "'dry_sequence_breakers'"),
       ({"dry_sequence_breakers": "\n"}, "'dry_sequence_breakers'"),
       ({"dry_multiplier": "0.8"}, "'dry_multiplier'"),
       ({"dry_allowed_length": 1.5}, "'dry_allowed_length'"),
       ({"adaptive_target": [0.5]}, "'adaptive_target'")]


@pytest.mark.parametrize("fields, named", BAD, ids=[n for _, n in BAD])
def test_bad_values_are_400s_that_name_the_field(client, tiny_server, fields, named):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=2, extra_body={"dry_multiplier": 1, **fields})
    assert named in str(e.value)
    status, r = post_json(tiny_server.url + "/completion", {"prompt": "hi", "n_predict": 2, **fields})
    assert status == 400 and named in r["error"]["message"] and "Traceback" not in json.dumps(r), r


def test_props_lists_dry_and_adaptive_defaults(client, tiny_server):
    status, _, body = http_request("GET", tiny_server.url + "/props")
    assert status == 200
    d = json.loads(body)["default_generation_settings"]["params"]
    assert {k: d[k] for k in ("dry_multiplier", "dry_base", "dry_allowed_length",
                              "dry_penalty_last_n", "dry_sequence_breakers", "adaptive_target",
                              "adaptive_decay")} == {
        "dry_multiplier": 0.0, "dry_base": 1.75, "dry_allowed_length": 2,
        "dry_penalty_last_n": -1, "dry_sequence_breakers": ["\n", ":", "\"", "*"],
        "adaptive_target": -1.0, "adaptive_decay": 0.9}
