"""Backing up the index and restoring it: what the index knows of each image and product goes
to a file or to moto's S3 server without vectors, and an index of another model, on both back
ends, is rebuilt from it and the images in S3; a file cut short is refused, what the index
was told since the backup wins, and workers hold catalog work for as long as it takes."""

from __future__ import annotations

import gzip
import json

import pytest
from qdrant_client import QdrantClient
from typer.testing import CliRunner

from shared.contract import ProductDeleted, ProductUpserted
from tests.conftest import CATALOG_BUCKET, SCANS_BUCKET, jpeg_bytes
from tests.support.pictures import set_picture
from tests.support.tiny_model import write_tiny_model
from tests.test_reindex import embedder_from
from worker.cli import app
from worker.errors import TransientError
from worker.index import SOURCE_CATALOG, SOURCE_CONFIRMED_SCAN, ScanRecord, current_index_model
from worker.index.edge import EdgeIndex, make_current
from worker.index.server import WRITE_HOLD_SECONDS, QdrantServerIndex
from worker.matching.catalog import Catalog, EmbeddedImage
from worker.pipeline.storage import S3ImageStore
from worker.service.backup import (
    BackupError,
    BackupFile,
    ObjectsCheck,
    RenewedHold,
    check_objects,
    restore,
    write_backup,
)
from worker.settings import ImageSettings, IndexSettings, ModelSettings, S3Settings, Settings
from worker.tools.synthetic import catalog_designs, render
from worker.vectors import is_part
from worker.vision.embedder import Embedder, ImageKind, model_id_for

pytestmark = pytest.mark.integration

DESIGNS = catalog_designs(6, seed=17)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("backup-models")
    return write_tiny_model(root / "model-old", seed=4), write_tiny_model(
        root / "model-new", seed=5
    )


@pytest.fixture(scope="module")
def models(model_dirs):
    return tuple(embedder_from(directory) for directory in model_dirs)


def upserted(product_id: str, key: str, version: int | None) -> ProductUpserted:
    return ProductUpserted(
        product_id=product_id,
        sku=product_id.upper(),
        version=version,
        images=[{"image_id": "front", "bucket": CATALOG_BUCKET, "key": key}],
    )


def fill(index, embedder, s3) -> dict:
    """Every design as a product at version 2 with its catalog image in S3, the first with a
    confirmed bag photo, the last deleted (version 3). Returns the pictures by product."""
    pictures = {design.product_id: render(design, 160) for design in DESIGNS}
    catalog = Catalog(index)
    for product_id, picture in pictures.items():
        key, body = f"{product_id}.jpg", jpeg_bytes(picture)
        etag = s3.put_object(Bucket=CATALOG_BUCKET, Key=key, Body=body)["ETag"]
        event = upserted(product_id, key, 2)
        vector = embedder.embed([picture], ImageKind.catalog)[0]
        embedded = EmbeddedImage(event.images[0], vector, etag=etag)
        catalog.apply(event, catalog.plan(event), [embedded])
    first, last = DESIGNS[0].product_id, DESIGNS[-1].product_id
    s3.put_object(Bucket=SCANS_BUCKET, Key="bag-1.jpg", Body=jpeg_bytes(pictures[first]))
    scan = ScanRecord(
        scan_id="bag-1",
        vector=embedder.embed([pictures[first]], ImageKind.scan)[0],
        image_uri=f"s3://{SCANS_BUCKET}/bag-1.jpg",
        created_at=1_700_000_000.5,
    )
    assert catalog.confirm(first, scan)
    catalog.delete(ProductDeleted(product_id=last, version=3))
    return pictures


def image_store(s3_endpoint: str) -> S3ImageStore:
    settings = S3Settings(endpoint_url=s3_endpoint, allowed_buckets=[CATALOG_BUCKET, SCANS_BUCKET])
    return S3ImageStore(settings, max_bytes=10_000_000)


def backed_up(index, tmp_path) -> BackupFile:
    path = tmp_path / "index.jsonl.gz"
    with path.open("wb") as stream:
        summary = write_backup(index, stream)
    assert (summary.images, summary.products) == (len(DESIGNS), len(DESIGNS))
    return BackupFile(path)


