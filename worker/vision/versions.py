"""Model versions: each `jewelmatch train` run that passes its gate is a version of the
configured model, kept under `<model cache>/versions/<version>/` (one open_clip folder per
tower, and `card.json`: data counts, seed, time, settings, the gate's figures).

`registry.json` there says, per configured model name, which versions were promoted, in order;
the last is current, and the embedder loads it (`JEWELMATCH_MODEL__VERSION=current`, the
default). `rollback` makes the previous one current again (the configured weights themselves
when none is left). The model id names the version, so each version has its own index, built
by `jewelmatch reindex` before it is promoted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from worker.errors import StartupError
from worker.files import written_whole

REGISTRY_FILE = "registry.json"
TRAINED_ON_FILE = "trained_on.json"
"""In a trained tower's folder: the URIs of the confirmed photos it trained on, which the
confidence stage never takes as labels (worker/matching/labels.py)."""
CARD_FILE = "card.json"
CURRENT = "current"
BASE = "base"


@dataclass(frozen=True)
class ModelVersion:
    version: str
    folder: Path

    @property
    def card(self) -> dict:
        return json.loads((self.folder / CARD_FILE).read_text())

    def model_name(self) -> str:
        """The `+`-joined `local-dir:` name of its towers, as the card lists them."""
        return "+".join(f"local-dir:{self.folder / tower}" for tower in self.card["towers"])


class ModelVersions:
    def __init__(self, cache_dir: Path) -> None:
        self.root = Path(cache_dir) / "versions"

    def folder(self, version: str) -> Path:
        return self.root / version

    def get(self, version: str) -> ModelVersion:
        folder = self.folder(version)
        if not (folder / CARD_FILE).is_file():
            raise StartupError(f"no model version {version!r} in {self.root}")
        return ModelVersion(version, folder)

    def write_card(self, version: str, card: dict) -> ModelVersion:
        folder = self.folder(version)
        folder.mkdir(parents=True, exist_ok=True)
        _write_json(folder / CARD_FILE, card)
        return ModelVersion(version, folder)

    def promoted(self, base_name: str) -> list[str]:
        return list(self._registry().get(base_name, {}).get("promoted", []))

    def current(self, base_name: str) -> ModelVersion | None:
        promoted = self.promoted(base_name)
        return self.get(promoted[-1]) if promoted else None

    def promote(self, base_name: str, version: str) -> None:
        self.get(version)  # exists
        registry = self._registry()
        entry = registry.setdefault(base_name, {"promoted": [], "rolled_back": []})
        entry["promoted"] = [v for v in entry["promoted"] if v != version] + [version]
        _write_json(self.root / REGISTRY_FILE, registry)

    def rollback(self, base_name: str) -> str | None:
        """Make the previous version current; returns the version now current (None: the
        configured weights)."""
        registry = self._registry()
        entry = registry.get(base_name)
        if not entry or not entry["promoted"]:
            raise StartupError(f"no promoted version of {base_name!r} to roll back")
        entry.setdefault("rolled_back", []).append(entry["promoted"].pop())
        _write_json(self.root / REGISTRY_FILE, registry)
        return entry["promoted"][-1] if entry["promoted"] else None

    def _registry(self) -> dict:
        path = self.root / REGISTRY_FILE
        return json.loads(path.read_text()) if path.is_file() else {}


def versioned_name(name: str, version: str, cache_dir: Path) -> str:
    """The model name the embedder loads: `name` itself (version `base`, or `current` when
    none is promoted), or a version's towers."""
    if version == BASE:
        return name
    versions = ModelVersions(cache_dir)
    chosen = versions.current(name) if version == CURRENT else versions.get(version)
    return chosen.model_name() if chosen else name


def read_trained_on(model_folder: Path) -> frozenset[str]:
    """The photos a tower trained on (none for weights as configured)."""
    path = model_folder / TRAINED_ON_FILE
    return frozenset(json.loads(path.read_text())["uris"]) if path.is_file() else frozenset()


def write_trained_on(model_folder: Path, uris: list[str]) -> None:
    _write_json(model_folder / TRAINED_ON_FILE, {"uris": sorted(uris)})


def _write_json(path: Path, value: dict) -> None:
    """Whole or not at all: a worker starting meanwhile reads the old file or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_whole(path) as partial:
        partial.write_text(json.dumps(value, indent=2) + "\n")
