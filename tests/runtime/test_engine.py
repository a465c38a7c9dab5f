"""Engine unit tests on a tiny fake model whose greedy continuation is known by design.

The fake's logits put all the mass on `NEXT[last token]`, so the greedy output is a
fixed walk through the alphabet; every expected value below follows from that table.
The real model is exercised end to end in tests/e2e/.
"""
import threading
import time

import numpy as np
import pytest

from runtime import engine as engine_mod
from runtime.engine import ContextOverflowError, Engine, EngineBusy, Request, _stop_hold_len
from runtime.sampling import SamplingParams

V = 32
EOS = 31
LETTERS = "abcdefghijklmnopqrstuvwxyz"   # ids 0..25 are these letters
SPACE = 26


def piece(t):
    return LETTERS[t] if t < 26 else (" " if t == SPACE else "")


class FakeDecoder:
    def push(self, t):
        return piece(t)

    def flush(self):
        return ""


class FakeTokenizer:
    def decoder(self, continuation=False):
        return FakeDecoder()

    def token_to_piece(self, t, special=False):  # what a JSON constraint reads
        return piece(t).encode()

    def is_special(self, t):
        return False


class FakeSession:
    def __init__(self, model, n_ctx):
        self.model, self.n_ctx, self.tokens = model, n_ctx, []
        self.evaluated = 0          # how many positions were computed, over the whole life

    def eval(self, ids, all_logits=False):
        if self.model.fail_on is not None and self.model.fail_on in ids:
            raise RuntimeError("boom")
        if len(self.tokens) + len(ids) > self.n_ctx:
            raise ContextOverflowError("overflow")
        if self.model.delay_s:
            time.sleep(self.model.delay_s * len(ids))
        self.tokens += list(ids)
        self.evaluated += len(ids)
        rows = [self.model.logits_after(t) for t in ids]
        return np.stack(rows) if all_logits else rows[-1]

    def rewind(self, n):
        del self.tokens[n:]
        return n

    def reuse_prefix(self, ids):
        n = 0
        while n < min(len(self.tokens), len(ids) - 1) and self.tokens[n] == ids[n]:
            n += 1
        return self.rewind(n)


class FakeModel:
    """Greedy after token t is NEXT[t]: letters walk a..z, then z -> EOS."""
    n_vocab = V
    eog_ids = frozenset({EOS})

    def __init__(self, delay_s=0.0):
        self.tokenizer = FakeTokenizer()
        self.delay_s = delay_s
        self.fail_on = None
        self.sessions = []

    def logits_after(self, t):
        nxt = EOS if t == 25 else (t + 1) % 26 if t < 26 else 0
        x = np.full(V, -10.0, np.float32)
        x[nxt] = 10.0
        x[(nxt + 1) % 26] = 9.0   # a clear runner-up, for n_probs
        return x

    def session(self, n_ctx):
        s = FakeSession(self, n_ctx)
        self.sessions.append(s)
        return s


GREEDY = SamplingParams(temperature=0.0)


def run(eng, ids, **kw):
    req = Request(prompt_ids=ids, params=kw.pop("params", GREEDY), **kw)
    events = list(eng.run(req))
    toks = [e for e in events if e.kind == "token"]
    return "".join(e.text for e in toks), toks, events[-1]


@pytest.fixture
def eng():
    return Engine(FakeModel(), n_ctx=64)


def test_greedy_walk_stops_at_eos(eng):
    text, toks, final = run(eng, [20])            # 'u' -> v w x y z EOS
    assert text == "vwxyz"
    assert final.kind == "done" and final.finish_reason == "stop" and final.stopped_eos
    assert final.completion_tokens == 6           # five letters and the EOS
    assert final.prompt_tokens == 1


def test_max_tokens_gives_length(eng):
    text, toks, final = run(eng, [0], max_tokens=3)
    assert text == "bcd"
    assert final.finish_reason == "length" and final.stopped_limit
    assert final.timings.predicted_n == 3


def test_max_tokens_zero_only_prefills(eng):
    text, _, final = run(eng, [0, 1, 2], max_tokens=0)
    assert text == "" and final.finish_reason == "length"
    assert final.timings.prompt_n == 3


def test_stop_string_across_tokens_is_trimmed(eng):
    text, toks, final = run(eng, [0], stop=["ef"])    # b c d e f ...
    assert text == "bcd"
    assert final.finish_reason == "stop" and final.stopped_word and final.stopping_word == "ef"
    # 'e' was held back (it could start "ef"), never sent and then taken back
    assert "e" not in "".join(t.text for t in toks)


def test_partial_stop_is_released(eng):
    # "dx" starts with d but never completes: the held "d" must still come out.
    text, _, final = run(eng, [0], stop=["dx"], max_tokens=5)
    assert text == "bcdef"
    assert final.finish_reason == "length"


def test_earliest_stop_string_wins(eng):
    text, _, final = run(eng, [0], stop=["fgh", "cd"])
    assert text == "b" and final.stopping_word == "cd"


