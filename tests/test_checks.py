"""The shared argument checks: every message names the value, the valid ones and close matches."""

import pytest

from backbones.checks import check, check_choice, check_keys, did_you_mean


def test_did_you_mean_names_close_entries_only():
    assert did_you_mean("resnet5O", ["resnet50", "densenet121"]) == " (did you mean 'resnet50'?)"
    assert did_you_mean("zzz", ["resnet50"]) == ""


def test_check_choice_names_value_matches_and_choices():
    check_choice("norm", "bn", ("bn", "gn"))
    with pytest.raises(ValueError, match=r"norm='bm' is not valid \(did you mean 'bn'\?\); choose one of 'bn', 'gn'"):
        check_choice("norm", "bm", ("bn", "gn"))


def test_check_keys_names_key_with_its_group():
    check_keys({"lr": 1}, ["lr", "momentum"], "solver")
    with pytest.raises(ValueError, match=r"unknown key solver.momentun \(did you mean 'momentum'\?\); valid keys: lr"):
        check_keys({"lr": 1, "momentun": 0.9}, ["lr", "momentum"], "solver")


def test_check_raises_only_when_not_ok():
    check("alpha", 0.5, True, "use a value in (0, 1]")
    with pytest.raises(ValueError, match=r"alpha=-1 is not valid; use a value in \(0, 1\]"):
        check("alpha", -1, False, "use a value in (0, 1]")


def test_check_int_and_probability_reject_wrong_types_with_the_same_message():
    from backbones.checks import check_int, check_probability

    check_int("num_classes", 0)
    check_probability("drop_rate", 0.0)
    with pytest.raises(ValueError, match=r"num_classes=-1 is not valid; use an integer >= 0"):
        check_int("num_classes", -1)
    for bad in (2.0, True, "3"):  # a wrong type is a TypeError naming the type, same shape otherwise
        with pytest.raises(
            TypeError, match=rf"num_classes={bad!r} is not valid \({type(bad).__name__}\); use an integer >= 0"
        ):
            check_int("num_classes", bad)
    for bad in (1.0, -0.1, "0.2", None):
        with pytest.raises(ValueError, match=r"drop_rate=.* is not valid; use a probability in \[0, 1\)"):
            check_probability("drop_rate", bad)
