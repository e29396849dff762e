"""When the learner refits (worker/matching/learner.py), on the in-memory index and a clock
the test sets: after `refit.after_changes` changes, after `refit.seconds` once anything changed
(scans only, too), and at once when enough scans first teach the photo domain; never with
nothing changed, never while a refit runs."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest

from worker.index.base import ReferenceImage
from worker.index.memory import InMemoryIndex
from worker.matching import learner as learner_module
from worker.matching.learner import Learner
from worker.matching.ranking import MatchPolicy
from worker.settings import LearningSettings
from worker.vectors import VectorLayout

DIM = 8
AFTER, SECONDS, MIN_SCANS = 5, 100.0, 20
NOW = 1_000_000.0


def _learner(monkeypatch, centring: bool = True) -> Learner:
    index = InMemoryIndex("memory", DIM)
    rows = np.random.default_rng(0).normal(size=(3, DIM)).astype(np.float32)
    index.upsert([ReferenceImage(f"p{n}", "front", f"p{n}", row) for n, row in enumerate(rows)])
    learning = LearningSettings(
        refit={"after_changes": AFTER, "seconds": SECONDS},
        centring={"enabled": centring, "min_scans": MIN_SCANS},
    )
    learner = Learner(index, VectorLayout(DIM), learning, MatchPolicy())
    monkeypatch.setattr(learner_module.time, "time", lambda: NOW)
    return learner


def _fitted(learner: Learner, seconds_ago: float) -> None:
    learner.snapshot = replace(learner.snapshot, fitted_at=NOW - seconds_ago)


def _due(learner: Learner) -> bool:
    started = learner.refit_in_background_if_due()
    learner.wait(timeout=20)
    return started


def test_a_learner_with_nothing_changed_never_refits(monkeypatch):
    learner = _learner(monkeypatch)  # its first snapshot was never fitted: fitted_at 0
    assert not _due(learner)


def test_a_refit_is_due_after_the_changes_asked_and_not_one_before(monkeypatch):
    learner = _learner(monkeypatch)
    _fitted(learner, 0)
    learner.note_changes(["p0"], count=AFTER - 1)
    assert not _due(learner)
    learner.note_changes(["p1"])
    assert _due(learner)
    assert learner.snapshot.fitted_at == NOW  # the refit ran and swapped its snapshot in
    assert not _due(learner)  # and counted from nothing again


@pytest.mark.parametrize("count", [0, 1], ids=["scans only", "a change"])
def test_anything_changed_is_refitted_once_the_seconds_have_passed(monkeypatch, count):
    learner = _learner(monkeypatch)
    _fitted(learner, SECONDS - 1)
    learner.note_changes(count=count)
    assert not _due(learner)
    _fitted(learner, SECONDS)
    assert _due(learner)
    _fitted(learner, 10 * SECONDS)
    assert not _due(learner)  # the refit took in everything changed


def test_the_refit_that_first_learns_the_photo_domain_is_due_at_once(monkeypatch):
    learner = _learner(monkeypatch)
    _fitted(learner, 0)
    learner.note_scans(MIN_SCANS - 1)
    assert not _due(learner)
    learner.note_scans(1)
    assert _due(learner)


def test_without_centring_scans_wait_for_the_seconds(monkeypatch):
    learner = _learner(monkeypatch, centring=False)
    _fitted(learner, 0)
    learner.note_scans(10 * MIN_SCANS)
    assert not _due(learner)


def test_a_confirmed_photo_makes_its_product_no_longer_new_at_once(monkeypatch):
    learner = _learner(monkeypatch)
    learner.note_photo("p1")
    learner.note_photo("p1")
    assert learner.snapshot.new_products.with_photos == {"p1"}


def test_no_second_refit_starts_while_one_runs(monkeypatch):
    learner = _learner(monkeypatch)
    reading, released = threading.Event(), threading.Event()
    references = learner.index.references

    def slow_references():
        reading.set()
        released.wait(timeout=20)
        return references()

    monkeypatch.setattr(learner.index, "references", slow_references)
    learner.note_changes(count=AFTER)
    assert learner.refit_in_background_if_due()
    assert reading.wait(timeout=20)
    learner.note_changes(count=AFTER)
    assert not learner.refit_in_background_if_due()
    released.set()
    learner.wait(timeout=20)
    assert learner.refit_in_background_if_due()  # the changes since are still counted
    learner.wait(timeout=20)
