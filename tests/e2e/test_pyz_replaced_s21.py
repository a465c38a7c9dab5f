"""A running .pyz bundle rebuilt or replaced under its name, twenty-first session.

The executable read its modules from its file by name, so a bundle replaced while it ran
answered every chat with a 500 (tests/e2e/test_first_use_s21.py). A .pyz does not: shiv
unpacks its packages once and imports them from that copy, and the archive's own
zipimporter keeps the directory it read at the start. These guard that it stays so, with
the weights copied (f32: the file let go once loaded) and mapped from the started file for
as long as the bundle runs (--mode quant).
"""
from __future__ import annotations

import pytest

from tests.e2e.test_first_use_s21 import answers_when_replaced_under_its_name

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("mode", ["f32", "quant"])
def test_a_pyz_replaced_under_its_name_while_it_runs_still_answers(tmp_path, tmp_path_factory,
                                                                   mode):
    answers_when_replaced_under_its_name(tmp_path / "my-chat.pyz", tmp_path_factory, "pyz",
                                         "--mode", mode)
