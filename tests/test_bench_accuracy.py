"""The accuracy benchmark's plumbing, on a hand-made data set where the answer is known."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from rich.progress import Progress
from typer.testing import CliRunner

from shared.contract import MatchStatus
from tests.conftest import make_settings
from tests.support.tiny_model import use_tiny_model
from worker.cli import app
from worker.index.base import ProductHit
from worker.matching.ranking import Ranking
from worker.tools.bench.accuracy import (
    AccuracyOptions,
    AccuracyRun,
    QueryOutcome,
    _plan,
    run_accuracy,
)
from worker.tools.bench.loaded_models import LoadedModels
from worker.tools.folders import QueryPhoto, read_folder_dataset, with_splits
from worker.tools.synthetic import catalog_designs, photograph, render
from worker.vision.versions import read_trained_on


def tiny_settings(tmp_path, tiny_model_dir):
    """Domain centring off: the tiny model's random weights have no photo domain, and with it
    on, confirmed photos wait for 20 scans (tests/test_first_confirmation.py); this tests the
    benchmark's plumbing."""
    return make_settings(tmp_path, tiny_model_dir, learning={"centring": {"enabled": False}})


def write_dataset(root):
    """6 products; each val photo is an exact copy of the product's first train photo."""
    rng = random.Random(1)
    for design in catalog_designs(6, seed=2):
        folder = root / design.product_id
        folder.mkdir(parents=True)
        picture = render(design, 160)
        picture.save(folder / "catalog_0.png")
        for n in range(2):
            photograph(picture, rng, 160).save(folder / f"query_train_{n}.jpg")
        shutil.copy(folder / "query_train_0.jpg", folder / "query_val_0.jpg")
    return root


def test_confirmed_photos_and_open_set_are_measured(tmp_path, tiny_model_dir):
    data = write_dataset(tmp_path / "data")
    settings = tiny_settings(tmp_path, tiny_model_dir)
    options = AccuracyOptions(
        data=data, confirmed=(0, 1), open_set=1, contact_sheet=tmp_path / "sheet.png"
    )
    with Progress(disable=True) as progress:
        report = run_accuracy(settings, options, progress)
    figures = report.to_json()
    assert report.products_in_catalog == 5 and len(report.products_left_out) == 1
    zero, one = figures["runs"]
    assert (zero["queries"], zero["open_set_queries"]) == (5, 1)
    # with the first train photo confirmed, each val photo (its exact copy) ranks first
    assert one["confirmed_per_product"] == 1
    assert one["recall@1"] == 1.0 and one["mrr"] == 1.0
    assert zero["recall@5"] == 1.0  # only 5 products in the catalog
    left_out = report.products_left_out[0]
    assert all(o.rank is None for o in report.runs[1].unknown)
    assert all(left_out not in o.ranked for o in report.runs[1].known)
    assert (tmp_path / "sheet.png").stat().st_size > 0
    # the margin curve says, per threshold, how many left-out photos would be refused
    unknown_margins = [o.margin for o in report.runs[1].unknown]
    for point in one["margin_curve"]:
        refused = sum(m < point["threshold"] for m in unknown_margins) / len(unknown_margins)
        assert point["open_set_refused"] == refused
    assert one["margin_curve"][0]["open_set_refused"] == 0.0  # threshold 0: nothing refused


def test_a_run_repeated_with_the_same_loaded_model_embeds_only_what_it_has_not_seen(
    tmp_path, tiny_model_dir
) -> None:
    """`jewelmatch train` judges each version twice, the roles of two products swapped: the
    second run reuses the first one's vectors and gives the figures a fresh run gives."""
    data = write_dataset(tmp_path / "data")
    settings = tiny_settings(tmp_path, tiny_model_dir)
    ids = sorted(p.product_id for p in read_folder_dataset(data).products)
    judged = AccuracyOptions(
        data=data, confirmed=(1,), left_out=frozenset(ids[:1]), new_products=frozenset(ids[1:2])
    )
    swapped = replace(judged, left_out=judged.new_products, new_products=judged.left_out)
    models = LoadedModels()
    with Progress(disable=True) as progress:
        run_accuracy(settings, judged, progress, models)
        embedder = models.embedder(settings.model)
        embedded = len(embedder._vectors)
        again = run_accuracy(settings, swapped, progress, models).runs[-1].summary()
        fresh = run_accuracy(settings, swapped, progress).runs[-1].summary()
    assert models.embedder(settings.model) is embedder
    # only the catalog image of the product that was outside the catalog is new to it
    assert len(embedder._vectors) == embedded + 1
    for key in ("recall@1", "recall@1_new", "new_queries", "open_set_queries", "answered_accuracy"):
        assert again[key] == fresh[key]
    assert (again["new_queries"], again["open_set_queries"]) == (1, 1)  # one val photo each


