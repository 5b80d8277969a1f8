"""The scoring functions, on hand-checked examples."""

import math

import pytest

from finetune_sdk import ConfigError
from finetune_sdk.evaluate import confusion_matrix, exact_match, extract_label, label_accuracy, rouge_l
from finetune_sdk.evaluate.metrics import cosine, percentile

LABELS = ["anxiety", "depression", "family-conflict", "grief"]


def test_extract_label_takes_the_first_named_and_ignores_case_and_hyphens():
    assert extract_label("This sounds like Family Conflict, maybe grief.", LABELS) == "family-conflict"
    assert extract_label("grief, or anxiety", LABELS) == "grief"
    assert extract_label("I'm not sure.", LABELS) is None
    assert extract_label("anxietyish", LABELS) is None  # whole words only



def test_extract_label_keeps_signs_and_symbols_apart():
    sentiment = ["-1", "0", "1"]
    assert extract_label("1", sentiment) == "1" and extract_label("The answer is 1.", sentiment) == "1"
    assert extract_label("-1", sentiment) == "-1" and extract_label("score: -1", sentiment) == "-1"
    assert label_accuracy(["1", "-1", "0"], ["1", "-1", "0"], sentiment) == 1.0
    languages = ["C", "C++", "C#", "Python"]
    assert extract_label("C++", languages) == "C++" and extract_label("This is C#.", languages) == "C#"
    assert extract_label("This is C#.", ["C++", "C#"]) == "C#" and extract_label("plain C, then C#", languages) == "C"
    assert extract_label("grief_and_loss", ["grief-and-loss"]) == "grief-and-loss"


def test_labels_that_only_differ_in_case_or_separators_are_refused():
    with pytest.raises(ConfigError, match="'Positive' and 'positive'.*merge them"):
        extract_label("positive", ["Positive", "positive"])
    with pytest.raises(ConfigError, match="family-conflict"):
        extract_label("x", ["family-conflict", "Family Conflict"])


def test_label_accuracy_and_confusion_matrix():
    replies = ["anxiety", "this sounds like grief", "no idea", "depression"]
    truths = ["anxiety", "depression", "grief", "depression"]
    assert label_accuracy(replies, truths, LABELS) == 0.5
    named = [extract_label(r, LABELS) for r in replies]
    matrix = confusion_matrix(truths, named, LABELS)
    assert matrix[0] == [1, 0, 0, 0, 0]          # anxiety -> anxiety
    assert matrix[1] == [0, 1, 0, 1, 0]          # depression -> depression once, grief once
    assert matrix[3] == [0, 0, 0, 0, 1]          # grief -> no label named
    assert sum(map(sum, matrix)) == 4


def test_exact_match_and_rouge_l():
    assert exact_match("  This sounds like Grief. ", "this sounds  like grief.")
    assert not exact_match("grief", "this sounds like grief.")
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert rouge_l("completely different", "the cat sat") == 0.0
    # LCS "the cat the mat" = 4 words of 6 (prediction) and 6 (reference): F1 = 4/6
    assert rouge_l("the cat ran to the mat", "the cat sat on the mat") == pytest.approx(4 / 6)
    assert rouge_l("", "") == 1.0 and rouge_l("", "x") == 0.0
    assert rouge_l("!!!", "???") == 0.0 and rouge_l("?", " ? ") == 1.0  # no words: the text itself decides


def test_cosine_and_percentile():
    assert cosine([1, 0], [1, 0]) == 1.0 and cosine([1, 0], [0, 1]) == 0.0 and cosine([0, 0], [1, 1]) == 0.0
    assert percentile([1, 2, 3, 4, 5], 50) == 3 and percentile([1, 2], 50) == 1.5
    assert percentile([10, 20, 30], 95) == pytest.approx(29.0)
    assert math.isnan(percentile([], 50))
