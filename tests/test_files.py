"""`written_whole`: the model versions file, the backup, the ONNX export and the training
checkpoint appear whole or not at all."""

from pathlib import Path

import pytest

from worker.files import written_whole


def test_the_new_content_appears_only_when_the_block_ends(tmp_path: Path):
    target = tmp_path / "versions.json"
    target.write_text("old")
    with written_whole(target) as partial:
        partial.write_text("new")
        assert target.read_text() == "old"  # a reader meanwhile sees the old file
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["versions.json"]


def test_a_write_that_fails_leaves_the_old_file_and_no_partial(tmp_path: Path):
    target = tmp_path / "index.jsonl.gz"
    target.write_text("old")
    with pytest.raises(OSError, match="disk full"), written_whole(target) as partial:
        partial.write_text("half of it")
        raise OSError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.jsonl.gz"]


def test_two_writers_never_share_a_partial_file(tmp_path: Path):
    target = tmp_path / "model.onnx"
    with written_whole(target) as first, written_whole(target) as second:
        assert first != second and first.parent == second.parent == tmp_path
        first.write_text("first")
        second.write_text("second")
    assert target.read_text() == "first"  # the last rename wins, and it is whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
