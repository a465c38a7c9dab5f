"""runtime/reasoning.py: a reply's `<think>` reasoning split from its answer as llama.cpp's
try_parse_reasoning splits it (reasoning_format "deepseek"), fed whole and piece by piece."""
import random

import pytest

from runtime.reasoning import (ReasoningSplit, continues_reasoning, opens_thinking, split,
                               with_prefill_reasoning)

CASES = [
    # (reply, forced_open, reasoning, content)
    ("<think>\nLet me see.\n</think>\n\nParis.", False, "Let me see.", "Paris."),
    ("  \n<think>x</think>y", False, "x", "  \ny"),        # whitespace before it stays content
    ("<think> a </think>\n <think> b </think>\n c", False, "ab", "c"),
    ("<think></think>Answer", False, "", "Answer"),
    ("Answer <think>x</think>", False, "", "Answer <think>x</think>"),
    ("a</think>b", False, "", "a</think>b"),               # not opened: all content
    ("<think>cut by max_tokens \n", False, "cut by max_tokens", ""),
    ("<think>cut inside the tag </thi", False, "cut inside the tag", ""),
    ("\nI think.\n</think>\n\nAnswer.", True, "I think.", "Answer."),   # forced open
    ("<think>again</think>Answer", True, "again", "Answer"),
    ("only thinking, cut", True, "only thinking, cut", ""),
    ("<th", False, "", "<th"),   # (llama.cpp drops it)
    ("   ", False, "", "   "),
    ("   ", True, "", ""),
    ("Answer </think> more", False, "", "Answer </think> more"),
]


@pytest.mark.parametrize("reply, forced, reasoning, content", CASES)
def test_whole_replies(reply, forced, reasoning, content):
    assert split(reply, forced) == (reasoning, content)


@pytest.mark.parametrize("reply, forced, reasoning, content", CASES)
def test_pieces_join_into_the_whole_split(reply, forced, reasoning, content):
    rng = random.Random(reply)
    for _ in range(30):
        s, r, c, i = ReasoningSplit(forced), "", "", 0
        while i < len(reply):
            n = rng.randint(1, 4)
            dr, dc = s.push(reply[i:i + n])
            r, c, i = r + dr, c + dc, i + n
        dr, dc = s.finish()
        assert (r + dr, c + dc) == (reasoning, content)
    # One character at a time: nothing of the answer comes before the reasoning has ended.
    s, seen_content = ReasoningSplit(forced), False
    for ch in reply:
        dr, dc = s.push(ch)
        assert not (dr and seen_content)
        seen_content = seen_content or bool(dc.strip())  # (whitespace before <think>)


def test_reasoning_streams_as_it_comes_and_holds_only_a_tag_or_whitespace():
    s = ReasoningSplit()
    assert s.push("<think>\nHello ") == ("Hello", "")
    assert s.push("world <") == (" world", "")   # the space before "<" waits with it
    assert s.push("b>") == (" <b>", "")          # not a tag after all
    assert s.push("</thi") == ("", "")
    assert s.push("nk>\n\nHi") == ("", "Hi")


def test_a_prompt_or_prefill_that_opens_think():
    assert opens_thinking("<｜Assistant｜><think>\n")
    assert opens_thinking("<|im_start|>assistant\n<think>")
    assert not opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not opens_thinking("<|im_start|>assistant\n")
    assert opens_thinking("", "<think>\nSo far")
    assert not opens_thinking("<think>\n", "<think>\nR\n</think>\n\nThe answ")
    assert continues_reasoning("<think>\nSo far") and not continues_reasoning("<think>\n")
    # strip_start=False: the reasoning goes on from the prefill's, its first space kept.
    assert split(" more.\n</think>\nAnswer", True, strip_start=False) == (" more.", "Answer")


def test_a_prefill_with_reasoning_content_is_written_as_the_model_wrote_it():
    q = {"role": "user", "content": "Q"}
    cut = with_prefill_reasoning([q, {"role": "assistant", "content": "",
                                      "reasoning_content": " So far "}])
    assert cut[-1] == {"role": "assistant", "content": "<think>\nSo far"}
    both = with_prefill_reasoning([q, {"role": "assistant", "content": "The ans",
                                       "reasoning_content": "R"}])
    assert both[-1]["content"] == "<think>\nR\n</think>\n\nThe ans"
    # Not a prefill (the last message is a question; a lone assistant message; tool calls;
    # no or non-text reasoning): as sent, the field left for the template.
    for msgs in ([{"role": "assistant", "content": "a", "reasoning_content": "R"}, q],
                 [{"role": "assistant", "content": "a", "reasoning_content": "R"}],
                 [q, {"role": "assistant", "content": "", "reasoning_content": "R",
                      "tool_calls": [{"id": "1"}]}],
                 [q, {"role": "assistant", "content": "a", "reasoning_content": 5}],
                 [q, {"role": "assistant", "content": "a"}]):
        assert with_prefill_reasoning(msgs) is msgs
