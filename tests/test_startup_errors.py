"""What a person sees when a command cannot start: one line that says what to fix, exit
status 2, never a traceback; and a broker out of reach named by its address."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from worker.index.edge import make_current
from worker.settings import S3Settings
from worker.tools.bench.servers import free_port
from worker.tools.seed import object_writer

EXIT_STARTUP = 2


def jewelmatch(*args: str, env: dict[str, str] | None = None, stdin: str | None = None, **kw):
    """`python -m worker ARGS` in a clean environment (no JEWELMATCH_* of the shell)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JEWELMATCH_")}
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env={**clean, "JEWELMATCH_LOG__FORMAT": "json", **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
        **kw,
    )


def assert_one_line(done: subprocess.CompletedProcess, *expected: str) -> None:
    assert done.returncode == EXIT_STARTUP, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("jewelmatch: "), done.stderr[-3000:]
    for text in expected:
        assert text in last, last


def tiny_worker_env(tiny_model_dir: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "JEWELMATCH_MODEL__NAME": f"local-dir:{tiny_model_dir}",
        "JEWELMATCH_MODEL__CACHE_DIR": str(tiny_model_dir.parent / "cache"),
        "JEWELMATCH_MODEL__THREADS": "1",
        "JEWELMATCH_INDEX__PATH": str(tmp_path / "index"),
        "JEWELMATCH_OPS__HTTP_PORT": "0",
        **extra,
    }


def test_an_invalid_setting_is_named_as_its_variable():
    done = jewelmatch("worker", env={"JEWELMATCH_OPS__HTTP_PORT": "eighty"})
    assert_one_line(done, "invalid settings", "JEWELMATCH_OPS__HTTP_PORT")


def test_a_missing_model_is_one_line(tmp_path):
    done = jewelmatch("worker", env={"JEWELMATCH_MODEL__NAME": f"local-dir:{tmp_path / 'nowhere'}"})
    assert_one_line(done, "no model in", "JEWELMATCH_MODEL__NAME")


def test_a_folder_that_is_not_a_data_set_is_one_line(tmp_path):
    (tmp_path / "p001").mkdir()  # a product folder without images
    done = jewelmatch("bench", "accuracy", "--data", str(tmp_path), "--confirmed", "0")
    assert_one_line(done, f"{tmp_path} holds no product folders", "catalog_*")
    done = jewelmatch("bench", "accuracy", "--data", str(tmp_path / "nowhere"))
    assert_one_line(done, f"{tmp_path / 'nowhere'} is not a folder")


