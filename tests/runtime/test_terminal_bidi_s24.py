"""The terminal chat's filter of the model's text (terminal._Inert), for the Unicode
bidirectional controls (session 24).

A reply (or its reasoning) that repeats hostile text can carry the embeddings, overrides,
isolates of the bidi algorithm; a terminal that implements bidi (GNOME's VTE,
Konsole, mlterm) obeys them and shows the text in another order than its characters'
("Trojan Source", CVE-2021-42574). On a terminal they are shown as <U+XXXX>, as the C0
and C1 controls are shown in caret form; off a terminal the text is as written. An
emoji's zero-width joiner and variation selector stay as they are, and so do the marks
(LRM, RLM, ALM), which Hebrew and Arabic text uses and which reorder no run of text.
"""
from runtime.terminal import _Inert

# The bidirectional controls that reorder text: LRE RLE PDF LRO RLO, LRI RLI FSI PDI.
BIDI = "\u202a\u202b\u202c\u202d\u202e" "\u2066\u2067\u2068\u2069"
MARKS = "\u200e\u200f\u061c"  # LRM RLM ALM: kept
# The Trojan Source paper's "stretched string": looks like a check on "user" to a reader
# whose terminal applies the overrides.
TROJAN = 'if access_level != "user\u202e \u2066// Check if admin\u2069 \u2066":\n'
FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # man ZWJ woman ZWJ girl
HEART = "\u2764\ufe0f"  # a heavy black heart with VS16 (the emoji form)


def shown(text: str) -> str:
    """text as the chat should show it on a terminal: each bidirectional control as
    <U+XXXX> (four hex digits, upper case), nothing else changed."""
    return "".join(f"<U+{ord(ch):04X}>" if ch in BIDI else ch for ch in text)


def test_each_bidirectional_control_is_shown_by_its_code_point_on_a_terminal_only():
    for ch in BIDI:
        assert _Inert(True)(f"a{ch}b") == f"a<U+{ord(ch):04X}>b", hex(ord(ch))
        assert _Inert(False)(f"a{ch}b") == f"a{ch}b", hex(ord(ch))  # a file, a pipe
    assert _Inert(True)("\u202e") == "<U+202E>" and _Inert(True)("\u2069") == "<U+2069>"


def test_the_marks_of_hebrew_and_arabic_text_stay():
    """An RLM after a Hebrew word before "(ok)", an ALM in Arabic: as written."""
    text = "\u05e9\u05dc\u05d5\u05dd\u200f (ok) \u0627\u061c1\u200e"
    assert _Inert(True)(text) == text
    assert _Inert(True)(text + "\u202e") == text + "<U+202E>"


def test_the_trojan_source_line_shows_no_bidirectional_control():
    """The C0 and C1 controls keep their own forms: ESC ^[, CSI U+FFFD, DEL ^?."""
    out = _Inert(True)(TROJAN + "\x1b[2J\x9b2J\x7f")
    assert out == ('if access_level != "user<U+202E> <U+2066>// Check if admin<U+2069> '
                   '<U+2066>":\n^[[2J\ufffd2J^?')
    assert not set(out) & set(BIDI)


def test_streamed_one_character_a_piece_it_shows_as_the_whole_text_does():
    """The chat filters a reply piece by piece, as it streams: a control that comes in a
    piece of its own shows the same. An emoji's zero-width joiners and variation
    selector, and a zero-width non-joiner in Persian, stay as they are; off a terminal
    the pieces are as written."""
    text = (f"run \u2067rm -rf ~\u2069 then\r\n{TROJAN}{BIDI} family {FAMILY}, love "
            f"{HEART}, \u0645\u200c\u06cc")
    on, off = _Inert(True), _Inert(False)
    assert "".join(on(ch) for ch in text) == _Inert(True)(text) == \
        shown(text.replace("\r\n", "\n"))
    assert FAMILY + ", love " + HEART + ", \u0645\u200c\u06cc" in _Inert(True)(text)
    assert "".join(off(ch) for ch in text) == text
