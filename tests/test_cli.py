"""The `jewelmatch` command as a person runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tests.support.tiny_model import use_tiny_model, write_tiny_model
from worker.amqp.definitions import ROLES, password_variable
from worker.cli import app, main
from worker.index.edge import current_model
from worker.tools.synthetic import write_catalog
from worker.tools.terminal import FOLDER_BUCKET

runner = CliRunner()


def test_schema_command_writes_one_schema_per_message(tmp_path):
    result = runner.invoke(app, ["schema", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(
        [
            "bag.photographed.schema.json",
            "product.created.schema.json",
            "product.updated.schema.json",
            "product.deleted.schema.json",
            "match.confirmed.schema.json",
            "match.result.schema.json",
            "catalog.outcome.schema.json",
            "asyncapi.json",
        ]
    )
    schema = json.loads((tmp_path / "bag.photographed.schema.json").read_text())
    assert "scan_id" in schema["required"]


def test_python_dash_m_worker_is_the_same_command():
    result = subprocess.run(
        [sys.executable, "-m", "worker", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("worker", "demo", "ingest", "scan", "schema"):
        assert command in result.stdout


@pytest.mark.parametrize(
    ("group", "summary"),
    [
        ([], "Passwords come from JEWELMATCH_RABBITMQ_PASSWORD_<USER> variables; users without"),
        (["bench"], "takes (the confidence's labels included), on vectors of a deployment's"),
        (["model"], "(or the configured weights): the index of that model"),
    ],
)
def test_command_lists_show_each_summary_as_flowing_text(group, summary):
    """Not broken where its docstring's lines break (Typer's rich help kept those breaks)."""
    result = CliRunner().invoke(app, [*group, "--help"], terminal_width=240, env={"COLUMNS": "240"})
    assert result.exit_code == 0, result.output
    assert summary in result.output


def test_the_command_sets_the_gpu_workspace_that_deterministic_training_needs(monkeypatch):
    """cuBLAS reads it once per process, so it is set before any command runs."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with pytest.raises(SystemExit):
        main(["--help"])
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # a person's own choice stays
    with pytest.raises(SystemExit):
        main(["--help"])
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_ingest_then_scan_from_a_terminal(tmp_path, tiny_model_dir, monkeypatch):
    write_catalog(tmp_path / "data", count=4, scans_per_product=1)
    (tmp_path / "data/manifest.csv").write_text(
        "product_id,coarse_class\np001,rings\np002,rings\np003,pendants\np004,pendants\n"
    )
    use_tiny_model(monkeypatch, tiny_model_dir, tmp_path / "index")
    result = runner.invoke(app, ["ingest", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    assert "ingested 4 reference images" in result.output
    result = runner.invoke(app, ["scan", str(tmp_path / "data/p003/catalog_0.png"), "--top-k", "2"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if re.search(r"│\s+[12]\s+│", line)]
    assert len(rows) == 2 and "p003" in rows[0]
    without_detail = _first_score(result.output)
    # given the folder, the detail stage compares the photo with the candidates' images: the
    # very picture shares all its keypoints (82) with itself: 0.02 × ln(83) = 0.088
    photo = str(tmp_path / "data/p003/catalog_0.png")
    result = runner.invoke(app, ["scan", photo, "--top-k", "2", "--folder", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    assert _first_score(result.output) - without_detail > 0.075
    result = runner.invoke(app, ["scan", photo, "--top-k", "4", "--category", "rings"])
    assert result.exit_code == 0, result.output
    rows = [line.split("│")[2].strip() for line in result.output.splitlines() if "│ p0" in line]
    assert sorted(rows) == ["p001", "p002"]  # the manifest's rings only


def test_ingest_names_the_images_it_cannot_read_and_stores_the_rest(
    tmp_path, tiny_model_dir, monkeypatch
):
    data = tmp_path / "data"
    write_catalog(data, count=4, scans_per_product=1)
    (data / "p001/catalog_9.png").write_bytes(b"not an image")  # beside a good one
    good = (data / "p002/catalog_0.png").read_bytes()
    (data / "p002/catalog_0.png").write_bytes(good[: len(good) // 3])  # its only image, cut
    use_tiny_model(monkeypatch, tiny_model_dir, tmp_path / "index")
    result = runner.invoke(app, ["ingest", str(data)])
    assert result.exit_code == 1, result.output
    assert "ingested 3 reference images" in result.output
    assert f"left out {data / 'p001/catalog_9.png'}: not an image" in result.output
    assert f"left out {data / 'p002/catalog_0.png'}: not a readable image" in result.output
    result = runner.invoke(app, ["scan", str(data / "p001/catalog_0.png"), "--top-k", "4"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if re.search(r"│\s+\d\s+│", line)]
    assert len(rows) == 3 and "p001" in rows[0]  # stored with its readable image; no p002

    result = runner.invoke(app, ["scan", str(data / "p002/catalog_0.png")])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"cannot scan {data / 'p002/catalog_0.png'}: not a readable image: "
        "the data is corrupt or truncated"
    )
    result = runner.invoke(app, ["scan", str(data / "p009.png")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_reindex_from_a_terminal_builds_beside_and_switches_only_when_told(
    tmp_path, tiny_model_dir, monkeypatch
):
    write_catalog(tmp_path / "store" / FOLDER_BUCKET, count=3, scans_per_product=0)
    use_tiny_model(monkeypatch, tiny_model_dir, tmp_path / "index")
    monkeypatch.setenv("JEWELMATCH_S3__BACKEND", "local")  # the folder as the bucket ingest named
    monkeypatch.setenv("JEWELMATCH_S3__LOCAL_ROOT", str(tmp_path / "store"))
    monkeypatch.setenv("JEWELMATCH_S3__ALLOWED_BUCKETS", f'["{FOLDER_BUCKET}"]')
    result = runner.invoke(app, ["ingest", str(tmp_path / "store" / FOLDER_BUCKET)])
    assert result.exit_code == 0, result.output
    in_service = current_model(tmp_path / "index")
    other = write_tiny_model(tmp_path / "other-model", seed=5)
    monkeypatch.setenv("JEWELMATCH_MODEL__NAME", f"local-dir:{other}")

    result = runner.invoke(app, ["reindex", in_service, "--no-switch"])
    assert result.exit_code == 0, result.output
    assert "re-embedded 3 of 3 images" in result.output and "now current" not in result.output
    assert current_model(tmp_path / "index") == in_service  # built beside, not in service

    result = runner.invoke(app, ["reindex", in_service])
    assert result.exit_code == 0, result.output
    assert "now current" in result.output
    switched = current_model(tmp_path / "index")
    assert switched not in (None, in_service)

    result = runner.invoke(app, ["reindex", switched])
    assert result.exit_code == 2 and "nothing to do" in result.output
    result = runner.invoke(app, ["reindex", "no-such-model"])
    assert result.exit_code == 2 and "no index of model 'no-such-model'" in result.output
    assert current_model(tmp_path / "index") == switched


@pytest.mark.parametrize("command", [["backup", "out.jsonl.gz"], ["train"]])
def test_commands_on_the_index_in_service_say_when_there_is_none(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JEWELMATCH_INDEX__PATH", str(tmp_path / "index"))
    result = runner.invoke(app, command)
    assert result.exit_code == 2 and "no index in service" in result.output


def test_train_on_an_index_with_no_confirmed_match_says_so_and_keeps_no_version(
    tmp_path, tiny_model_dir, monkeypatch
):
    write_catalog(tmp_path / "data", count=3, scans_per_product=1)
    use_tiny_model(monkeypatch, tiny_model_dir, tmp_path / "index")
    assert runner.invoke(app, ["ingest", str(tmp_path / "data")]).exit_code == 0
    result = runner.invoke(app, ["train"])
    assert result.exit_code == 1 and "no confirmed matches to train on" in result.output
    listed = runner.invoke(app, ["model", "list"])
    assert (listed.exit_code, listed.output) == (0, "")  # no version kept


def test_prepare_model_exports_the_configured_runtimes_files_once(tmp_path, monkeypatch):
    """What the Dockerfile runs at build time, so that a worker never exports at start."""
    model = write_tiny_model(tmp_path / "model")
    monkeypatch.setenv("JEWELMATCH_MODEL__NAME", f"local-dir:{model}")
    monkeypatch.setenv("JEWELMATCH_MODEL__CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("JEWELMATCH_MODEL__RUNTIME", "openvino")

    def exported() -> list[str]:
        return sorted(path.name for path in tmp_path.rglob("*.onnx"))

    assert exported() == []
    result = runner.invoke(app, ["prepare-model"])
    assert result.exit_code == 0, result.output
    last = result.output.splitlines()[-1]
    assert re.fullmatch(r"model-\w+ on openvino: 48-d, ready in \d+\.\d s", last)
    [onnx] = exported()
    assert "model.exported" in result.output
    again = runner.invoke(app, ["prepare-model"])
    assert again.exit_code == 0 and exported() == [onnx]
    assert "model.exported" not in again.output  # the export is reused


def test_rabbitmq_definitions_name_each_role_left_without_a_password(tmp_path, monkeypatch):
    for user in ROLES:
        monkeypatch.delenv(password_variable(user), raising=False)
    monkeypatch.setenv(password_variable("pim"), "pim-secret")
    out = tmp_path / "definitions.json"
    result = runner.invoke(app, ["rabbitmq-definitions", "--out", str(out)])
    assert result.exit_code == 0, result.output
    warned = {line.split(":")[0] for line in result.output.splitlines() if "no password" in line}
    assert warned == set(ROLES) - {"pim"}
    users = {user["name"]: user for user in json.loads(out.read_text())["users"]}
    assert users["pim"]["password_hash"] and not users["scan-station"]["password_hash"]


@pytest.mark.parametrize("option", ["--kinds", "--splits"])
def test_a_missing_benchmark_csv_is_a_usage_error_before_any_work(tmp_path, option):
    arguments = ["bench", "accuracy", "--data", str(tmp_path), option, str(tmp_path / "no.csv")]
    result = runner.invoke(app, arguments, env={"COLUMNS": "300"})
    assert result.exit_code == 2 and "does not exist" in result.output


def test_demo_on_a_folder_scans_the_split_and_count_it_is_told_and_shows_what_it_is_told(
    tmp_path, tiny_model_dir, monkeypatch
):
    data = tmp_path / "data"
    write_catalog(data, count=4, scans_per_product=2)
    for product in sorted(data.iterdir()):
        (product / "query_0.jpg").rename(product / "query_val_0.jpg")
        (product / "query_1.jpg").rename(product / "query_train_0.jpg")
    (data / "p001/query_val_0.jpg").unlink()  # p001 has only a train photo
    use_tiny_model(monkeypatch, tiny_model_dir, tmp_path / "index")
    options = ["--images", str(data), "--split", "val", "--max-scans", "3", "--show", "2"]
    result = runner.invoke(app, ["demo", *options])
    assert result.exit_code == 0, result.output
    assert "Generated" not in result.output
    shown = [line.split("│")[2].strip() for line in result.output.splitlines() if "│ p0" in line]
    assert shown == ["p002", "p003"]  # one val photo of each product in turn, two shown
    assert "(1 more scans not shown; --show N)" in result.output
    assert "[/]" not in result.output  # the rank column is styled, not printed as markup
    assert re.search(r"demo: \d/3 scans ranked the right product first\n$", result.output)


def test_demo_generates_the_catalog_it_is_told(tmp_path, tiny_model_dir, monkeypatch):
    use_tiny_model(monkeypatch, tiny_model_dir, tmp_path / "index")
    result = runner.invoke(app, ["demo", "--products", "3", "--scans-per-product", "1"])
    assert result.exit_code == 0, result.output
    assert "worker.consuming" not in result.output  # the worker's log only with --verbose
    assert "Generated a catalog of 3 look-alike rings and pendants, 1 bag photos each." in (
        result.output
    )
    assert re.search(r"demo: \d/3 scans ranked the right product first\n$", result.output)
    verbose = runner.invoke(app, ["demo", "--products", "3", "--scans-per-product", "1", "-v"])
    assert verbose.exit_code == 0, verbose.output
    assert "worker.consuming" in verbose.output


def _first_score(output: str) -> float:
    row = next(line for line in output.splitlines() if re.search(r"│\s+1\s+│", line))
    return float(re.findall(r"\d+\.\d{4}", row)[0])


@pytest.mark.integration
def test_demo_on_the_generated_catalog_with_the_real_default_model(tmp_path, monkeypatch):
    monkeypatch.setenv("JEWELMATCH_MODEL__CACHE_DIR", str(tmp_path / "models"))
    _leave_answers_of_another_run_on_the_in_memory_broker(count=8)
    result = runner.invoke(app, ["demo", "--products", "8", "--scans-per-product", "1"])
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    match = re.fullmatch(r"demo: (\d+)/(\d+) scans ranked the right product first", last)
    assert match, last
    correct, total = map(int, match.groups())
    assert total == 8
    assert correct >= 4  # measured 19/32 on the default 16 × 2 catalog; chance is 1/8


def _leave_answers_of_another_run_on_the_in_memory_broker(count: int) -> None:
    """The in-memory broker is the process's: what an earlier run left there (here every
    product ingested, every scan answered wrongly) must not be taken for this run's."""
    from kombu import Connection

    from shared import topology
    from shared.contract import CatalogOutcome, MatchResult, MatchStatus

    with Connection("memory://") as connection:
        for n in range(count):
            connection.SimpleQueue(topology.CATALOG_OUTCOMES_QUEUE).put(
                CatalogOutcome(
                    event="product.created", product_id=f"p{n:03d}", status="applied", model="m"
                ).model_dump_json()
            )
            connection.SimpleQueue(topology.RESULTS_QUEUE).put(
                MatchResult(
                    scan_id=f"scan-{n:05d}", status=MatchStatus.no_confident_match, model="m"
                ).model_dump_json()
            )