def test_photos_moved_to_a_split_of_their_own_are_judged_and_never_confirmed(
    tmp_path, tiny_model_dir
):
    """`--splits` (benchmarks/far_photos.py): each product's second train photo moves to
    `far`; judged with `split="far"`, those are the photos matched, and the confirmations
    come from the photos left in `train`."""
    data = write_dataset(tmp_path / "data")
    splits = tmp_path / "splits.csv"
    products = sorted(p.name for p in data.iterdir())
    moved = [f"{p}/query_train_1.jpg" for p in products]
    splits.write_text("# a comment\nphoto,split\n" + "".join(f"{m},far\n" for m in moved))
    settings = tiny_settings(tmp_path, tiny_model_dir)
    options = AccuracyOptions(data=data, split="far", confirmed=(0, 1), open_set=1, splits=splits)
    with Progress(disable=True) as progress:
        report = run_accuracy(settings, options, progress)
    zero, one = report.to_json()["runs"]
    assert (zero["queries"], zero["open_set_queries"]) == (5, 1)
    judged = [o.query for o in [*report.runs[1].known, *report.runs[1].unknown]]
    assert {(q.path.name, q.split) for q in judged} == {("query_train_1.jpg", "far")}
    # scanned and confirmed: the photo left in `train`, never a judged one
    plan = _plan(with_splits(read_folder_dataset(data), {k: "far" for k in moved}), options)
    assert {q.path.name for q in plan.scanned} == {"query_train_0.jpg"}
    assert one["confirmed_per_product"] == 1
    # a photo that is not in the data set is a clear error, not a silent no-op
    splits.write_text("photo,split\nno-such-product/query_train_1.jpg,far\n")
    with Progress(disable=True) as progress, pytest.raises(ValueError, match="not in"):
        run_accuracy(settings, options, progress)


def test_the_day_to_day_mix_reports_new_products_apart(tmp_path, tiny_model_dir):
    """Brand-new products get no confirmations; their recall@1 is reported on its own."""
    data = write_dataset(tmp_path / "data")
    settings = tiny_settings(tmp_path, tiny_model_dir)
    options = AccuracyOptions(data=data, confirmed=(0, 1), open_set=1, new_share=0.4)
    with Progress(disable=True) as progress:
        report = run_accuracy(settings, options, progress)
    zero, one = report.to_json()["runs"]
    new = report.runs[1].new_products
    assert len(new) == 2 and one["new_products"] == 2 and one["new_queries"] == 2
    # confirmed products: each val photo is an exact copy of a confirmed photo
    assert one["recall@1_confirmed_products"] == 1.0
    confirmed_sources = {
        hit.source
        for outcome in report.runs[1].known
        if outcome.query.product_id in new
        for hit in outcome.ranking.hits
        if hit.product_id in new
    }
    assert confirmed_sources == {"catalog"}  # a new product has only its catalog image
    assert zero["recall@1_new"] is not None
    # judged as labels (the gate's view): the photos of the confirmed products teach the
    # confidence; a new product's photos, which nobody has confirmed yet, never do
    as_labels = replace(options, judged_as_labels=True, new_products=new, confirmed=(1,))
    with Progress(disable=True) as progress:
        [run] = run_accuracy(settings, as_labels, progress).runs
    assert run.metric["judged_as_labels"]["judged_labels"] == 3  # 5 in the catalog, 2 new


