"""Print the settings table of docs/settings.md from worker/settings.py (tests/test_docs.py
fails while they differ; scripts/update-settings-doc rewrites it)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from worker.settings import Settings


def default_of(field: FieldInfo) -> str:
    factory = field.default_factory
    if factory is not None and factory.__name__ == "container_cpu_limit":
        return "CPU limit of the container"
    value = factory() if factory is not None else field.default
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None:
        return "—"
    value = getattr(value, "value", value)  # enums
    text = json.dumps(value) if isinstance(value, list) else str(value)
    return f"`{text.replace(str(Path.home()), '~')}`"


def leaves(prefix: str, model: type[BaseModel]) -> list[str]:
    """One row per setting; a nested group (a ranking stage's) is walked into."""
    lines = []
    for name, field in model.model_fields.items():
        variable = f"{prefix}__{name.upper()}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines.extend(leaves(variable, annotation))
        else:
            lines.append(f"| `{variable}` | {default_of(field)} | {field.description or ''} |")
    return lines


def rows() -> list[str]:
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for section, section_field in Settings.model_fields.items():
        lines.extend(leaves(f"JEWELMATCH_{section.upper()}", section_field.annotation))
    return lines


if __name__ == "__main__":
    print("\n".join(rows()))