def test_an_index_of_another_model_is_rebuilt_from_a_backup(
    indexes, models, s3, s3_endpoint, tmp_path
):
    _, _, (source, target) = indexes
    old, new = models
    pictures = fill(source, old, s3)
    backup = backed_up(source, tmp_path)
    assert backup.summary.model == old.model_id

    totals: list[int] = []
    report = restore(
        backup, target, image_store(s3_endpoint), new, ImageSettings(), 2, on_total=totals.append
    )

    assert totals == [len(DESIGNS)]
    assert (report.reindexed, report.skipped, report.product_states) == (6, 0, 6)
    assert target.count() == source.count() == len(DESIGNS)
    first, last = DESIGNS[0].product_id, DESIGNS[-1].product_id
    restored = {image.image_id: image for image in target.product_images(first)}
    assert restored["scan:bag-1"].source == SOURCE_CONFIRMED_SCAN
    assert restored["scan:bag-1"].taken_at == 1_700_000_000.5  # training holds the latest out
    stored = {image.image_id: image for image in source.product_images(first)}
    assert restored["front"].etag == stored["front"].etag is not None  # S3's, carried
    moved = Catalog(target)
    assert moved.is_stale(first, 1) and not moved.is_stale(first, 2)
    assert moved.is_stale(last, 3) and target.product_images(last) == []  # stays deleted
    kept = [d.product_id for d in DESIGNS[:-1]]
    queries = new.embed([pictures[p] for p in kept], ImageKind.scan)
    assert [hits[0].product_id for hits in target.search(queries, 1)] == kept

    again = restore(backup, target, image_store(s3_endpoint), new, ImageSettings(), 2)
    assert (again.reindexed, again.product_states) == (0, 0)  # nothing left to restore