def _fine_tuning_setup(tmp_path, **training):
    """A data set and settings that train a tiny EfficientNet for one quick epoch."""
    from tests.support.tiny_model import write_tiny_efficientnet

    model = write_tiny_efficientnet(tmp_path / "tiny-efficientnet")
    settings = make_settings(
        tmp_path,
        model,
        learning={"centring": {"enabled": False}},
        training={"epochs": 1, "views": 2, "batch_size": 4, **training},
    )
    return write_dataset(tmp_path / "data"), settings


def test_fine_tuning_trains_on_confirmations_only_and_matches_with_the_trained_towers(
    tmp_path,
):
    """`--fine-tune`: the towers train on the confirmed photos and their products' catalog
    images; never on a photo that is matched, a brand-new product or a left-out one, nor on
    the latest `calibration_share` of the confirmed photos (labels for the confidence)."""
    data, settings = _fine_tuning_setup(tmp_path)
    options = AccuracyOptions(
        data=data,
        confirmed=(0, 2),
        open_set=1,
        new_share=0.4,  # p001 and p005 (p004 is left out)
        never_train=frozenset({"p006"}),
        fine_tune=True,
        calibration_share=0.5,
        fine_tune_dir=tmp_path / "model-folder",
    )
    with Progress(disable=True) as progress:
        report = run_accuracy(settings, options, progress)
    trained = report.to_json()["fine_tune"]
    [tower] = trained["towers"].values()
    # 5 products in the catalog, 2 of them new and 1 never trained: 2 catalog images and 2
    # first train photos (the second of each product's 2 confirmed photos is for calibration)
    assert report.runs[1].new_products == {"p001", "p005"}
    assert (tower["products"], tower["pictures"]) == (2, 4)
    # the trained towers know the photos they trained on, by the URIs of their scans
    [folder] = (tmp_path / "model-folder").glob("tiny-efficientnet-*")
    assert len(read_trained_on(folder)) == 2
    assert not any("/p006/" in uri for uri in read_trained_on(folder))
    assert all(uri.startswith("s3://bench/") for uri in read_trained_on(folder))
    assert report.model.startswith(f"tiny-efficientnet-{trained['version']}")
    assert len(report.runs) == 2
    # p006 never trained, but was confirmed (as `train`'s held-out products are); new ones not
    own_sources = {
        outcome.query.product_id: hit.source
        for outcome in report.runs[1].known
        for hit in outcome.ranking.hits
        if hit.product_id == outcome.query.product_id
    }
    assert own_sources["p006"] == "confirmed_scan"
    assert own_sources["p001"] == own_sources["p005"] == "catalog"


def test_fine_tuning_with_nothing_confirmed_trains_on_the_catalog_images_alone(tmp_path):
    """`--fine-tune --confirmed 0`: each catalog product (not a new or left-out one) trains on
    its catalog image alone, as its own class; no photo trains."""
    data, settings = _fine_tuning_setup(tmp_path, catalog_crop=0.5)
    options = AccuracyOptions(
        data=data,
        confirmed=(0,),
        open_set=1,
        new_share=0.4,
        fine_tune=True,
        fine_tune_dir=tmp_path / "model-folder",
    )
    with Progress(disable=True) as progress:
        report = run_accuracy(settings, options, progress)
    [tower] = report.to_json()["fine_tune"]["towers"].values()
    # 5 products in the catalog, 2 of them new: 3 catalog images, one class each
    assert (tower["products"], tower["pictures"]) == (3, 3)
    [folder] = (tmp_path / "model-folder").glob("tiny-efficientnet-*")
    assert read_trained_on(folder) == frozenset()
    assert len(report.runs) == 1


