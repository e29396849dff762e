"""Machine description and JSON output shared by every benchmark."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from dotenv import dotenv_values

from worker.settings import Settings, container_cpu_limit


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    import torch

    return {
        "cpu_model": cpu_model(),
        "cpus_usable": container_cpu_limit(),
        "cpus_online": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def git_revision() -> str | None:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                check=True,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


MEASURED_SETTINGS = re.compile(
    r"JEWELMATCH_(MODEL|LEARNING|MATCHING|TRAINING|IMAGES|INDEX)__(?!.*(KEY|URL|SECRET|TOKEN))"
)
"""The settings that can move a figure; never the brokers', the store's or the desk's
(addresses, credentials, users)."""


def settings_from_environment() -> dict[str, str]:
    """The `MEASURED_SETTINGS` set where the settings are read from (the environment, and
    the `.env` file it overrides): a figure measured with `JEWELMATCH_LEARNING__DRAW_SEED=1`
    says so in its result file."""
    env_file = Settings.model_config.get("env_file")
    from_file = dotenv_values(env_file) if env_file and Path(env_file).is_file() else {}
    found = {**from_file, **os.environ}
    return {
        name: str(value)
        for name, value in sorted(found.items())
        if value is not None and MEASURED_SETTINGS.match(name)
    }


def write_result(path: Path, benchmark: str, command: str, figures: dict) -> Path:
    """Write one benchmark's figures with the machine, the command and the settings set in
    the environment that produced them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": benchmark,
        "command": command,
        "settings": settings_from_environment(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "revision": git_revision(),
        "machine": machine(),
        "figures": figures,
    }
    path.write_text(json.dumps(document, indent=2, default=float) + "\n")
    return path
