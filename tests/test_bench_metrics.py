import math

import pytest

from worker.tools.bench.recall import (
    confusion_pairs,
    coverage_accuracy_curve,
    mean_reciprocal_rank,
    percentiles,
    rank_of,
    recall_at_k,
    share,
)


def test_rank_of():
    assert rank_of("b", ["a", "b", "c"]) == 2
    assert rank_of("z", ["a", "b"]) is None


def test_recall_at_k_counts_absent_answers_as_misses():
    ranks = [1, 2, None, 5, 1]
    assert recall_at_k(ranks, 1) == pytest.approx(2 / 5)
    assert recall_at_k(ranks, 2) == pytest.approx(3 / 5)
    assert recall_at_k(ranks, 5) == pytest.approx(4 / 5)
    assert math.isnan(recall_at_k([], 1))


def test_mean_reciprocal_rank():
    assert mean_reciprocal_rank([1, 2, None, 4]) == pytest.approx((1 + 0.5 + 0 + 0.25) / 4)


def test_percentiles_interpolate_like_numpy_and_report_the_max():
    values = list(range(1, 101))  # 1..100
    figures = percentiles(values)
    assert figures["p50"] == pytest.approx(50.5)
    assert figures["p95"] == pytest.approx(95.05)
    assert figures["p99"] == pytest.approx(99.01)
    assert figures["max"] == 100
    assert percentiles([7.0]) == {"p50": 7.0, "p95": 7.0, "p99": 7.0, "max": 7.0}


def test_share_of_no_confident_match():
    assert share([True, False, False, True]) == 0.5
    assert math.isnan(share([]))


def test_confusion_pairs_ignore_right_answers_and_sort_by_count():
    pairs = [("a", "b"), ("a", "b"), ("c", "a"), ("a", "a"), ("b", "a"), ("b", "a"), ("d", "e")]
    assert confusion_pairs(pairs, top=2) == [("a", "b", 2), ("b", "a", 2)]
    pairs = [("d", "e"), ("c", "a"), ("a", "a"), ("a", "a"), ("a", "a")]  # ties: by name
    assert confusion_pairs(pairs) == [("c", "a", 1), ("d", "e", 1)]


def test_coverage_accuracy_curve():
    curve = coverage_accuracy_curve(
        [0.9, 0.8, 0.3, 0.1], [True, False, True, False], thresholds=[0.0, 0.5, 0.95]
    )
    assert curve[0] == {"threshold": 0.0, "answered": 1.0, "accuracy": 0.5}
    assert curve[1] == {"threshold": 0.5, "answered": 0.5, "accuracy": 0.5}
    assert curve[2]["answered"] == 0.0 and math.isnan(curve[2]["accuracy"])
    # at the threshold itself, answered: the decision's own rule (`matched` at >=)
    [at] = coverage_accuracy_curve([0.8, 0.3], [True, False], thresholds=[0.8])
    assert (at["answered"], at["accuracy"]) == (0.5, 1.0)


def test_a_result_file_names_the_settings_it_was_measured_with_but_no_secret(tmp_path, monkeypatch):
    import json

    from worker.tools.bench.report import write_result

    monkeypatch.setenv("JEWELMATCH_LEARNING__DRAW_SEED", "3")
    monkeypatch.setenv("JEWELMATCH_AMQP__URL", "amqp://user:hunter2@broker//")
    monkeypatch.setenv("JEWELMATCH_S3__SECRET_ACCESS_KEY", "hunter2")
    monkeypatch.setenv("JEWELMATCH_REVIEW__USERS", '[{"password_hash": "hunter2"}]')
    monkeypatch.setenv("JEWELMATCH_INDEX__API_KEY", "hunter2")
    monkeypatch.setenv("JEWELMATCH_MODEL__NAME", "efficientnet-lite0")
    monkeypatch.setenv("OTHER_TOOL_SETTING", "x")
    # the .env file the settings read too, under the environment
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "JEWELMATCH_MATCHING__TARGET_PRECISION=0.97\nJEWELMATCH_LEARNING__DRAW_SEED=9\n"
        "JEWELMATCH_S3__SECRET_ACCESS_KEY=hunter2\n"
    )
    folder = tmp_path / "results" / "accuracy"  # made as needed, then written into again
    write_result(folder / "first.json", "accuracy", "jewelmatch bench", {})
    path = write_result(folder / "r.json", "accuracy", "jewelmatch bench accuracy", {})
    written = path.read_text()
    assert json.loads(written)["settings"] == {
        "JEWELMATCH_LEARNING__DRAW_SEED": "3",
        "JEWELMATCH_MATCHING__TARGET_PRECISION": "0.97",
        "JEWELMATCH_MODEL__NAME": "efficientnet-lite0",
    }
    assert "hunter2" not in written and "OTHER_TOOL_SETTING" not in written


def test_a_result_names_the_revision_it_was_measured_at_where_there_is_one(tmp_path, monkeypatch):
    import subprocess

    from worker.tools.bench.report import git_revision

    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no repository above
    checkout, elsewhere = tmp_path / "checkout", tmp_path / "elsewhere"
    checkout.mkdir(), elsewhere.mkdir()
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.org"]
    subprocess.run([*git, "init", "-q"], cwd=checkout, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "m"], cwd=checkout, check=True)
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True, text=True
    ).stdout.strip()
    monkeypatch.chdir(checkout)
    assert git_revision() == head
    monkeypatch.chdir(elsewhere)
    assert git_revision() is None