def test_bench_accuracy_command_writes_its_json(tmp_path, tiny_model_dir, monkeypatch):
    data = write_dataset(tmp_path / "data")
    use_tiny_model(monkeypatch, tiny_model_dir)
    out = tmp_path / "accuracy.json"
    products = sorted(p.name for p in data.iterdir())
    kinds = tmp_path / "kinds.csv"
    kinds.write_text(
        "# a comment\nphoto,kind\n"
        + "".join(f"{p}/query_val_0.jpg,{'worn' if n % 2 else 'studio'}\n"
                  for n, p in enumerate(products))
    )  # fmt: skip
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "accuracy",
            "--data",
            str(data),
            "--confirmed",
            "0,1",
            "--open-set",
            "1",
            "--out",
            str(out),
            "--kinds",
            str(kinds),
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert document["benchmark"] == "accuracy"
    assert document["machine"]["cpus_usable"] >= 1 and document["machine"]["cpu_model"]
    runs = document["figures"]["runs"]
    assert [r["confirmed_per_product"] for r in runs] == [0, 1]
    assert "R@1" in result.output
    # per kind of photo: the catalog's photos of each kind, with their recall
    by_kind = runs[1]["by_kind"]
    assert sorted(by_kind) == ["studio", "worn"]
    assert sum(k["queries"] for k in by_kind.values()) == runs[1]["queries"]
    assert "worn photos" in result.output
    # the decision's figures: too few confirmations here, the prior decides
    assert [r["confidence_origin"] for r in runs] == ["prior", "prior"]
    curve = runs[1]["confidence_curve"]
    assert curve[0]["threshold"] == 0.5 and 0.0 <= curve[0]["answered"] <= 1.0


def test_bench_refit_times_every_stage_the_confidence_included(tmp_path):
    out = tmp_path / "refit.json"
    command = ["bench", "refit", "--products", "20", "--confirmed", "8", "--scans", "50"]
    command += ["--dim", "32", "--colour-dim", "0", "--out", str(out)]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    [row] = json.loads(out.read_text())["figures"]["refits"]
    assert row["references"] == 20 * 9 and row["seconds_median"] > 0
    assert row["stages"][-1].startswith("confidence:labels")  # 160 confirmations: learned


def test_photos_a_version_trained_on_are_recognised_in_a_data_set_exported_from_the_index():
    """`jewelmatch train` judges the version in service on photos exported from the index:
    the photos that version trained on (by their URIs in the index) are its scans there."""
    from worker.tools.bench.accuracy import _as_bench_photos

    exported = {
        "ring/query_val_0001.jpg": "s3://scans/st1/a.jpg",
        "ring/query_val_0002.jpg": "s3://scans/st1/b.jpg",
    }
    trained_on = frozenset({"s3://scans/st1/a.jpg", "s3://scans/st9/elsewhere.jpg"})
    assert _as_bench_photos(trained_on, exported) == {"s3://bench/ring/query_val_0001.jpg"}
    assert _as_bench_photos(trained_on, None) == frozenset()
    assert _as_bench_photos(frozenset(), exported) == frozenset()


def test_bench_accuracy_seed_draws_the_protocol_again(tmp_path, tiny_model_dir, monkeypatch):
    """`--seed` picks which products are left out of the catalog: the same seed the same
    products, other seeds others (figures of another draw reproduce by command)."""
    data = write_dataset(tmp_path / "data")
    use_tiny_model(monkeypatch, tiny_model_dir)

    def left_out(seed: int) -> list[str]:
        out = tmp_path / f"accuracy-{seed}.json"
        command = ["bench", "accuracy", "--data", str(data), "--open-set", "1"]
        result = CliRunner().invoke(app, [*command, "--seed", str(seed), "--out", str(out)])
        assert result.exit_code == 0, result.output
        return json.loads(out.read_text())["figures"]["products_left_out"]

    draws = {seed: left_out(seed) for seed in range(4)}
    assert len({tuple(products) for products in draws.values()}) > 1
    assert left_out(1) == draws[1]


def _outcome(product: str, ranked: list[tuple[str, float]], confidence: float, photo: str = "a"):
    status = MatchStatus.matched if confidence >= 0.5 else MatchStatus.no_confident_match
    hits = [ProductHit(p, p, score, "front", "catalog") for p, score in ranked]
    query = QueryPhoto(product, Path(f"{product}/query_val_{photo}.jpg"), "val")
    return QueryOutcome(query, Ranking(status, hits, confidence, "labels"))