def test_a_taken_ops_port_is_one_line(tmp_path, tiny_model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = tiny_worker_env(
            tiny_model_dir,
            tmp_path,
            JEWELMATCH_OPS__HTTP_HOST="127.0.0.1",
            JEWELMATCH_OPS__HTTP_PORT=str(port),
        )
        done = jewelmatch("worker", env=env)
    assert_one_line(done, f"127.0.0.1:{port}", "JEWELMATCH_OPS__HTTP_PORT")


def test_a_backup_file_in_a_missing_folder_is_one_line(tmp_path, tiny_model_dir):
    missing = tmp_path / "no-such-folder" / "index.jsonl.gz"
    env = tiny_worker_env(tiny_model_dir, tmp_path, JEWELMATCH_INDEX__BACKUP_FILE=str(missing))
    done = jewelmatch("worker", env=env)
    assert_one_line(done, "JEWELMATCH_INDEX__BACKUP_FILE", str(missing.parent))


def test_a_worker_whose_model_is_not_the_one_in_service_is_one_line(tmp_path, tiny_model_dir):
    (tmp_path / "index").mkdir()
    make_current(tmp_path / "index", "another-model")  # what `jewelmatch reindex` switched to
    env = tiny_worker_env(
        tiny_model_dir,
        tmp_path,
        JEWELMATCH_AMQP__URL=f"amqp://guest:guest@127.0.0.1:{free_port()}//",
        JEWELMATCH_AMQP__CONNECT_TIMEOUT_SECONDS="2",  # were it to go on: no broker
    )
    assert_one_line(
        jewelmatch("worker", env=env), "the index in service is 'another-model'", "reindex"
    )


def test_a_worker_logged_in_as_a_confirming_user_is_one_line(tmp_path, tiny_model_dir):
    env = tiny_worker_env(
        tiny_model_dir,
        tmp_path,
        JEWELMATCH_AMQP__URL=f"amqp://inventory:pw@127.0.0.1:{free_port()}//",
        JEWELMATCH_AMQP__CONFIRM_USERS='["inventory"]',
        JEWELMATCH_AMQP__CONNECT_TIMEOUT_SECONDS="2",  # were it to go on: no broker
    )
    done = jewelmatch("worker", env=env)
    assert_one_line(done, "logs in to the broker as 'inventory'", "CONFIRM_USERS")


def test_a_broker_never_reached_is_named_and_the_worker_gives_up_when_told(
    tmp_path, tiny_model_dir
):
    env = tiny_worker_env(
        tiny_model_dir,
        tmp_path,
        JEWELMATCH_AMQP__URL="amqp://jm:secret-pw@nowhere.invalid:5999/shop",
        JEWELMATCH_AMQP__CONNECT_TIMEOUT_SECONDS="2",
    )
    done = jewelmatch("worker", env=env)
    assert_one_line(done, "cannot connect to nowhere.invalid:5999 (vhost shop)", "2 s")
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    unreachable = [e for e in events if e.get("event") == "broker.unreachable"]
    assert unreachable and all(
        e["message"].startswith("cannot connect to nowhere.invalid:5999 (vhost shop): ")
        for e in unreachable
    )
    assert not [e for e in events if e.get("event") == "broker.connection_lost"]
    assert "secret-pw" not in done.stderr  # never the password


def test_hash_password_reads_standard_input_and_never_argv():
    from worker.review.auth import password_matches

    done = jewelmatch("hash-password", stdin="a-long-desk-password\n")
    assert done.returncode == 0, done.stderr
    assert password_matches("a-long-desk-password", done.stdout.strip())
    refused = jewelmatch("hash-password", "--password", "in-argv", stdin="x\n")
    assert refused.returncode != 0 and "No such option" in refused.stderr
    assert_one_line(jewelmatch("hash-password", stdin="\n"), "empty password")


@pytest.mark.parametrize("command", ["worker", "review"])
def test_help_names_the_main_settings_and_points_to_all_of_them(command):
    done = jewelmatch(command, "--help", env={"COLUMNS": "120"})
    assert done.returncode == 0
    assert "JEWELMATCH_AMQP__URL" in done.stdout and "docs/settings.md" in done.stdout


def test_seeding_writes_to_the_local_back_end(tmp_path):
    put = object_writer(S3Settings(backend="local", local_root=tmp_path))
    put("catalog-images", "demo/p1/front.png", b"png bytes")
    put("catalog-images", "demo/p1/back.png", b"more bytes")  # into a folder already made
    assert (tmp_path / "catalog-images/demo/p1/front.png").read_bytes() == b"png bytes"
    assert (tmp_path / "catalog-images/demo/p1/back.png").read_bytes() == b"more bytes"


def test_seeding_an_s3_store_that_refuses_is_one_line(tmp_path):
    from worker.tools.bench.servers import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens
    done = jewelmatch(
        "seed-demo",
        env={
            "JEWELMATCH_S3__ENDPOINT_URL": endpoint,
            "JEWELMATCH_S3__CONNECT_TIMEOUT_SECONDS": "0.5",
            "JEWELMATCH_S3__MAX_ATTEMPTS": "1",
            "AWS_ACCESS_KEY_ID": "x",
            "AWS_SECRET_ACCESS_KEY": "y",
        },
        cwd=tmp_path,
    )
    assert_one_line(done, f"cannot upload to bucket 'catalog-images' at {endpoint}: ")


@pytest.mark.parametrize(
    "old, new",
    [
        ("JEWELMATCH_LEARNING__WHITEN_DIM", "JEWELMATCH_LEARNING__WHITENING__DIM"),
        (
            "JEWELMATCH_LEARNING__NEW_PRODUCTS_FIRST",
            "JEWELMATCH_LEARNING__NEW_PRODUCTS_FIRST__ENABLED",
        ),
    ],
)
def test_a_learning_setting_of_an_earlier_release_names_its_new_name(old, new):
    done = jewelmatch("worker", env={old: "false" if "FIRST" in old else "64"})
    assert_one_line(done, old, new)
