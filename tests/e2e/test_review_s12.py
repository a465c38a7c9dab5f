"""Review of the terminal chat's and the file lease's new paths: what a program that ends
in the middle of an answer leaves behind."""
import time

import pytest

from tests.e2e.conftest import TINY

WAIT_S = 30


class _EndsAtFirstToken:
    """stdout of a chat that is ended (SystemExit, as `kill` or a copy over the model
    file raise it in the main thread) while the first token is written."""

    def write(self, text):
        if text.strip():
            raise SystemExit(143)

    def flush(self):
        pass


def _slow_model(calls: list):
    """The tiny model, each forward pass a little slow, as a real model's are."""
    from runtime.model import Model
    m = Model.load(TINY)
    new_session = m.session

    def slow_session(n_ctx):
        s = new_session(n_ctx)
        fast = s.eval

        def slow(ids, *a, **k):
            calls.append(len(ids))
            time.sleep(0.05)
            return fast(ids, *a, **k)
        s.eval = slow
        return s
    m.session = slow_session
    return m


def test_an_answer_ended_by_an_exit_stops_the_worker_before_the_program_ends():
    """The SystemExit went up through the chat with the worker still generating, so the
    program ended with the worker inside a matrix product, where OpenBLAS's exit handler
    can wait for it for good: a chat stopped by a copy over its model file (or by `kill`)
    could hang instead of ending, and its one forced exit cannot run by then."""
    from runtime import terminal
    from runtime.engine import Engine
    from runtime.sampling import SamplingParams
    calls: list = []
    model = _slow_model(calls)
    engine = Engine(model, 256)
    sent = []
    submit = engine.submit
    engine.submit = lambda req: sent.append(req) or submit(req)
    c = terminal._Chat(model, engine, None, SamplingParams(temperature=0.0), 200,
                       _EndsAtFirstToken())
    with pytest.raises(SystemExit):
        c.ask("Once upon a time")
    assert sent and sent[0].cancel.is_set()
    end = time.monotonic() + WAIT_S
    while engine.busy.is_set() and time.monotonic() < end:
        time.sleep(0.05)
    assert not engine.busy.is_set()
    assert len(calls) < 100, "the worker went on to the end of the answer"