def test_a_runs_figures_are_those_of_its_photos_each_counted_where_it_belongs():
    """Hand-made outcomes: the new products' and the confirmed ones' recall apart, each kind
    of photo apart, the calibration error and both curves of the right photos."""
    known = [
        _outcome("new-1", [("new-1", 0.9), ("old-1", 0.5)], 0.9),  # right, sure
        _outcome("old-1", [("old-2", 0.8), ("old-1", 0.7)], 0.8),  # wrong, sure
        _outcome("old-1", [("old-1", 0.6), ("old-2", 0.55)], 0.3, "b"),  # right, unsure
        _outcome("old-2", [("old-2", 0.7)], 0.7),  # right, nobody close
    ]
    unknown = [_outcome("gone", [("old-1", 0.6), ("old-2", 0.5)], 0.7)]
    kinds = {"new-1/query_val_a.jpg": "worn", "old-1/query_val_a.jpg": "studio"}
    run = AccuracyRun(3, known, unknown, 1.0, new_products=frozenset({"new-1"}), kinds=kinds)
    summary = run.summary()
    assert summary["recall@1"] == 0.75 and summary["mrr"] == pytest.approx(3.5 / 4)
    assert (summary["recall@1_new"], summary["recall@1_confirmed_products"]) == (1.0, 2 / 3)
    assert summary["by_kind"] == {
        "studio": {"queries": 1, "recall@1": 0.0, "recall@5": 1.0},
        "worn": {"queries": 1, "recall@1": 1.0, "recall@5": 1.0},
    }
    assert summary["answered_accuracy"] == pytest.approx(2 / 3)  # 3 matched, 2 right
    assert summary["no_confident_match_open_set"] == 0.0
    # bins 0.3 (right, said 0.3), 0.7 (right), 0.8 (wrong), 0.9 (right)
    assert summary["calibration_error"] == pytest.approx((0.7 + 0.3 + 0.8 + 0.1) / 4)
    [sure] = run.confidence_curve([0.75])
    assert sure == {"threshold": 0.75, "answered": 0.5, "accuracy": 0.5, "open_set_refused": 1.0}
    [at_its_own] = run.confidence_curve([0.7])  # answered at its own confidence, as known ones
    assert at_its_own["open_set_refused"] == 0.0
    margins = [round(o.margin, 2) for o in known]
    assert margins == [0.4, 0.1, 0.05, 1.7]  # a lone product: its score above -1
    [wide] = run.margin_curve([0.08])
    assert wide == {"threshold": 0.08, "answered": 0.75, "accuracy": 2 / 3, "open_set_refused": 0.0}


def _plain_dataset(root, products: int = 4, photos: int = 4):
    """Products whose train photos are written in reverse order of their names."""
    for n in range(products):
        folder = root / f"p{n}"
        folder.mkdir(parents=True)
        (folder / "catalog_0.png").write_bytes(b"")
        for k in reversed(range(photos)):
            (folder / f"query_train_{k}.jpg").write_bytes(b"")
        (folder / "query_val_0.jpg").write_bytes(b"")
    return read_folder_dataset(root)


def test_the_protocol_never_judges_a_photo_it_scans_and_confirms_in_name_order(tmp_path):
    """Judged on the confirmation split itself (`--split train`, for choices): the first
    photos by name are scanned and later confirmed, and only the others are judged."""
    dataset = _plain_dataset(tmp_path / "data")
    options = AccuracyOptions(
        data=dataset.root,
        split="train",
        confirmed=(0, 2),
        open_set=1,
        unlabeled_scans_per_product=0,
    )
    plan = _plan(dataset, options)
    scanned = {q.path.name for q in plan.scanned}
    assert scanned == {"query_train_0.jpg", "query_train_1.jpg"}
    assert {q.path.name for q in plan.queries} == {"query_train_2.jpg", "query_train_3.jpg"}
    assert len(plan.queries) == 2 * 4  # every product's, the left-out one's included


