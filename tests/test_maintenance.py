"""The service's background work and shutdown: whatever reads the index in the background is
done before the index closes."""

from __future__ import annotations

import threading

import numpy as np

from worker.index.base import ReferenceImage
from worker.index.memory import InMemoryIndex
from worker.matching.learner import Learner
from worker.matching.ranking import MatchPolicy
from worker.service.maintenance import Maintenance
from worker.settings import LearningSettings
from worker.vectors import VectorLayout


class _SlowIndex(InMemoryIndex):
    """An index whose references are read only once `released` is set (a refit's first read),
    so that a refit is surely in progress when the service stops."""

    def __init__(self, model_id: str, dim: int) -> None:
        super().__init__(model_id, dim)
        self.released = threading.Event()
        self.reading = threading.Event()

    def references(self):
        self.reading.set()
        self.released.wait(timeout=30)
        return super().references()


def test_stopping_waits_for_a_refit_in_progress_before_the_index_closes():
    # the bug this guards: the worker closed its index while a background refit read it,
    # the engine refused ("Already borrowed") and the worker exited 1 on SIGTERM
    dim = 8
    index = _SlowIndex("memory", dim)
    rows = np.random.default_rng(0).normal(size=(4, dim)).astype(np.float32)
    index.upsert(
        [ReferenceImage(f"p{n}", "front", f"p{n}", row, "catalog") for n, row in enumerate(rows)]
    )
    learning = LearningSettings()
    learner = Learner(index, VectorLayout(dim), learning, MatchPolicy())
    maintenance = Maintenance(learner, index, housekeeping=lambda: None)
    learner.note_changes(count=learning.refit.after_changes)  # a refit is due
    maintenance.on_idle()
    assert index.reading.wait(timeout=10)  # the refit is reading the index
    threading.Timer(0.3, index.released.set).start()

    maintenance.wait(timeout=20)

    assert learner.snapshot.report.get("references") == 4  # the refit finished first