def test_a_restore_cut_short_resumes_where_it_stopped(indexes, models, s3, s3_endpoint, tmp_path):
    _, _, (source, target) = indexes
    old, new = models
    fill(source, old, s3)
    backup = backed_up(source, tmp_path)

    def stop_after_a_page(done: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        restore(
            backup,
            target,
            image_store(s3_endpoint),
            new,
            ImageSettings(),
            2,
            on_progress=stop_after_a_page,
        )
    assert target.count() == 2 and not target.writes_held()  # the hold is lifted

    report = restore(backup, target, image_store(s3_endpoint), new, ImageSettings(), 2)
    assert (report.reindexed, report.unchanged, report.product_states) == (4, 2, 6)
    assert target.count() == len(DESIGNS)


def test_a_restore_that_cuts_sets_into_pieces_resumes_with_every_products_state(
    indexes, models, model_dirs, s3, s3_endpoint, tmp_path
):
    """A model that stores a set's pieces (`MODEL__CATALOG_PARTS`) writes them with its image
    in the restore's first pages. A backup holds whole images only, so when the restore resumes
    those pieces are its own work, not news since the backup that would keep the product's
    version out."""
    _, _, (source, _) = indexes
    old, _ = models
    fill(source, old, s3)
    first = DESIGNS[0].product_id
    s3.put_object(Bucket=CATALOG_BUCKET, Key=f"{first}.jpg", Body=jpeg_bytes(set_picture()))
    backup = backed_up(source, tmp_path)
    cutting = Embedder(
        ModelSettings(name=f"local-dir:{model_dirs[1]}", threads=1, catalog_parts=True)
    )
    target = EdgeIndex(IndexSettings(path=tmp_path / "cut"), cutting.model_id, cutting.dim)

    def pieces() -> list[str]:
        return [i.image_id for i in target.product_images(first) if is_part(i.image_id)]

    def stop_once_the_set_is_cut(done: int) -> None:
        if pieces():
            raise KeyboardInterrupt

    try:
        store = image_store(s3_endpoint)
        with pytest.raises(KeyboardInterrupt):
            restore(backup, target, store, cutting, ImageSettings(), 2, stop_once_the_set_is_cut)
        assert pieces() and target.product_state(first) is None  # cut, no state yet
        report = restore(backup, target, store, cutting, ImageSettings(), 2)
        assert report.product_states == len(DESIGNS)
        assert target.product_state(first).version == 2
    finally:
        target.close()


def test_what_the_index_was_told_since_the_backup_wins(indexes, models, s3, s3_endpoint, tmp_path):
    """Restored into an index that has had events since the loss: a product updated there
    keeps its new catalog image (the backup's confirmed photo joins it), with or without a
    version, one deleted there stays deleted, and nothing the index holds is removed."""
    _, _, (source, target) = indexes
    old, new = models
    pictures = fill(source, old, s3)
    backup = backed_up(source, tmp_path)
    first, second, third, fourth = (d.product_id for d in DESIGNS[:4])
    since = Catalog(target)
    s3.put_object(Bucket=CATALOG_BUCKET, Key="first-v5.jpg", Body=jpeg_bytes(pictures[third]))
    event = upserted(first, "first-v5.jpg", 5)
    vector = new.embed([pictures[third]], ImageKind.catalog)[0]
    since.apply(event, since.plan(event), [EmbeddedImage(event.images[0], vector)])
    since.delete(ProductDeleted(product_id=second, version=4))
    outside = upserted("only-since", f"{third}.jpg", 1)
    since.apply(outside, since.plan(outside), [EmbeddedImage(outside.images[0], vector)])
    unversioned = upserted(fourth, "first-v5.jpg", None)
    since.apply(
        unversioned, since.plan(unversioned), [EmbeddedImage(unversioned.images[0], vector)]
    )

    report = restore(backup, target, image_store(s3_endpoint), new, ImageSettings())

    assert report.removed == 0 and report.product_states == len(DESIGNS) - 3
    images = {(i.image_id, i.source, i.uri) for i in target.product_images(first)}
    assert images == {
        ("front", SOURCE_CATALOG, f"s3://{CATALOG_BUCKET}/first-v5.jpg"),
        ("scan:bag-1", SOURCE_CONFIRMED_SCAN, f"s3://{SCANS_BUCKET}/bag-1.jpg"),
    }
    assert target.product_state(first).version == 5
    assert target.product_images(second) == [] and target.product_state(second).deleted
    assert [i.image_id for i in target.product_images("only-since")] == ["front"]
    assert [i.uri for i in target.product_images(fourth)] == [f"s3://{CATALOG_BUCKET}/first-v5.jpg"]
    assert target.product_state(fourth) is None  # its event had no version to carry


def test_an_image_gone_from_s3_is_skipped_and_counted(indexes, models, s3, s3_endpoint, tmp_path):
    _, _, (source, target) = indexes
    old, new = models
    fill(source, old, s3)
    backup = backed_up(source, tmp_path)
    s3.delete_object(Bucket=SCANS_BUCKET, Key="bag-1.jpg")

    report = restore(backup, target, image_store(s3_endpoint), new, ImageSettings())

    assert (report.reindexed, report.skipped) == (len(DESIGNS) - 1, 1)


def test_a_check_asks_s3_for_every_image_and_reads_none(indexes, models, s3, s3_endpoint, tmp_path):
    """`restore --check`: an object gone is unreadable, one replaced at its key is counted
    (its ETag changed), and S3 out of reach is an error rather than a verdict."""
    _, _, (source, _) = indexes
    pictures = fill(source, models[0], s3)
    backup = backed_up(source, tmp_path)
    store = image_store(s3_endpoint)
    assert check_objects(backup, store, threads=3) == ObjectsCheck(images=len(DESIGNS))

    s3.delete_object(Bucket=SCANS_BUCKET, Key="bag-1.jpg")
    replaced = DESIGNS[1].product_id
    body = jpeg_bytes(pictures[DESIGNS[2].product_id])
    s3.put_object(Bucket=CATALOG_BUCKET, Key=f"{replaced}.jpg", Body=body)
    seen: list[int] = []
    check = check_objects(backup, store, threads=3, on_progress=seen.append)
    assert (check.images, check.replaced, sum(seen)) == (len(DESIGNS), 1, len(DESIGNS))
    assert list(check.unreadable) == [f"s3://{SCANS_BUCKET}/bag-1.jpg"]
    assert "does not exist" in check.unreadable[f"s3://{SCANS_BUCKET}/bag-1.jpg"]

    unreachable = S3ImageStore(
        S3Settings(
            endpoint_url="http://127.0.0.1:9",
            allowed_buckets=[CATALOG_BUCKET, SCANS_BUCKET],
            max_attempts=1,
            connect_timeout_seconds=0.5,
        ),
        max_bytes=10_000_000,
    )
    with pytest.raises(TransientError, match="S3 unreachable"):
        check_objects(backup, unreachable)


def lines_of(path) -> list[str]:
    with gzip.open(path, "rt") as lines:
        return lines.readlines()


def rewritten(path, lines: list[str]):
    with gzip.open(path, "wt") as out:
        out.writelines(lines)
    return path


def image_line_with(line: str, **changes) -> str:
    record = json.loads(line)
    record["image"].update(changes)
    return json.dumps(record) + "\n"


def test_a_backup_cut_short_or_altered_is_refused(indexes, models, s3, tmp_path):
    _, _, (source, _) = indexes
    fill(source, models[0], s3)
    whole = backed_up(source, tmp_path).path
    lines = lines_of(whole)
    cases = {
        "cut short": (lines[:-3], "cut short or altered"),
        "a line lost": (lines[:2] + lines[3:], "cut short or altered"),
        "not JSON": ([*lines[:2], "{not json\n", *lines[2:]], "line 3 is not JSON"),
        "another file": (['{"hello": 1}\n'], "not a jewelmatch index backup"),
        "a later format": (
            [json.dumps({**json.loads(lines[0]), "version": 2}) + "\n", *lines[1:]],
            "backup format 2",
        ),
        "a line of another kind": ([lines[0], "[1, 2]\n", *lines[1:]], "no JSON object"),
        "a number for a location": (
            [lines[0], image_line_with(lines[1], uri=7), *lines[2:]],
            "a value of the wrong kind",
        ),
        "another source": (
            [lines[0], image_line_with(lines[1], source="upload"), *lines[2:]],
            "a value of the wrong kind",
        ),
        "an unknown field": (
            [lines[0], json.dumps({"image": {"colour": "red"}}) + "\n", *lines[1:]],
            "an image line with other fields",
        ),
        "a line after the end": ([*lines, lines[1]], "lines after the end"),
        "a line of no kind": ([lines[0], '{"note": 1}\n', *lines[1:]], "no image, state or end"),
        "a state without its product": (
            [lines[0], '{"state": {"version": 3}}\n', *lines[1:]],
            "a product state without 'product_id'",
        ),
    }
    for name, (content, message) in cases.items():
        with pytest.raises(BackupError, match=message):
            BackupFile(rewritten(tmp_path / f"{name}.gz", content))
    endless = rewritten(tmp_path / "endless.gz", [lines[0], '{"image": "' + "x" * 10**6])
    with pytest.raises(BackupError, match="line 2 is longer than 65536 characters"):
        BackupFile(endless)
    truncated = tmp_path / "truncated.gz"
    truncated.write_bytes(whole.read_bytes()[:-40])
    with pytest.raises(BackupError, match="not a whole gzip file"):
        BackupFile(truncated)
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(lines))
    with pytest.raises(BackupError, match="not a whole gzip file"):
        BackupFile(plain)