def test_the_protocol_keeps_a_catalog_and_draws_what_it_is_asked_by_its_seed(tmp_path):
    dataset = _plain_dataset(tmp_path / "data", products=3)
    greedy = _plan(dataset, AccuracyOptions(data=dataset.root, open_set=10))
    assert len(greedy.left_out) == 2 and len(greedy.in_catalog) == 1  # one product stays
    new = frozenset({"p0", "p1", "x"})  # p0 is outside the catalog, x in no data set
    named = _plan(
        dataset, AccuracyOptions(data=dataset.root, left_out=frozenset({"p0"}), new_products=new)
    )
    assert named.new_ids == {"p1"}  # new products are products of the catalog
    capped = [
        _plan(dataset, AccuracyOptions(data=dataset.root, max_queries=2, seed=seed))
        for seed in (0, 0, 1, 2, 3)
    ]
    assert all(len(plan.queries) == 2 for plan in capped)
    drawn = [tuple(q.path for q in plan.queries) for plan in capped]
    assert drawn[0] == drawn[1] and len(set(drawn)) > 1  # the seed draws them
    everything = _plan(dataset, AccuracyOptions(data=dataset.root, max_queries=99))
    assert len(everything.queries) == 3


def test_with_the_category_hint_each_scan_is_ranked_within_its_products_category(
    tmp_path, tiny_model_dir
):
    data = write_dataset(tmp_path / "data")
    products = sorted(p.name for p in data.iterdir())
    rows = [f"{p},{'rings' if n % 2 else 'pendants'},{p}/catalog_0.png,catalog,\n"
            for n, p in enumerate(products)]  # fmt: skip
    (data / "manifest.csv").write_text("product_id,coarse_class,file,role,split\n" + "".join(rows))
    settings = tiny_settings(tmp_path, tiny_model_dir)
    options = AccuracyOptions(data=data, confirmed=(0,), open_set=1, category_hint=True)
    with Progress(disable=True) as progress:
        report = run_accuracy(settings, options, progress)
    category = {p: ("rings" if n % 2 else "pendants") for n, p in enumerate(products)}
    [run] = report.runs
    assert len(run.known) == 5
    for outcome in [*run.known, *run.unknown]:
        ranked = {category[p] for p in outcome.ranked}
        assert ranked == {category[outcome.query.product_id]}  # its own category only


def test_the_contact_sheet_shows_errors_first_with_the_right_product_framed_green(tmp_path):
    from PIL import Image

    from worker.tools.bench.accuracy import write_contact_sheet

    colours = {"p0": (0, 0, 255), "p1": (255, 255, 0)}
    for product, colour in colours.items():
        (tmp_path / "data" / product).mkdir(parents=True)
        Image.new("RGB", (50, 50), colour).save(tmp_path / "data" / product / "catalog_0.png")
        Image.new("RGB", (50, 50), (128, 128, 128)).save(
            tmp_path / "data" / product / "query_val_a.jpg"
        )
    dataset = read_folder_dataset(tmp_path / "data")
    right = _outcome("p0", [("p0", 0.9), ("p1", 0.5)], 0.9)
    wrong = _outcome("p1", [("p0", 0.8), ("p1", 0.7)], 0.8)
    for outcome in (right, wrong):
        outcome.query = replace(outcome.query, path=tmp_path / "data" / outcome.query.path)
    run = AccuracyRun(0, [right, wrong], [], 1.0)
    tile = 40
    path = write_contact_sheet(run, dataset, tmp_path / "docs" / "errors" / "sheet.png", tile=tile)
    sheet = Image.open(path).convert("RGB")
    assert sheet.size == (6 * tile + 8, 2 * (tile + 14) + 4)  # the photo and 5 candidates
    red, green = (200, 0, 0), (0, 160, 0)
    first, second = 2, tile + 14 + 2  # each row's top
    assert sheet.getpixel((tile + 8, first)) == red  # the wrong answer's row comes first
    assert sheet.getpixel((2 * tile + 8, first)) == green  # its right product, second
    assert sheet.getpixel((tile + 8, second)) == green
    assert sheet.getpixel((tile + 8 + tile // 2, first + tile // 2)) == colours["p0"]
    assert sheet.getpixel((tile + 8 + tile // 2, second + tile // 2)) == colours["p0"]
    assert sheet.getpixel((3 * tile + 8, first + tile // 2)) == (255, 255, 255)  # frames end
    assert sheet.getpixel((tile // 2, first + tile // 2)) == (128, 128, 128)  # the photo
    assert sheet.getpixel((tile - 1, first)) == (255, 255, 255)  # the photo is not framed
