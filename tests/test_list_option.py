"""One parser for every list-valued option (--seeds, --teachers, --attacks, ros studies, ...),
and one for every number."""
import re

import pytest

from chestkd.cli import list_option
from chestkd.errors import ConfigError
from chestkd.experiments.ros import teacher_names
from chestkd.training.config import seed_list
from chestkd.training.trainer import _step_epochs


@pytest.mark.parametrize("value, expected", [
    ("a,b", ["a", "b"]),
    (" a , b ", ["a", "b"]),                 # spaces around items and the whole value
    ("[a, b]", ["a", "b"]),                  # brackets YAML did not read (a flag's string)
    ("['a', \"b\"]", ["a", "b"]),            # one pair of quotes per item
    (["a", " b"], ["a", "b"]),               # a YAML list
    (("a",), ["a"]),
    ("a", ["a"]),
])
def test_names_however_they_are_written(value, expected):
    assert list_option(value, "--teachers") == expected


@pytest.mark.parametrize("value, expected", [
    ("0,1,2", [0, 1, 2]), ("[0, 1]", [0, 1]), ([3, "4"], [3, 4]), (3, [3]), (" 7 ", [7]),
])
def test_integers(value, expected):
    assert list_option(value, "--seeds", cast=int) == expected


def test_floats():
    assert list_option("0, 0.2,1", "--overlap-study", cast=float) == [0.0, 0.2, 1.0]


@pytest.mark.parametrize("value", ["a,,b", "a,", ",a", "a, '' ,b", ["a", " "]])
def test_an_empty_item_is_an_error_naming_the_option(value):
    with pytest.raises(ConfigError, match="--teachers .*empty item"):
        list_option(value, "--teachers")


@pytest.mark.parametrize("value", [None, "", "[]", [], "  "])
def test_no_items_is_an_error_unless_allowed(value):
    with pytest.raises(ConfigError, match="--teachers .*at least one"):
        list_option(value, "--teachers")
    assert list_option(value, "--baselines", empty=True) == []


def test_none_means_no_items_where_that_is_allowed():
    assert list_option("none", "--baselines", empty=True) == []
    assert list_option(["III", "none"], "--baselines", empty=True) == ["III"]


def test_a_value_of_the_wrong_kind_is_named():
    with pytest.raises(ConfigError, match=r"--seeds '0,x': 'x' is not an integer"):
        list_option("0,x", "--seeds", cast=int)
    with pytest.raises(ConfigError, match=r"--noise-levels .*'high' is not a number"):
        list_option(["0.1", "high"], "--noise-levels", cast=float)


def test_allowed_items_name_the_unknown_ones():
    assert list_option("fgsm, pgd", "--attacks", allowed=("fgsm", "pgd")) == ["fgsm", "pgd"]
    with pytest.raises(ConfigError, match=r"--attacks .*unknown \['cw'\]; choose from"):
        list_option("fgsm,cw", "--attacks", allowed=("fgsm", "pgd"))


def test_the_options_that_use_it():
    assert seed_list("[0, 1, 2]") == [0, 1, 2]
    with pytest.raises(ConfigError, match="--seeds .*empty item"):
        seed_list("0,1,")                    # the trailing comma was dropped silently before
    with pytest.raises(ConfigError, match="--seeds .*distinct"):
        seed_list("0,0")
    assert teacher_names("[resnet32, vgg19]", 3) == ["resnet32", "vgg19", "resnet32"]
    with pytest.raises(ConfigError, match="--teachers"):
        teacher_names([], 3)                 # was a ZeroDivisionError
    assert _step_epochs(" 25, 40", 50) == [25, 40]
    with pytest.raises(ConfigError, match="--step-epochs"):
        _step_epochs([], 50)                 # was an IndexError


@pytest.mark.parametrize("value, checks, expected", [
    ("1e-3", {}, 0.001), (4, {}, 4), (0.5, {"high": 1.0}, 0.5), ("3", {"cast": int}, 3),
    (3.0, {"cast": int}, 3), (1, {"low": 1, "cast": int}, 1),
])
def test_number_option_reads_numbers_as_given_or_from_text(value, checks, expected):
    from chestkd.cli import number_option
    number = number_option(value, "--x", **checks)
    assert number == expected and type(number) is type(expected)


@pytest.mark.parametrize("value, checks, message", [
    ("abc", {}, "--x 'abc': expected a number"), (True, {}, "--x True: expected a number"),
    (None, {}, "--x None: expected a number"), (2.7, {"cast": int}, "expected an integer"),
    (float("nan"), {}, "--x nan: expected a number"), (float("inf"), {"cast": int}, "integer"),
    (0, {"low": 0.0, "low_open": True}, "--x 0: expected a number > 0"),
    (1.5, {"low": 0.0, "high": 1.0}, "--x 1.5: expected a number >= 0 and <= 1"),
])
def test_number_option_names_the_option_and_what_it_expects(value, checks, message):
    from chestkd.cli import number_option
    from chestkd.errors import ConfigError
    with pytest.raises(ConfigError, match=re.escape(message)):
        number_option(value, "--x", **checks)
