"""The service's background work and shutdown: whatever reads the index in the background is
done before the index closes; the worker's own backup of its index is written when due."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import structlog
from prometheus_client import REGISTRY

from worker.errors import StartupError
from worker.index.base import ProductState, ReferenceImage
from worker.index.memory import InMemoryIndex
from worker.matching.learner import Learner
from worker.matching.ranking import MatchPolicy
from worker.service.backup import BackupFile, backup_if_due, scheduled_backup
from worker.service.maintenance import HOUSEKEEPING_SECONDS, Maintenance
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


def small_index(products: int = 3) -> InMemoryIndex:
    index = InMemoryIndex("memory", 8)
    rows = np.random.default_rng(1).normal(size=(products, 8)).astype(np.float32)
    index.upsert(
        [ReferenceImage(f"p{n}", "front", f"p{n}", row, "catalog") for n, row in enumerate(rows)]
    )
    index.set_product_state(ProductState("p0", 7))
    return index


def test_the_backup_is_written_when_missing_or_old_and_not_before(tmp_path):
    path = tmp_path / "index.jsonl.gz"
    index = small_index()
    assert backup_if_due(index, path, hours=24).images == 3  # missing: written
    assert backup_if_due(index, path, hours=24) is None  # fresh: left alone
    a_day_ago = time.time() - 24 * 3600 - 1
    os.utime(path, (a_day_ago, a_day_ago))
    index.upsert([ReferenceImage("p9", "front", "p9", np.ones(8, np.float32), "catalog")])
    assert backup_if_due(index, path, hours=24).images == 4  # old: written again
    assert BackupFile(path).summary.images == 4
    assert not [p for p in tmp_path.iterdir() if p != path]  # nothing left beside it


def test_the_worker_backs_up_its_index_in_the_background_and_survives_a_failure(tmp_path):
    path = tmp_path / "backups" / "index.jsonl.gz"
    with pytest.raises(StartupError, match="no such folder"):
        scheduled_backup(small_index(), path, hours=24)
    path.parent.mkdir()
    index = small_index()
    learner = Learner(index, VectorLayout(8), LearningSettings(), MatchPolicy())
    backup = scheduled_backup(index, path, hours=24)
    maintenance = Maintenance(learner, index, housekeeping=lambda: None, backup=backup)
    with structlog.testing.capture_logs() as logs:
        maintenance.on_idle()
        maintenance.wait(timeout=20)  # the backup thread is joined before the index closes
    assert BackupFile(path).summary.images == 3
    assert [e["images"] for e in logs if e["event"] == "index.backed_up"] == [3]
    written = REGISTRY.get_sample_value("jewelmatch_index_backup_timestamp_seconds")
    assert written == path.stat().st_mtime  # what the alert on a stale backup reads
    [state] = BackupFile(path).all_product_states()
    assert (state.product_id, state.version) == ("p0", 7)

    path.unlink()
    path.parent.rmdir()  # the folder gone while the worker runs: logged, the worker goes on
    again = Maintenance(learner, index, housekeeping=lambda: None, backup=backup)
    with structlog.testing.capture_logs() as logs:
        again.on_idle()
        again.wait(timeout=20)
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["index.backup_failed"]


def test_the_first_idle_round_keeps_house_even_just_after_the_machine_started(monkeypatch):
    """The monotonic clock counts from the machine's boot: a worker started in a fresh
    container's first hour still purges and backs up on its first idle round."""
    index = small_index()
    learner = Learner(index, VectorLayout(8), LearningSettings(), MatchPolicy())
    rounds: list[float] = []
    maintenance = Maintenance(learner, index, housekeeping=lambda: rounds.append(1.0))
    monkeypatch.setattr(time, "monotonic", lambda: 12.0)  # 12 s after boot
    maintenance.on_idle()
    maintenance.on_idle()  # within the hour: not again
    monkeypatch.undo()
    maintenance.wait(timeout=20)
    assert rounds == [1.0]


def test_house_is_kept_again_an_hour_later_but_a_backup_still_running_is_not_doubled(
    monkeypatch,
):
    index = small_index()
    learner = Learner(index, VectorLayout(8), LearningSettings(), MatchPolicy())
    rounds: list[float] = []
    started: list[int] = []
    release = threading.Event()

    def slow_backup() -> None:
        started.append(1)
        release.wait(timeout=20)

    maintenance = Maintenance(learner, index, lambda: rounds.append(1.0), slow_backup)
    clock = [12.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    maintenance.on_idle()
    clock[0] += HOUSEKEEPING_SECONDS  # an hour later, the first backup still writing
    maintenance.on_idle()
    monkeypatch.undo()
    release.set()
    maintenance.wait(timeout=20)
    assert rounds == [1.0, 1.0]
    assert started == [1]


class _FailingIndex(InMemoryIndex):
    """An index whose search structures are due but cannot be built, or cannot be asked."""

    def __init__(self, model_id: str, dim: int, fails_at: str) -> None:
        super().__init__(model_id, dim)
        self.fails_at = fails_at

    def needs_optimizing(self) -> bool:
        if self.fails_at == "check":
            raise ConnectionError("the index is away")
        return True

    def optimize(self) -> bool:
        raise OSError("no space left on device")


@pytest.mark.parametrize("fails_at", ["check", "build"])
def test_background_work_that_fails_is_logged_and_the_worker_goes_on(fails_at):
    index = _FailingIndex("m", 8, fails_at)
    learner = Learner(index, VectorLayout(8), LearningSettings(), MatchPolicy())

    def housekeeping() -> None:
        raise ConnectionError("the scan records cannot be purged now")

    maintenance = Maintenance(learner, index, housekeeping)
    with structlog.testing.capture_logs() as logs:
        maintenance.on_idle()  # raises nothing
        maintenance.wait(timeout=20)
    warned = sorted(e["event"] for e in logs if e["log_level"] == "warning")
    failed = "index.optimize_check_failed" if fails_at == "check" else "index.optimize_failed"
    assert warned == sorted([failed, "housekeeping.failed"])
