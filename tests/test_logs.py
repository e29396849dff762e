"""What ops read: one JSON object per line (event, level, UTC time, fields), libraries'
warnings in the same form, nothing below the level asked; a readable console on a
terminal."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from worker.observability.logs import configure_logging, get_logger
from worker.settings import LogSettings


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restored_logging():
    root = logging.getLogger()
    handlers, level, config = root.handlers[:], root.level, structlog.get_config()
    yield
    structlog.configure(**config)
    root.handlers[:], root.level = handlers, level


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_off_a_terminal_each_event_is_one_json_line(restored_logging):
    stream = io.StringIO()
    configure_logging(LogSettings(), stream)  # auto: no terminal, JSON
    log = get_logger("worker.test")
    log.info("scan.answered", scan_id="s-1", timings_ms={"embed": 12.5})
    log.debug("not.shown")
    try:
        raise ValueError("a corrupt picture")
    except ValueError:
        log.exception("scan.failed", scan_id="s-2")
    answered, failed = lines(stream)
    assert answered["event"] == "scan.answered" and answered["level"] == "info"
    assert answered["scan_id"] == "s-1" and answered["timings_ms"] == {"embed": 12.5}
    assert answered["timestamp"].endswith("Z")  # UTC, ISO 8601
    assert failed["level"] == "error" and "ValueError: a corrupt picture" in failed["exception"]


def test_libraries_warnings_come_in_the_same_form_and_their_chatter_does_not(restored_logging):
    stream = io.StringIO()
    configure_logging(LogSettings(format="json", level="DEBUG"), stream)
    logging.getLogger("kombu.connection").info("connected")  # below WARNING: not shown
    logging.getLogger("botocore").warning("retrying %s", "GetObject")
    [warning] = lines(stream)
    assert (warning["event"], warning["level"]) == ("retrying GetObject", "warning")
    assert warning["timestamp"].endswith("Z")


def test_the_level_asked_filters_the_workers_own_events(restored_logging):
    stream = io.StringIO()
    configure_logging(LogSettings(format="json", level="WARNING"), stream)
    log = get_logger("worker.test")
    log.info("scan.answered")
    log.warning("broker.unreachable")
    assert [line["event"] for line in lines(stream)] == ["broker.unreachable"]


def test_on_a_terminal_the_console_is_read_by_a_person(restored_logging):
    stream = Terminal()
    configure_logging(LogSettings(), stream)
    get_logger("worker.test").info("worker.consuming", queues=["jewelmatch.scans"])
    text = stream.getvalue()
    assert "worker.consuming" in text and not text.lstrip().startswith("{")


def test_loggers_made_at_import_follow_a_later_configuration(restored_logging):
    first, second = io.StringIO(), io.StringIO()
    log = get_logger("worker.test")  # as each module makes its own when imported
    configure_logging(LogSettings(format="json"), first)
    log.info("before")
    configure_logging(LogSettings(format="json"), second)
    log.info("after")
    assert [line["event"] for line in lines(first)] == ["before"]
    assert [line["event"] for line in lines(second)] == ["after"]


@pytest.mark.parametrize("quiet", [False, True])
def test_a_quiet_command_logs_warnings_only(restored_logging, monkeypatch, capsys, tmp_path, quiet):
    from worker.observability.logs import load_settings

    monkeypatch.setenv("JEWELMATCH_LOG__FORMAT", "json")
    monkeypatch.chdir(tmp_path)  # no .env here
    load_settings(quiet=quiet)
    log = get_logger("worker.test")
    log.info("bench.progress")
    log.warning("bench.slow")
    events = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()]
    assert events == (["bench.slow"] if quiet else ["bench.progress", "bench.slow"])