def test_workers_hold_catalog_work_for_as_long_as_a_restore_takes(tmp_path):
    """A hold lapses after WRITE_HOLD_SECONDS: a restore sets a fresh one before that and
    lifts its old one, and lifts the last when done."""
    settings = IndexSettings(backend="qdrant", url=":memory:")
    client = QdrantClient(location=":memory:")
    index = QdrantServerIndex(settings, "m", 4, client=client)
    now = [1000.0]
    hold = RenewedHold(index, clock=lambda: now[0])
    first = index._holds()
    assert index.writes_held() and len(first) == 1
    hold.renew_if_due()
    assert index._holds() == first  # not yet due
    now[0] += WRITE_HOLD_SECONDS / 2
    hold.renew_if_due()
    renewed = index._holds()
    assert len(renewed) == 1 and renewed != first and index.writes_held()
    hold.release()
    assert not index.writes_held() and index._holds() == []
    index.close()


def said(result) -> str:
    """A command's output as one line (the terminal wraps it at its width)."""
    return " ".join(result.output.split())


def configure_commands(monkeypatch, s3_endpoint: str, model_dir, **index) -> None:
    """The environment the commands read: moto's S3, the tiny model `model_dir` (catalog
    images whole, one thread) and the index settings `index` (`INDEX__...=value`)."""
    environment = {
        **{f"JEWELMATCH_{name}": value for name, value in index.items()},
        "JEWELMATCH_S3__ENDPOINT_URL": s3_endpoint,
        "JEWELMATCH_S3__ALLOWED_BUCKETS": f"{CATALOG_BUCKET},{SCANS_BUCKET}",
        "JEWELMATCH_MODEL__NAME": f"local-dir:{model_dir}",
        "JEWELMATCH_MODEL__RUNTIME": "torch",
        "JEWELMATCH_MODEL__THREADS": "1",
        "JEWELMATCH_MODEL__SCAN_CROPS": "[1.0]",
        "JEWELMATCH_MODEL__CATALOG_ZOOM": "0",
        "JEWELMATCH_MODEL__CATALOG_PARTS": "false",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)


