"""The model versions' registry on its own (worker/vision/versions.py): which version is
current, promotion, rollback, the name the embedder loads, and `jewelmatch model list` and
`rollback` where no index is needed; the whole train-promote-rollback path runs in
test_train_job.py."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from worker.cli import app
from worker.errors import StartupError
from worker.vision.versions import (
    BASE,
    CURRENT,
    ModelVersions,
    read_trained_on,
    versioned_name,
    write_trained_on,
)

NAME = "local-dir:/models/lite1"


@pytest.fixture
def versions(tmp_path) -> ModelVersions:
    versions = ModelVersions(tmp_path / "cache" / "not-made-yet")
    for version in ("v1", "v2", "v3"):
        versions.write_card(version, {"towers": ["lite1", "lite2"], "seed": 0})
    return versions


def test_a_card_is_written_under_a_cache_folder_that_did_not_exist(versions):
    assert versions.get("v1").card == {"towers": ["lite1", "lite2"], "seed": 0}
    assert versions.get("v1").model_name() == "+".join(
        f"local-dir:{versions.root / 'v1' / tower}" for tower in ("lite1", "lite2")
    )
    with pytest.raises(StartupError, match="no model version 'v9'"):
        versions.get("v9")
    versions.write_card("v1", {"towers": ["lite1"], "gate": {"passed": True}})  # judged since
    assert versions.get("v1").card["gate"] == {"passed": True}


def test_the_last_version_promoted_is_current_and_promoted_again_moves_to_the_end(versions):
    assert versions.current(NAME) is None
    for version in ("v1", "v2", "v1"):
        versions.promote(NAME, version)
    assert versions.promoted(NAME) == ["v2", "v1"]
    assert versions.current(NAME).version == "v1"
    assert versions.promoted("another model") == []
    with pytest.raises(StartupError):
        versions.promote(NAME, "v9")  # no such version: the registry is left alone
    assert versions.promoted(NAME) == ["v2", "v1"]


def test_rollback_returns_to_the_previous_version_then_to_the_configured_weights(versions):
    for version in ("v1", "v2", "v3"):
        versions.promote(NAME, version)
    assert versions.rollback(NAME) == "v2"
    assert versions.rollback(NAME) == "v1"
    assert versions.rollback(NAME) is None
    with pytest.raises(StartupError, match="no promoted version"):
        versions.rollback(NAME)
    registry = json.loads((versions.root / "registry.json").read_text())
    assert registry[NAME] == {"promoted": [], "rolled_back": ["v3", "v2", "v1"]}


def test_the_embedder_loads_the_configured_weights_the_current_version_or_one_named(versions):
    cache = versions.root.parent
    assert versioned_name(NAME, CURRENT, cache) == NAME  # none promoted yet
    versions.promote(NAME, "v2")
    assert versioned_name(NAME, CURRENT, cache) == versions.get("v2").model_name()
    assert versioned_name(NAME, BASE, cache) == NAME
    assert versioned_name(NAME, "v3", cache) == versions.get("v3").model_name()
    with pytest.raises(StartupError):
        versioned_name(NAME, "v9", cache)


def test_the_photos_a_tower_trained_on_are_kept_beside_it(tmp_path):
    tower = tmp_path / "v1" / "lite1"
    assert read_trained_on(tower) == frozenset()  # weights as configured trained on none
    write_trained_on(tower, ["s3://scans/b.jpg", "s3://scans/a.jpg"])
    assert read_trained_on(tower) == {"s3://scans/a.jpg", "s3://scans/b.jpg"}
    assert sorted(p.name for p in tower.iterdir()) == ["trained_on.json"]


@pytest.fixture
def configured(tmp_path, monkeypatch) -> ModelVersions:
    """The versions of NAME as the commands see them: its cache and index under tmp_path."""
    monkeypatch.setenv("JEWELMATCH_MODEL__NAME", NAME)
    monkeypatch.setenv("JEWELMATCH_MODEL__CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("JEWELMATCH_INDEX__PATH", str(tmp_path / "index"))
    return ModelVersions(tmp_path / "cache")


def test_model_list_shows_each_version_its_gate_and_which_is_current(configured):
    for version, passed in (("v1", True), ("v2", True), ("v3", False)):
        created = f"2026-12-0{version[1]}"
        configured.write_card(
            version, {"version": version, "created_at": created, "gate": {"passed": passed}}
        )
    for version in ("v1", "v2"):
        configured.promote(NAME, version)
    result = CliRunner().invoke(app, ["model", "list"])
    assert result.exit_code == 0, result.output
    assert [line.split() for line in result.output.splitlines()] == [
        ["v1", "2026-12-01", "gate", "passed", "promoted", "before"],
        ["v2", "2026-12-02", "gate", "passed", "current"],
        ["v3", "2026-12-03", "gate", "failed"],
    ]


def test_a_rollback_with_nothing_promoted_is_a_usage_error(configured):
    result = CliRunner().invoke(app, ["model", "rollback"])
    assert result.exit_code == 2 and "no promoted version to roll back" in result.output


@pytest.mark.parametrize(
    ("card", "refusal"),
    [
        (
            {"base_model": "local-dir:/models/other", "gate": {"passed": True}},
            "not of the configured",
        ),
        ({"base_model": NAME, "gate": {"passed": True}}, "no index in service to re-embed"),
    ],
    ids=["another-base-model", "no-index"],
)
def test_a_promotion_that_cannot_be_done_is_a_usage_error_and_promotes_nothing(
    configured, card, refusal
):
    configured.write_card("v1", {"version": "v1", "towers": ["lite1"], **card})
    result = CliRunner().invoke(app, ["model", "promote", "v1"])
    assert result.exit_code == 2 and refusal in " ".join(result.output.replace("│", " ").split())
    assert configured.promoted(NAME) == []