def test_context_full_gives_length():
    eng = Engine(FakeModel(), n_ctx=8)
    text, _, final = run(eng, [0, 1, 2, 3, 4])        # room for 3 more positions
    assert final.finish_reason == "length"
    # Prompt and reply together fill the context and no more (as in llama-server): two
    # evaluated after the prompt, and the last one sampled, which needs no eval.
    assert text == "fgh"
    assert final.prompt_tokens + final.completion_tokens == 8
    # A prompt that fills the context leaves no room for a reply.
    with pytest.raises(ContextOverflowError, match="as long as the context size of 8 tokens"):
        eng.submit(Request(prompt_ids=[0] * 8))


def test_prompt_longer_than_context_is_refused():
    eng = Engine(FakeModel(), n_ctx=4)
    with pytest.raises(ContextOverflowError, match="context"):
        eng.submit(Request(prompt_ids=[0] * 5))
    # A larger --ctx is advised only where the model's trained context allows one.
    for trained, advice in ((16, "start the server with a larger context (--ctx, up to 16)"),
                            (4, None), (0, None)):
        model = FakeModel()
        model.n_ctx_train = trained
        with pytest.raises(ContextOverflowError) as e:
            Engine(model, n_ctx=4).submit(Request(prompt_ids=[0] * 5))
        assert (advice in str(e.value)) if advice else "larger" not in str(e.value)
    with pytest.raises(ValueError, match="empty"):
        eng.submit(Request(prompt_ids=[]))
    with pytest.raises(ValueError, match="range"):
        eng.submit(Request(prompt_ids=[V]))


def test_prompt_cache_evaluates_only_new_tokens(eng):
    p1 = [SPACE] * 20
    _, _, f1 = run(eng, p1, max_tokens=2)
    assert f1.timings.cached_n == 0 and f1.timings.prompt_n == 20
    p2 = p1 + [5, 7, 9]
    _, _, f2 = run(eng, p2, max_tokens=2)
    assert f2.timings.cached_n == 20 and f2.timings.prompt_n == 3
    # The very same prompt again: all but the last token come from the cache.
    _, _, f3 = run(eng, p2, max_tokens=2)
    assert f3.timings.cached_n == 22 and f3.timings.prompt_n == 1
    _, _, f4 = run(eng, p2, max_tokens=2, cache_prompt=False)
    assert f4.timings.cached_n == 0 and f4.timings.prompt_n == 23


def test_cancel_stops_generation_within_a_token_or_two():
    model = FakeModel(delay_s=0.02)
    eng = Engine(model, n_ctx=4096)
    # SPACE -> a b ... z EOS: 27 tokens at 20 ms each, unless cancelled.
    req = Request(prompt_ids=[SPACE], params=GREEDY, max_tokens=-1)
    eng.submit(req)
    seen = 0
    for ev in req.iter_events():
        if ev.kind == "token":
            seen += 1
            if seen == 2:
                req.cancel.set()
        else:
            final = ev
            break
    assert final.finish_reason == "cancelled"
    assert seen <= 4
    # The worker is free again.
    text, _, f = run(eng, [24])
    assert text == "z" and f.finish_reason == "stop"


def test_cancelled_before_start_is_skipped(eng):
    req = Request(prompt_ids=[0], params=GREEDY)
    req.cancel.set()
    events = list(eng.run(req))
    assert [e.kind for e in events] == ["done"] and events[0].finish_reason == "cancelled"


def test_worker_error_comes_back_and_worker_survives(eng):
    eng.model.fail_on = 3
    _, _, final = run(eng, [0])       # b c d: eval of d (3) raises
    assert final.kind == "error" and "boom" in str(final.error)
    eng.model.fail_on = None
    text, _, final = run(eng, [22])
    assert text == "xyz" and final.finish_reason == "stop"


def test_full_queue_is_refused():
    model = FakeModel(delay_s=0.05)
    eng = Engine(model, n_ctx=64, max_queue=2)
    first = eng.submit(Request(prompt_ids=[0], params=GREEDY, max_tokens=20))
    deadline = time.time() + 5
    while not eng.busy.is_set() and time.time() < deadline:
        time.sleep(0.005)
    eng.submit(Request(prompt_ids=[0], params=GREEDY, max_tokens=1))
    eng.submit(Request(prompt_ids=[0], params=GREEDY, max_tokens=1))
    with pytest.raises(EngineBusy):
        eng.submit(Request(prompt_ids=[0], params=GREEDY, max_tokens=1))
    first.cancel.set()


def test_n_probs_are_sorted_and_match_choice(eng):
    _, toks, _ = run(eng, [0], max_tokens=3, n_probs=3)
    for ev in toks:
        ids = [i for i, _ in ev.probs]
        ps = [p for _, p in ev.probs]
        assert len(ev.probs) == 3
        assert ps == sorted(ps, reverse=True) and 0 < sum(ps) <= 1 + 1e-9
        assert ids[0] == ev.token and ev.prob == ps[0]
        # runner-up is 1 logit below: p2/p1 == e^-1
        assert ps[1] / ps[0] == pytest.approx(np.exp(-1.0), rel=1e-6)


