"""Print the settings table of docs/settings.md from worker/settings.py (tests/test_docs.py
fails while they differ; scripts/update-settings-doc rewrites it)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import SecretStr
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


def rows() -> list[str]:
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for section, section_field in Settings.model_fields.items():
        for name, field in section_field.annotation.model_fields.items():
            variable = f"JEWELMATCH_{section.upper()}__{name.upper()}"
            lines.append(f"| `{variable}` | {default_of(field)} | {field.description or ''} |")
    return lines


if __name__ == "__main__":
    print("\n".join(rows()))