def test_backup_and_restore_commands_through_s3_and_a_file(
    tmp_path, models, model_dirs, s3, s3_endpoint, monkeypatch
):
    """The commands: a backup of the index in service to an S3 object and to a file, restored
    by another model into its own index, made current; an unreadable image is exit status 1,
    a file cut short one line with exit status 2."""
    old = models[0]
    configure_commands(monkeypatch, s3_endpoint, model_dirs[0], INDEX__PATH=str(tmp_path / "index"))
    settings = IndexSettings(path=tmp_path / "index")
    in_service = EdgeIndex(settings, old.model_id, old.dim)
    fill(in_service, old, s3)
    in_service.close()
    make_current(settings.path, old.model_id)
    s3.create_bucket(Bucket="backups")
    runner = CliRunner()
    held = EdgeIndex(settings, old.model_id, old.dim)  # as a running worker holds it
    result = runner.invoke(app, ["backup", str(tmp_path / "index.jsonl.gz")])
    held.close()
    assert result.exit_code == 2 and "JEWELMATCH_INDEX__BACKUP_FILE" in said(result)
    for location in ("s3://backups/nightly/index.jsonl.gz", str(tmp_path / "index.jsonl.gz")):
        result = runner.invoke(app, ["backup", location])
        assert result.exit_code == 0, result.output
        assert f"backed up {len(DESIGNS)} images and {len(DESIGNS)} products" in said(result)
    stored = s3.get_object(Bucket="backups", Key="nightly/index.jsonl.gz")["Body"].read()
    assert gzip.decompress(stored).startswith(b'{"format":"jewelmatch-index-backup"')
    assert not list(tmp_path.glob(".*.partial"))

    result = runner.invoke(app, ["restore", "s3://backups/nightly/index.jsonl.gz", "--check"])
    assert result.exit_code == 0, result.output
    assert f"{len(DESIGNS)} images of {old.model_id}, 0 unreadable" in said(result)

    monkeypatch.setenv("JEWELMATCH_MODEL__NAME", f"local-dir:{model_dirs[1]}")
    result = runner.invoke(app, ["restore", "s3://backups/nightly/index.jsonl.gz"])
    assert result.exit_code == 0, result.output
    assert f"restored {len(DESIGNS)} of {len(DESIGNS)} images" in said(result)
    assert current_index_model(settings) == model_id_for(Settings(_env_file=None).model)
    assert current_index_model(settings) != old.model_id

    s3.delete_object(Bucket=CATALOG_BUCKET, Key=f"{DESIGNS[1].product_id}.jpg")
    result = runner.invoke(app, ["restore", str(tmp_path / "index.jsonl.gz")])
    assert result.exit_code == 0, result.output  # every image already there: nothing read
    monkeypatch.setenv("JEWELMATCH_INDEX__PATH", str(tmp_path / "elsewhere"))
    result = runner.invoke(app, ["restore", str(tmp_path / "index.jsonl.gz"), "--no-switch"])
    assert result.exit_code == 1 and "1 unreadable" in said(result), result.output
    result = runner.invoke(app, ["restore", str(tmp_path / "index.jsonl.gz"), "--check"])
    assert result.exit_code == 1 and "1 unreadable" in said(result), result.output
    missing = f"s3://{CATALOG_BUCKET}/{DESIGNS[1].product_id}.jpg"
    assert f"unreadable: {missing} does not exist" in said(result)

    result = runner.invoke(app, ["restore", "s3://backups/no-such-backup.jsonl.gz"])
    assert result.exit_code == 2 and "cannot read s3://backups/no-such" in said(result)
    monkeypatch.setenv("JEWELMATCH_INDEX__PATH", str(tmp_path / "index"))
    restored = current_index_model(settings)
    monkeypatch.setenv("JEWELMATCH_MODEL__NAME", f"local-dir:{model_dirs[0]}")
    held = EdgeIndex(settings, old.model_id, old.dim)  # as a running worker holds it
    result = runner.invoke(app, ["restore", str(tmp_path / "index.jsonl.gz")])
    held.close()
    assert result.exit_code == 2 and "the worker that owns it" in said(result)
    result = runner.invoke(app, ["restore", str(tmp_path / "index.jsonl.gz"), "--no-switch"])
    assert result.exit_code == 0 and "now current" not in said(result), result.output
    assert current_index_model(settings) == restored  # the old model's index, not switched to
    monkeypatch.setenv("JEWELMATCH_S3__ENDPOINT_URL", "http://127.0.0.1:9")  # nothing there
    monkeypatch.setenv("JEWELMATCH_S3__MAX_ATTEMPTS", "1")
    result = runner.invoke(app, ["backup", "s3://backups/nightly/index.jsonl.gz"])
    assert result.exit_code == 2 and "cannot write s3://backups/nightly" in said(result)
    assert "Traceback" not in result.output

    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes((tmp_path / "index.jsonl.gz").read_bytes()[:-30])
    result = runner.invoke(app, ["restore", str(cut)])
    assert result.exit_code == 2 and "not a whole gzip file" in said(result)
    monkeypatch.setenv("JEWELMATCH_S3__ENDPOINT_URL", s3_endpoint)
    s3.put_object(Bucket="backups", Key="cut.jsonl.gz", Body=cut.read_bytes())
    result = runner.invoke(app, ["restore", "s3://backups/cut.jsonl.gz"])
    assert result.exit_code == 2 and "s3://backups/cut.jsonl.gz" in said(result)
    assert "backup.jsonl.gz" not in said(result)  # never the downloaded copy's path

    result = runner.invoke(app, ["restore", str(tmp_path / "no-such.jsonl.gz")])
    assert result.exit_code == 2 and "no such file" in said(result)
    result = runner.invoke(app, ["backup", str(tmp_path / "no-such-folder" / "index.jsonl.gz")])
    assert result.exit_code == 2 and "no such directory" in said(result)
    result = runner.invoke(app, ["backup", "s3://Not_A_Bucket/index.jsonl.gz"])
    assert result.exit_code == 2 and "not an s3://bucket/key location" in said(result)


