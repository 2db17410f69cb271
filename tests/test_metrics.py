"""Match / EM / F1 on hand-written cases (docs/DESIGN.md §2 normalization) and the seeded bootstrap interval."""
import pytest

from neurorit import metrics
from neurorit.metrics import bootstrap_ci, exact_match, f1, match, normalize, summarize


@pytest.mark.parametrize("text, want", [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  an   apple, a pear and THE plum. ", "apple pear and plum"),
    ("U.S.A.", "usa"),
    ("theatre then another", "theatre then another"),  # articles only as whole words
    ("", ""),
])
def test_normalize(text, want):
    assert normalize(text) == want


def test_match_is_normalized_substring():
    assert match("I think it is Paris.", ["paris"]) == 1.0
    assert match("The answer: the Beatles", ["Beatles"]) == 1.0
    assert match("london", ["Paris"]) == 0.0
    assert match("", ["paris"]) == 0.0


def test_articles_and_punctuation_do_not_matter():
    assert exact_match("The Beatles.", ["beatles"]) == 1.0
    assert exact_match("an apple", ["Apple!"]) == 1.0
    assert f1("the, new york", ["New York"]) == 1.0


def test_multiple_gold_answers_take_the_best():
    golds = ["New York City", "NYC", "new york"]
    assert exact_match("NYC", golds) == 1.0
    assert match("they moved to nyc in 1990", golds) == 1.0
    assert f1("new york", golds) == 1.0
    assert exact_match("boston", golds) == 0.0


def test_f1_partial_overlap():
    # pred "new york city" vs gold "new york": P = 2/3, R = 1 -> F1 = 0.8
    assert f1("new york city", ["New York"]) == pytest.approx(0.8)
    # pred "paris" vs gold "paris france": P = 1, R = 1/2 -> 2/3
    assert f1("Paris", ["Paris, France"]) == pytest.approx(2 / 3)
    assert f1("rome", ["paris"]) == 0.0
    assert f1("", ["paris"]) == 0.0
    assert exact_match("new york city", ["New York"]) == 0.0


def test_a_string_gold_and_an_empty_gold():
    assert match("Paris", "paris") == 1.0
    assert match("anything", ["", "the"]) == 0.0  # empty after normalization: never matches everything


def test_score_has_the_three_metrics():
    assert metrics.score("the red fox", ["Red"]) == {"match": 1.0, "em": 0.0, "f1": pytest.approx(2 * 0.5 / 1.5)}


def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = [1.0] * 30 + [0.0] * 70
    a = bootstrap_ci(values, 500, seed=3)
    assert a == bootstrap_ci(values, 500, seed=3)
    assert a != bootstrap_ci(values, 500, seed=4)
    assert a[0] < 0.3 < a[1] and 0.15 < a[0] and a[1] < 0.45
    assert bootstrap_ci([1.0, 1.0, 1.0], 100) == [1.0, 1.0]
    assert bootstrap_ci([0.5], 100) == [0.5, 0.5]
    assert bootstrap_ci([0.0, 1.0], 0) == [0.5, 0.5]


def test_summarize():
    rows = [{"match": 1.0, "em": 1.0, "f1": 1.0}, {"match": 0.0, "em": 0.0, "f1": 0.5}]
    s = summarize(rows, 100, seed=0)
    assert s["match"] == 0.5 and s["em"] == 0.5 and s["f1"] == 0.75 and s["n"] == 2
    assert 0.0 <= s["match_ci95"][0] <= 0.5 <= s["match_ci95"][1] <= 1.0