def test_requests_are_served_one_at_a_time():
    model = FakeModel(delay_s=0.002)
    eng = Engine(model, n_ctx=256)
    results = {}

    def client(i):
        results[i] = run(eng, [i], max_tokens=5)[0]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    expected = {i: "".join(LETTERS[(i + k) % 26] for k in range(1, 6)) for i in range(6)}
    assert results == expected
    assert len(model.sessions) == 1   # one session, shared by the queue


def test_speculative_next_tokens_contract(monkeypatch):
    """A speculator may return several tokens, evaluated, with the logits after them.
    The output must be the same as without it."""
    def spec(session, logits, sampler, history, room_tok, speculate=False, prediction=None):
        t0 = sampler.sample(logits, history)
        if room_tok < 2 or t0 >= 25:
            return [t0], session.eval([t0]) if room_tok >= 1 else None
        l1 = session.eval([t0])
        t1 = sampler.sample(l1, history + [t0])
        return [t0, t1], session.eval([t1])

    ref_eng = Engine(FakeModel(), n_ctx=64)
    ref = run(ref_eng, [3], stop=["kl"])
    monkeypatch.setattr(engine_mod, "_next_tokens", spec)
    eng = Engine(FakeModel(), n_ctx=64)
    got = run(eng, [3], stop=["kl"])
    assert got[0] == ref[0] == "efghij"
    assert got[2].completion_tokens == ref[2].completion_tokens


@pytest.mark.parametrize("text,stops,expected", [
    ("hello", ["lo!"], 2), ("hello", ["x"], 0), ("hel", ["hello"], 3),
    ("abc", ["c", "bcd"], 2), ("", ["abc"], 0), ("aaa", ["aab"], 2),
])
def test_stop_hold_len(text, stops, expected):
    assert _stop_hold_len(text, stops) == expected


# ---- a constraint: what logprobs report, and where an ignore_eos reply ends ----------------

def null_constraint(model):
    """The reply must be the JSON literal null: after "m" the fake model favours "n" (it
    fits), then "o" (it does not: "u" must come, which the model puts far down)."""
    from runtime import json_constraint as jc
    node = jc.compile_schema({"type": "null"})
    return jc.make_constraint(model, jc.value_grammar(node))


def test_n_probs_are_those_of_the_distribution_the_constraint_leaves(eng):
    text, toks, final = run(eng, [12], n_probs=3, max_tokens=4,
                            constraint=null_constraint(eng.model))
    assert text == "null"
    for ev in toks:
        ids = [i for i, _ in ev.probs]
        # the chosen token is the best of the list, and the list holds allowed tokens only
        assert ids[0] == ev.token and ev.prob == ev.probs[0][1]
        assert sum(p for _, p in ev.probs) <= 1 + 1e-9
    # After "n" only "u" fits: a forced token is certain, whatever the model thought of it
    # (it was reported with e^-20 of the mass, and the list named "o", "p", which the
    # constraint forbids).
    u = toks[1]
    assert u.token == LETTERS.index("u") and u.probs == [(u.token, 1.0)] and u.prob == 1.0
    # "n" competes with a space (whitespace may come before the value): both are listed,
    # renormalised over the tokens that fit.
    first = toks[0]
    assert [i for i, _ in first.probs] == [LETTERS.index("n"), SPACE]
    ratio = first.probs[1][1] / first.probs[0][1]
    assert ratio == pytest.approx(np.exp(-20.0), rel=1e-6)


def test_n_probs_leave_out_tokens_the_logit_bias_bans(eng):
    # "b" is the model's favourite after "a" and is banned: "c" is drawn, and reported as
    # the best, with "b" nowhere in the list.
    ban = SamplingParams(temperature=0.0, logit_bias={1: -np.inf})
    _, toks, _ = run(eng, [0], params=ban, max_tokens=1, n_probs=3)
    ev = toks[0]
    assert ev.token == 2 and ev.probs[0][0] == 2 and 1 not in [i for i, _ in ev.probs]
    assert ev.prob > 0.99


def test_ignore_eos_with_a_constraint_stops_where_the_value_ends(eng):
    # End-of-generation banned (what ignore_eos does): the reply cannot end with the one
    # whitespace byte allowed after a value, as nothing could follow that byte.
    no_eos = SamplingParams(temperature=0.0, logit_bias={EOS: -np.inf})
    text, toks, final = run(eng, [12], params=no_eos, constraint=null_constraint(eng.model))
    assert text == "null"
    assert final.finish_reason == "stop" and final.completion_tokens == 4
    # With end-of-generation possible, the whitespace byte is still allowed: the fake
    # model ranks the space above end-of-generation (a tie, and the lower id wins), and
    # ends the reply after it.
    text, _, final = run(eng, [12], constraint=null_constraint(eng.model))
    assert text == "null " and final.stopped_eos and final.completion_tokens == 6
