"""The number formats of every table sdlkit prints (sdlkit.report): one value, a value over seeds, any cell."""

import pytest

from sdlkit.report import MISSING, cell, fixed, format_table, mean_spread, percent


def test_percent_and_fixed_and_what_is_missing():
    assert percent(0.91234) == "91.2%" and percent(0.91234, 2) == "91.23%" and percent(0.0) == "0.0%"
    assert fixed(0.91256) == "0.913" and fixed(31.96, 1) == "32.0" and fixed(12.6, 0) == "13"
    assert percent(None) == fixed(None) == MISSING == "–"


@pytest.mark.parametrize(
    ("values", "digits", "as_percent", "expected"),
    [
        ([0.5], 1, True, "50.0%"),
        ([0.5, 0.5], 1, True, "50.0%"),  # a spread that rounds to zero is left out
        ([0.5, 0.7], 3, False, "0.600 ± 0.141"),
        ([0.5, 0.7], 1, True, "60.0% ± 14.1"),
        ([0.25, 0.25001], 4, False, "0.2500"),
        ([], 3, False, "–"),
    ],
)
def test_mean_spread(values, digits, as_percent, expected):
    assert mean_spread(values, digits, as_percent) == expected


def test_cell_and_the_table_it_fills():
    assert [cell(v) for v in (0.123456, 1234.5, 0.0001234, 0.0, float("nan"), 7, "x")] == [
        "0.1235",
        "1234",  # significant digits, as :g gives
        "1.23e-04",
        "0",
        "nan",
        "7",
        "x",
    ]
    assert format_table([{"a": 0.5, "b": "long text"}], ["a", "b"]).splitlines() == [
        "| a   | b         |",
        "|-----|-----------|",
        "| 0.5 | long text |",
    ]
