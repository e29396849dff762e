"""What `jewelmatch demo` scans and how it reports the answers, on hand-made results (the
whole command runs in test_cli)."""

from __future__ import annotations

import re
from pathlib import Path

from rich.console import Console

from shared.contract import FailureReason, MatchResult, MatchStatus, RankedProduct
from worker.tools.demo import DemoReport, _print_report, _select_queries
from worker.tools.folders import FolderDataset, FolderProduct, QueryPhoto


def _photo(product_id: str, name: str, split: str = "") -> QueryPhoto:
    return QueryPhoto(product_id, Path(f"/data/{product_id}/{name}"), split)


def _dataset() -> FolderDataset:
    photos = {
        "p1": [_photo("p1", "a", "val"), _photo("p1", "b", "train"), _photo("p1", "c", "val")],
        "p2": [_photo("p2", "a", "train")],
        "p3": [_photo("p3", "a", "val"), _photo("p3", "b", "val")],
    }
    return FolderDataset(
        Path("/data"), [FolderProduct(p, [], queries) for p, queries in photos.items()]
    )


def _names(photos: list[QueryPhoto]) -> list[str]:
    return [f"{photo.product_id}/{photo.path.name}" for photo in photos]


def test_scans_are_taken_round_robin_over_the_products_of_the_split():
    dataset = _dataset()
    assert _names(_select_queries(dataset, None, None)) == [
        "p1/a",
        "p2/a",
        "p3/a",
        "p1/b",
        "p3/b",
        "p1/c",
    ]
    assert _names(_select_queries(dataset, None, "val")) == ["p1/a", "p3/a", "p1/c", "p3/b"]
    assert _names(_select_queries(dataset, 3, "val")) == ["p1/a", "p3/a", "p1/c"]
    assert _names(_select_queries(dataset, 0, "")) == _names(_select_queries(dataset, None, None))
    assert _select_queries(dataset, None, "test") == []


def _result(scan_id: str, status: MatchStatus, ranked: list[str]) -> MatchResult:
    matches = [
        RankedProduct(
            rank=n, product_id=p, sku=p, score=1 - n / 10, image_id="front", source="catalog"
        )
        for n, p in enumerate(ranked, start=1)
    ]
    reason = FailureReason.image_unreadable if status is MatchStatus.failed else None
    return MatchResult(scan_id=scan_id, status=status, reason=reason, matches=matches, model="tiny")


def _report() -> DemoReport:
    top = ["p1", "p2", "p3", "p4", "p5", "p6"]
    return DemoReport(
        [
            (_photo("p1", "a"), _result("s1", MatchStatus.matched, top)),
            (_photo("p3", "a"), _result("s2", MatchStatus.no_confident_match, top)),
            (_photo("p6", "a"), _result("s3", MatchStatus.no_confident_match, top)),
            (_photo("p2", "a"), _result("s4", MatchStatus.failed, [])),
            (_photo("p2", "b"), _result("s5", MatchStatus.matched, ["p2", "p1"])),
        ]
    )


def _rows(printed: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in printed.splitlines()
        if re.match(r"│\s+\d+\s+│", line)
    ]


def test_the_report_shows_each_answer_and_where_the_right_product_ranked():
    report = _report()
    assert report.correct == 2
    assert report.last_line == "demo: 2/5 scans ranked the right product first"
    console = Console(record=True, width=200)
    _print_report(report, console, show=4, exchange="jewelmatch.results")
    printed = console.export_text()
    assert "Ranked matches (top 3 of 5) published on jewelmatch.results" in printed
    assert _rows(printed) == [
        ["1", "p1", "matched", "p1 0.90", "p2 0.80", "p3 0.70", "1 ✓"],
        ["2", "p3", "not sure", "p1 0.90", "p2 0.80", "p3 0.70", "3"],
        ["3", "p6", "not sure", "p1 0.90", "p2 0.80", "p3 0.70", "6"],
        ["4", "p2", "failed", "", "", "", "-"],
    ]
    assert "(1 more scans not shown; --show N)" in printed
    assert "right product in the top 5: 3/5" in printed  # p1 and p2 first, p3 third
    assert printed.rstrip().endswith("demo: 2/5 scans ranked the right product first")


def test_a_report_shown_whole_says_nothing_is_left_out():
    console = Console(record=True, width=200)
    _print_report(_report(), console, show=5, exchange="x")
    printed = console.export_text()
    assert len(_rows(printed)) == 5 and "not shown" not in printed
    assert _rows(printed)[4] == ["5", "p2", "matched", "p2 0.90", "p1 0.80", "", "1 ✓"]
