"""pql_jax.values: the one parser and formatter of numbers, UTDs, typed fields and keyed YAML files."""

from __future__ import annotations

from fractions import Fraction

import pytest

from pql_jax.errors import UserError
from pql_jax.values import check_mapping, coerce, format_utd, parse_number, parse_utd, read_mapping, read_yaml


@pytest.mark.parametrize("text, expected", [("1/512", 1 / 512), ("5e-4", 5e-4), ("1e-3/2", 5e-4), (3, 3.0),
                                            (" 0.25 ", 0.25), ("3/64", 3 / 64)])
def test_parse_number_reads_decimals_and_fractions(text, expected):
    assert parse_number(text) == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("bad", [True, "1/0", "abc", "1/2/3", ""])
def test_parse_number_rejects_non_numbers(bad):
    with pytest.raises(ValueError):
        parse_number(bad)


@pytest.mark.parametrize("bad", ["0", "-1/4", "nan", "inf", "x", None])
def test_parse_utd_names_where_the_bad_value_came_from(bad):
    with pytest.raises(UserError, match="^sweep.utd: "):
        parse_utd(bad, "sweep.utd")


@pytest.mark.parametrize("utd", [1 / 512, 3 / 64, 2.0, 1 / 65536, 0.1])
def test_format_utd_round_trips_through_parse_utd(utd):
    text = format_utd(utd)
    assert parse_utd(text) == utd
    frac = Fraction(utd).limit_denominator(1 << 20)
    expected = str(frac.numerator) if frac.denominator == 1 else f"{frac.numerator}/{frac.denominator}"
    assert text == expected


def test_format_utd_keeps_values_no_small_fraction_represents():
    value = 1 / 3 + 1e-9  # no fraction with denominator <= 2**20 within 1e-12 relative
    assert format_utd(value) == repr(value) and parse_utd(format_utd(value)) == value


def test_coerce_converts_to_the_declared_type_exactly():
    assert coerce("k", "9007199254740993", int) == 2**53 + 1  # beyond float precision
    assert coerce("k", "1e3", int) == 1000 and coerce("k", "yes", bool) is True
    assert coerce("k", "1/4", float) == 0.25 and coerce("k", "[1, 2]", tuple[int, ...]) == (1, 2)
    assert coerce("k", 64, tuple[int, ...]) == (64,) and coerce("k", None, tuple[int, ...]) == ()
    for value, annotation in [("1.5", int), (True, int), ("maybe", bool), (3, str), (float("inf"), int)]:
        with pytest.raises(UserError, match="^config key k: "):
            coerce("k", value, annotation)


def test_keyed_yaml_files_name_their_problem(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("base: a.yaml\nsedes: 3\n")
    with pytest.raises(UserError, match="unknown key 'sedes' in sweep file"):
        read_mapping(path, ("base", "seeds"), "sweep file")
    path.write_text("base: [unclosed\n")
    with pytest.raises(UserError, match="is not valid YAML"):
        read_yaml(path, "sweep file")
    with pytest.raises(UserError, match="does not exist"):
        read_yaml(tmp_path / "missing.yaml")
    with pytest.raises(UserError, match="must be a mapping"):
        check_mapping([1, 2], ("a",), "section x")
    path.write_text("")
    assert read_yaml(path) == {} and check_mapping(None, ("a",), "x") == {}


@pytest.mark.parametrize("text, expected", [("1:4", 0.25), ("1:16", 1 / 16), (" 3:64 ", 3 / 64), ("1e-3:2", 5e-4)])
def test_a_ratio_reads_like_a_fraction(text, expected):
    """`1:16` (as run names and TensorBoard print a UTD) is `1/16` wherever a number is read."""
    assert parse_number(text) == pytest.approx(expected, rel=1e-15)
    assert parse_utd(text) == parse_number(text.replace(":", "/"))
    assert coerce("agent.utd", text, float) == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("bad", ["1:2:3", "1/2:3", ":4", "1:", "1:0"])
def test_bad_ratios_are_refused_naming_the_accepted_forms(bad):
    with pytest.raises(ValueError):
        parse_number(bad)
    with pytest.raises(UserError, match=r"^sweep.utd: not a UTD: .* \(write e.g. 0.25, 5e-4, 1/4 or 1:4\)$"):
        parse_utd(bad, "sweep.utd")
    from pql_jax.values import read_number

    with pytest.raises(UserError, match=r"^not a number: .* \(write e.g. 0.25, 5e-4, 1/4 or 1:4\)$"):
        read_number(bad)


def test_yaml_files_keep_a_ratio_for_the_number_reader(tmp_path):
    """YAML 1.1 reads an unquoted 1:16 as the base-60 integer 76; sweep and workflow files keep it as
    text, which the UTD reader takes as 1/16."""
    path = tmp_path / "sweep.yaml"
    path.write_text("utd: [1:16, 1/16, 0.0625, '1:16']\nseeds: 3\nlr: 3e-4\nat: 12:30\nflag: true\n")
    data = read_yaml(path)
    assert data["utd"] == ["1:16", "1/16", 0.0625, "1:16"] and data["seeds"] == 3 and data["flag"] is True
    assert {parse_utd(u) for u in data["utd"]} == {1 / 16}
    assert coerce("k", "[1, 2]", tuple[int, ...]) == (1, 2)
