"""benchmarks/multilabel_oracle.py's scoring of oracle-found label sets against target label sets."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "multilabel_oracle.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("multilabel_oracle_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TARGETS = [{"a", "b"}, {"c"}, {"a", "d"}]
FOUND = [{"a", "b", "x"}, set(), {"d"}]
RANKED = [["a", "b", "x"], ["y", "c"], ["x", "d", "a"]]
ACCEPTED = [True, False, True]


def test_score_recall_complete_precision_topk(bench):
    s = bench.score(TARGETS, FOUND, RANKED)
    assert s == {"rows": 3, "recall": 50.0, "complete": 33.33, "precision": 75.0, "found_per_row": 1.333,
                 "topk_recall": 50.0}  # recall (1 + 0 + 1/2) / 3; precision 3 of 4 found; top-k 1, 0, 1/2


def test_judge_splits_accepted_and_rejected_and_measures_agreement(bench):
    j = bench.judge(TARGETS, FOUND, ACCEPTED, RANKED)
    assert j["accepted"]["rows"] == 2 and j["accepted"]["recall"] == 75.0 and j["accepted"]["complete"] == 50.0
    assert j["rejected"] == {"rows": 1, "recall": 0.0, "complete": 0.0, "precision": None, "found_per_row": 0.0,
                             "topk_recall": 0.0}  # nothing found: no precision
    assert j["agreement"] == {"complete_if_accepted": 50.0, "complete_if_rejected": 0.0, "difference": 50.0}
    none = bench.judge(TARGETS, FOUND, [True] * 3)
    assert none["rejected"]["rows"] == 0 and none["rejected"]["recall"] is None
    assert none["agreement"]["difference"] is None


def test_a_key_matches_on_part_of_a_label(bench):
    colour = lambda name: name.split()[0]  # noqa: E731
    s = bench.score([{"red circle", "blue square"}], [{"red square"}], [["red square", "blue circle"]], key=colour)
    assert (s["recall"], s["complete"], s["precision"]) == (50.0, 0.0, 100.0)
    assert s["topk_recall"] == 100.0  # red, blue: both colours among the top two
    assert bench.score([{"red circle", "red square"}], [{"red dot"}], key=colour)["complete"] == 100.0