def test_a_backup_loads_no_model():
    """The nightly job's memory limit (1 GiB, backup-cronjob.yaml) holds no torch: the
    backup's modules import no model code (a restore imports it when it runs)."""
    import subprocess
    import sys

    code = (
        "import sys, worker.cli.backup, worker.service.backup\n"
        "print(sorted(m for m in ('torch', 'open_clip', 'openvino') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]"


def test_an_image_whose_location_is_no_s3_uri_is_unreadable_not_a_crash(tmp_path):
    """A backup's line may hold any string as a location: the check (and a restore, through
    the same `object_at`) names it unreadable without asking S3."""
    lines = [
        json.dumps({"format": "jewelmatch-index-backup", "version": 1, "model": "m"}) + "\n",
        image_line_with(
            json.dumps({"image": {"image_id": "front", "source": "catalog", "sku": "P1"}}),
            uri="s3://x",
            product_id="p1",
        ),
        json.dumps({"end": {"images": 1, "products": 0}}) + "\n",
    ]
    backup = BackupFile(rewritten(tmp_path / "odd.jsonl.gz", lines))
    nowhere = S3ImageStore(
        S3Settings(endpoint_url="http://127.0.0.1:9", allowed_buckets=[CATALOG_BUCKET]), 10**7
    )
    check = check_objects(backup, nowhere)
    assert check.unreadable == {"s3://x": "no S3 location: 's3://x'"}


def test_restore_on_a_qdrant_server_builds_beside_and_switches_only_when_told(
    tmp_path, models, model_dirs, s3, s3_endpoint, monkeypatch
):
    """The commands on the server back end (its code path in qdrant-client's folder mode):
    `restore --no-switch` builds the new model's collection beside the one in service, and a
    plain `restore` moves the alias to it."""
    from worker.index import stored_dimension

    old, new = models
    settings = IndexSettings(backend="qdrant", url=str(tmp_path / "qdrant"))
    configure_commands(
        monkeypatch, s3_endpoint, model_dirs[0], INDEX__BACKEND="qdrant", INDEX__URL=settings.url
    )
    in_service = QdrantServerIndex(settings, old.model_id, old.dim)  # the first: in service
    fill(in_service, old, s3)
    in_service.close()
    runner, file = CliRunner(), str(tmp_path / "index.jsonl.gz")
    result = runner.invoke(app, ["backup", file])
    assert result.exit_code == 0, result.output

    monkeypatch.setenv("JEWELMATCH_MODEL__NAME", f"local-dir:{model_dirs[1]}")
    new_id = model_id_for(Settings(_env_file=None).model)
    result = runner.invoke(app, ["restore", file, "--no-switch"])
    assert result.exit_code == 0 and "now current" not in said(result), result.output
    assert stored_dimension(settings, new_id) == new.dim
    assert current_index_model(settings) == old.model_id
    result = runner.invoke(app, ["restore", file])
    assert result.exit_code == 0 and "now current" in said(result), result.output
    assert current_index_model(settings) == new_id
