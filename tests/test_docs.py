"""README stays true to the code: every setting documented, the test command is CI's."""

from pathlib import Path

from pydantic import BaseModel

from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def setting_variables() -> list[str]:
    names = []
    for section, field in Settings.model_fields.items():
        assert issubclass(field.annotation, BaseModel)
        names += [
            f"JEWELMATCH_{section.upper()}__{name.upper()}"
            for name in field.annotation.model_fields
        ]
    return names


def test_readme_documents_every_setting():
    missing = [name for name in setting_variables() if f"`{name}`" not in README]
    assert missing == []


def test_ci_runs_the_test_command_the_readme_gives():
    test_command = "scripts/dev-setup && .venv/bin/python -m pytest"
    assert test_command in README.split("## How it works")[0]
    assert test_command in (ROOT / ".ci" / "run").read_text()
