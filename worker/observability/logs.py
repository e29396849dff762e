"""structlog set-up: JSON lines in production, a readable console on a terminal."""

from __future__ import annotations

import logging
import sys

import structlog

from worker.settings import LogFormat, LogSettings


class _CurrentStderr:
    """Whatever `sys.stderr` is at the moment of writing (test runners swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure_logging(settings: LogSettings, stream=None) -> None:
    """Configure structlog and the standard library's logging to write to `stream`
    (by default the process's standard error, looked up at each write)."""
    stream = stream or _CurrentStderr()

    level = logging.getLevelNamesMapping().get(settings.level.upper(), logging.INFO)
    use_json = settings.format is LogFormat.json or (
        settings.format is LogFormat.auto and not stream.isatty()
    )
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info if use_json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Libraries (kombu, boto, qdrant) log through the standard library: same stream, same format.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processor=renderer)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level, logging.WARNING))


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)


def load_settings(quiet: bool = False):
    """Settings from the environment, with logging configured by them (`quiet`: warnings
    only, for commands whose output is a table)."""
    from worker.settings import LogSettings, Settings

    settings = Settings()
    log = settings.log if not quiet else LogSettings(level="WARNING", format=settings.log.format)
    configure_logging(log)
    return settings
