"""`jewelmatch bench ...` commands: each prints a table and writes a JSON file."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress
from rich.table import Table

from worker.cli.help import OneLineSummaries
from worker.cli.output import plain_console

bench = typer.Typer(
    cls=OneLineSummaries,
    help="Benchmarks: accuracy, latency, throughput, scale, models.",
    no_args_is_help=True,
)
console = plain_console()
RESULTS = Path("benchmarks/results")


def _command() -> str:
    return "jewelmatch " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _runtimes(text: str | None, settings) -> list:
    """The runtimes to measure side by side (default: the configured one)."""
    from worker.settings import ModelRuntime

    if not text:
        return [settings.model.runtime]
    return [ModelRuntime(part.strip()) for part in text.split(",") if part.strip()]


def _on_runtime(settings, runtime):
    return settings.model_copy(
        update={"model": settings.model.model_copy(update={"runtime": runtime})}
    )


RUNTIMES_HELP = (
    "Runtimes to measure one after the other in this run, e.g. torch,onnxruntime,openvino "
    "(default: JEWELMATCH_MODEL__RUNTIME)."
)


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


FineTuneOption = Annotated[
    bool,
    typer.Option(
        help="Fine-tune the image towers first (jewelmatch train's code, "
        "JEWELMATCH_TRAINING__*) on the largest --confirmed count's photos and their "
        "products' catalog images (with --confirmed 0, the catalog images alone); "
        "--new-share products never train."
    ),
]
SplitsOption = Annotated[
    Path | None,
    typer.Option(
        help="CSV `photo,split`: the listed photos move to that split, e.g. "
        "benchmarks/grocery-far-photos.csv with --split far (a harder split to choose on).",
        exists=True,
        dir_okay=False,
    ),
]
SeedOption = Annotated[
    int,
    typer.Option(
        help="The protocol's draw: the products left out of the catalog, the brand-new ones and "
        "the --max-queries sample (a training run's seed is JEWELMATCH_TRAINING__SEED)."
    ),
]
CalibrationShareOption = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=0.9,
        help="With --fine-tune: the latest share of each product's confirmation photos "
        "never trains; the confidence learns from those (as after jewelmatch train).",
    ),
]


@bench.command()
def accuracy(
    data: Annotated[Path, typer.Option(help="Folder data set (catalog_* and query_* files).")],
    split: Annotated[str, typer.Option(help="Split of the query photos to match.")] = "val",
    confirmed: Annotated[
        str,
        typer.Option(
            help="Confirmed photos per product to add from --confirmed-split, e.g. 0,1,3,10."
        ),
    ] = "0",
    confirmed_split: Annotated[
        str, typer.Option(help="Where confirmed photos come from.")
    ] = "train",
    open_set: Annotated[int, typer.Option(help="Products left out of the catalog.")] = 8,
    max_queries: Annotated[int | None, typer.Option(help="Match at most this many.")] = None,
    out: Annotated[Path, typer.Option(help="JSON result file.")] = RESULTS / "accuracy.json",
    contact_sheet: Annotated[
        Path | None, typer.Option(help="PNG: query photos beside their top 5, errors first.")
    ] = None,
    category_hint: Annotated[
        bool,
        typer.Option(
            help="Scans carry their product's category (the manifest's coarse class) as a hint."
        ),
    ] = False,
    new_share: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of the catalog's products that stay brand new (never confirmed); "
            "recall@1 is reported for them and for the confirmed ones apart.",
        ),
    ] = 0.0,
    kinds: Annotated[
        Path | None,
        typer.Option(
            help="CSV `photo,kind` (photo: <product>/<file>), e.g. "
            "benchmarks/jewelry-dev-kinds.csv: recall is also reported per kind of photo.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    splits: SplitsOption = None,
    fine_tune: FineTuneOption = False,
    calibration_share: CalibrationShareOption = 0.2,
    seed: SeedOption = 0,
) -> None:
    """Recall@1/5, MRR, open-set rejection and confusions on a folder data set."""
    from worker.observability.logs import load_settings
    from worker.tools.bench.accuracy import AccuracyOptions, run_accuracy
    from worker.tools.bench.report import write_result

    settings = load_settings(quiet=True)
    options = AccuracyOptions(
        data=data,
        split=split,
        confirmed=_ints(confirmed),
        confirmed_split=confirmed_split,
        open_set=open_set,
        max_queries=max_queries,
        contact_sheet=contact_sheet,
        category_hint=category_hint,
        new_share=new_share,
        kinds=kinds,
        splits=splits,
        fine_tune=fine_tune,
        calibration_share=calibration_share,
        seed=seed,
    )

    with Progress(console=console, transient=True) as progress:
        report = run_accuracy(settings, options, progress)
    figures = report.to_json()
    if report.fine_tune:
        _print_fine_tune(report.fine_tune)
    _print_accuracy(report, figures, f"{data} ({split}", bool(new_share))
    console.print(f"written: {write_result(out, 'accuracy', _command(), figures)}")
    if contact_sheet:
        console.print(f"contact sheet: {contact_sheet}")


def _print_fine_tune(fine_tune: dict) -> None:
    console.print(
        f"fine-tuned in {fine_tune['seconds']:.0f} s: "
        + "; ".join(
            f"{t['pictures']} pictures of {t['products']} products, loss "
            + " → ".join(f"{loss:.2f}" for loss in t["loss_per_epoch"])
            for t in fine_tune["towers"].values()
        )
    )


ACCURACY_COLUMNS = {
    "confirmed_per_product": "confirmed",
    "queries": "queries",
    "recall@1": "R@1",
    "recall@5": "R@5",
    "mrr": "MRR",
    "no_confident_match_in_catalog": "no-match known",
    "answered_accuracy": "answered acc",
    "no_confident_match_open_set": "no-match open set",
    "confidence_origin": "confidence",
    "calibration_error": "ECE",
}


def _print_accuracy(report, figures: dict, where: str, new_products: bool) -> None:
    table = Table(
        title=f"Accuracy of {report.model} on {where}; "
        f"{len(report.products_left_out)} products left out)"
    )
    columns = dict(ACCURACY_COLUMNS)
    if new_products:
        columns |= {"recall@1_new": "R@1 new", "recall@1_confirmed_products": "R@1 confirmed"}
    for label in columns.values():
        table.add_column(label, justify="right")
    for run in figures["runs"]:
        table.add_row(*(_fmt(run[key]) for key in columns))
    console.print(table)
    for run in figures["runs"]:
        for kind, kind_figures in run.get("by_kind", {}).items():
            console.print(
                f"{run['confirmed_per_product']} confirmed, {kind} photos "
                f"({kind_figures['queries']}): R@1 {_fmt(kind_figures['recall@1'])}, "
                f"R@5 {_fmt(kind_figures['recall@5'])}"
            )
    if figures["confusions"]:
        console.print(
            "most frequent confusions (true → ranked first): "
            + "; ".join(
                f"{c['true']} → {c['predicted']} ×{c['count']}" for c in figures["confusions"][:6]
            )
        )


def _servers_help() -> str:
    return "Default: a throwaway node / moto server started by the benchmark."


@bench.command()
def latency(
    data: Annotated[Path, typer.Option(help="Folder data set: catalog and photos to scan.")],
    scans: Annotated[int, typer.Option(help="Scans, published one at a time.")] = 200,
    runtimes: Annotated[str | None, typer.Option(help=RUNTIMES_HELP)] = None,
    amqp_url: Annotated[str | None, typer.Option(help="RabbitMQ URL. " + _servers_help())] = None,
    s3_endpoint: Annotated[str | None, typer.Option(help="S3 endpoint. " + _servers_help())] = None,
    out: Annotated[Path, typer.Option(help="JSON result file.")] = RESULTS / "latency.json",
) -> None:
    """End-to-end scan latency through RabbitMQ and S3, with the worker's stage breakdown."""
    from worker.observability.logs import load_settings
    from worker.tools.bench.pipeline import run_latency, summarize_stage_table
    from worker.tools.bench.report import write_result

    settings = load_settings(quiet=True)
    runs = {}
    for runtime in _runtimes(runtimes, settings):
        with Progress(console=console, transient=True) as progress:
            figures = run_latency(
                _on_runtime(settings, runtime), data, scans, amqp_url, s3_endpoint, progress
            )
        table = Table(title=f"Scan latency on {runtime.value}, {scans} scans one at a time (ms)")
        for column in ("", "p50", "p95", "p99", "max"):
            table.add_column(column, justify="right")
        for name, values in summarize_stage_table(figures):
            table.add_row(name, *(f"{values[k]:.1f}" for k in ("p50", "p95", "p99", "max")))
        console.print(table)
        runs[runtime.value] = figures
    if len(runs) > 1:
        first, *others = runs
        base = runs[first]["stages_ms"]["embed"]["p50"]
        for other in others:
            ratio = runs[other]["stages_ms"]["embed"]["p50"] / base
            console.print(f"embed p50 on {other}: {ratio:.2f}× {first}'s")
    figures = runs[next(iter(runs))] if len(runs) == 1 else {"runtimes": runs}
    console.print(f"written: {write_result(out, 'latency', _command(), figures)}")


@bench.command()
def throughput(
    data: Annotated[Path, typer.Option(help="Folder data set whose catalog_* images are used.")],
    copies: Annotated[int, typer.Option(help="Products made of each catalog image.")] = 4,
    runtimes: Annotated[str | None, typer.Option(help=RUNTIMES_HELP)] = None,
    amqp_url: Annotated[str | None, typer.Option(help="RabbitMQ URL. " + _servers_help())] = None,
    s3_endpoint: Annotated[str | None, typer.Option(help="S3 endpoint. " + _servers_help())] = None,
    out: Annotated[Path, typer.Option(help="JSON result file.")] = RESULTS / "throughput.json",
) -> None:
    """Catalog ingestion through the broker beside the raw forward pass, images per second."""
    from worker.observability.logs import load_settings
    from worker.tools.bench.pipeline import run_throughput
    from worker.tools.bench.report import write_result

    settings = load_settings(quiet=True)
    runs = {}
    table = Table(title="Catalog ingestion")
    for column in ("runtime", "images", "pipeline img/s", "raw forward img/s", "ratio", "batch"):
        table.add_column(column, justify="right")
    for runtime in _runtimes(runtimes, settings):
        with Progress(console=console, transient=True) as progress:
            figures = run_throughput(
                _on_runtime(settings, runtime), data, copies, amqp_url, s3_endpoint, progress
            )
        table.add_row(
            runtime.value,
            str(figures["images"]),
            f"{figures['pipeline_images_per_second']:.1f}",
            f"{figures['raw_forward_images_per_second']:.1f}",
            f"{figures['pipeline_over_raw']:.2f}",
            str(figures["batch_size"]),
        )
        runs[runtime.value] = figures
    console.print(table)
    figures = runs[next(iter(runs))] if len(runs) == 1 else {"runtimes": runs}
    console.print(f"written: {write_result(out, 'throughput', _command(), figures)}")


@bench.command()
def scale(
    sizes: Annotated[str, typer.Option(help="Reference-image counts.")] = "10000,100000",
    kinds: Annotated[
        str, typer.Option(help="random, clustered, real (needs --data).")
    ] = "random,clustered,real",
    data: Annotated[Path | None, typer.Option(help="Folder data set for real vectors.")] = None,
    real_photos: Annotated[
        int, typer.Option(help="About this many photos (every n-th) and the catalog images.")
    ] = 400,
    dim: Annotated[int | None, typer.Option(help="Vector size (default: the model's).")] = None,
    queries: Annotated[int, typer.Option(help="Grouped queries per measurement.")] = 200,
    hnsw: Annotated[
        str, typer.Option(help="HNSW configs m:ef_construct[:int8], comma sep.")
    ] = "16:128,32:256,32:256:int8",
    ef: Annotated[str, typer.Option(help="hnsw_ef values swept at query time.")] = "64,128,256,512",
    hnsw_max_size: Annotated[int, typer.Option(help="Build HNSW up to this size only.")] = 100_000,
    local_mode_max_size: Annotated[
        int, typer.Option(help="Measure qdrant-client's local mode up to this size.")
    ] = 10_000,
    out: Annotated[Path, typer.Option(help="JSON result file.")] = RESULTS / "scale.json",
) -> None:
    """Grouped-query latency, insert rate, memory, reopen time and HNSW recall vs exact."""
    from worker.observability.logs import load_settings
    from worker.tools.bench.report import write_result
    from worker.tools.bench.scale import HnswConfig, run_scale

    settings = load_settings(quiet=True)
    configs = []
    for spec in hnsw.split(","):
        parts = spec.split(":")
        configs.append(
            HnswConfig(int(parts[0]), int(parts[1]), parts[2] if len(parts) > 2 else "none")
        )
    kind_list = [k.strip() for k in kinds.split(",") if k.strip()]
    with Progress(console=console, transient=True) as progress:
        real, vector_dim = None, dim
        if "real" in kind_list or vector_dim is None:
            from worker.tools.bench.scale_real import real_vectors

            real, model_dim = real_vectors(settings, data, real_photos, progress)
            vector_dim = vector_dim or model_dim
        figures = run_scale(
            _ints(sizes),
            kind_list,
            vector_dim,
            4,
            queries,
            configs,
            _ints(ef),
            hnsw_max_size,
            local_mode_max_size,
            real,
            progress,
        )
    console.print(_scale_table(figures, vector_dim))
    console.print(f"written: {write_result(out, 'scale', _command(), figures)}")


def _scale_table(figures: dict, vector_dim: int) -> Table:
    """Each size and kind: the exact search, each HNSW setting, and qdrant-client's local
    mode where measured."""
    table = Table(title=f"Grouped top-10 query on the embedded engine ({vector_dim}-d)")
    for column in (
        "size",
        "kind",
        "search",
        "p50 ms",
        "p95 ms",
        "recall@10",
        "build s",
        "insert/s",
        "RSS MiB",
        "reopen s",
    ):
        table.add_column(column, justify="right")
    for row in figures["results"]:
        edge = row["edge"]
        table.add_row(
            str(row["size"]),
            row["kind"],
            "exact",
            f"{edge['exact_query_ms']['p50']:.1f}",
            f"{edge['exact_query_ms']['p95']:.1f}",
            "1.000",
            "",
            f"{edge['insert_points_per_second']:.0f}",
            f"{edge['rss_growth_mib']:.0f}",
            f"{edge['reopen_seconds']:.2f}",
        )
        for h in edge["hnsw"]:
            table.add_row(
                "",
                "",
                f"{h['config']} ef{h['hnsw_ef']}",
                f"{h['query_ms']['p50']:.1f}",
                f"{h['query_ms']['p95']:.1f}",
                f"{h['recall@10']:.3f}",
                f"{h['build_seconds']:.0f}",
                "",
                "",
                "",
            )
        if "qdrant_client_local" in row:
            local = row["qdrant_client_local"]
            table.add_row(
                "",
                "",
                "qdrant-client local mode",
                f"{local['query_ms']['p50']:.1f}",
                f"{local['query_ms']['p95']:.1f}",
                "1.000",
                "",
                f"{local['insert_points_per_second']:.0f}",
                "",
                "",
            )
    return table


@bench.command()
def models(
    data: Annotated[Path, typer.Option(help="Folder data set for the accuracy rows.")],
    names: Annotated[
        str, typer.Option(help="Models to compare.")
    ] = "efficientnet-lite0,efficientnet-lite1,efficientnet-lite2",
    confirmed: Annotated[str, typer.Option(help="Confirmed photos per product.")] = "0,10",
    split: Annotated[str, typer.Option(help="Split of the query photos to match.")] = "val",
    runtimes: Annotated[str | None, typer.Option(help=RUNTIMES_HELP)] = None,
    out: Annotated[Path, typer.Option(help="JSON result file.")] = RESULTS / "models.json",
) -> None:
    """Accuracy and speed of each model that loads offline (on each runtime), on the same
    protocol."""
    from worker.observability.logs import load_settings
    from worker.tools.bench.accuracy import AccuracyOptions, run_accuracy
    from worker.tools.bench.model_comparison import embedding_speed
    from worker.tools.bench.report import write_result

    settings = load_settings(quiet=True)
    rows = []
    for name in [n.strip() for n in names.split(",") if n.strip()]:
        for runtime in _runtimes(runtimes, settings):
            model_settings = settings.model.model_copy(update={"name": name, "runtime": runtime})
            run_settings = settings.model_copy(update={"model": model_settings})
            with Progress(console=console, transient=True) as progress:
                report = run_accuracy(
                    run_settings,
                    AccuracyOptions(data=data, split=split, confirmed=_ints(confirmed)),
                    progress,
                )
                speed = embedding_speed(run_settings, data, progress)
            rows.append({"model": name, "runs": report.to_json()["runs"], **speed})
    table = Table(title=f"Models on {data} ({split})")
    counts = _ints(confirmed)
    table.add_column("model")
    table.add_column("runtime")
    table.add_column("image px", justify="right")
    for count in counts:
        table.add_column(f"R@1, {count} confirmed", justify="right")
    table.add_column("scan embed ms p50", justify="right")
    table.add_column("catalog img/s", justify="right")
    for row in rows:
        by_count = {r["confirmed_per_product"]: r for r in row["runs"]}
        table.add_row(
            row["model"],
            row["runtime"],
            str(row["image_size"]),
            *(f"{by_count[count]['recall@1']:.3f}" for count in counts),
            f"{row['scan_embed_ms']['p50']:.1f}",
            f"{row['catalog_images_per_second']:.1f}",
        )
    console.print(table)
    console.print(f"written: {write_result(out, 'models', _command(), {'models': rows})}")


@bench.command()
def refit(
    products: Annotated[int, typer.Option(help="Products in the catalog.")] = 73,
    confirmed: Annotated[str, typer.Option(help="Confirmed photos per product.")] = "3,10",
    scans: Annotated[int, typer.Option(help="Unlabeled scans remembered.")] = 800,
    dim: Annotated[int, typer.Option(help="Image embedding dimension.")] = 2560,
    colour_dim: Annotated[int, typer.Option(help="Colour descriptor dimension.")] = 16,
    out: Annotated[Path, typer.Option(help="JSON result file.")] = RESULTS / "refit.json",
) -> None:
    """Seconds a background refit of every stage takes (the confidence's labels included), on
    vectors of a deployment's shape."""
    from worker.observability.logs import load_settings
    from worker.tools.bench.refit import run_refit
    from worker.tools.bench.report import write_result

    settings = load_settings(quiet=True)
    rows = run_refit(settings, products, _ints(confirmed), scans, dim, colour_dim)
    table = Table(title=f"Refit, {products} products, {scans} scans, {dim + colour_dim}-d")
    for label in ("confirmed", "references", "s median", "s max", "stages"):
        table.add_column(label)
    for row in rows:
        table.add_row(
            str(row["confirmed_per_product"]),
            str(row["references"]),
            f"{row['seconds_median']:.2f}",
            f"{row['seconds_max']:.2f}",
            " ".join(row["stages"]),
        )
    console.print(table)
    console.print(f"written: {write_result(out, 'refit', _command(), {'refits': rows})}")


@bench.command("train")
def train_job(
    data: Annotated[Path, typer.Option(help="Folder data set (catalog_* and query_* files).")],
    split: Annotated[str, typer.Option(help="Split whose photos are the confirmations.")] = "train",
    photos: Annotated[
        int, typer.Option(min=2, help="Confirmed photos per product (products with fewer: out).")
    ] = 10,
    open_set: Annotated[
        int,
        typer.Option(min=1, help="Held-out products left out of the gate's catalog (open set)."),
    ] = 4,
    out: Annotated[Path, typer.Option(help="JSON result file.")] = RESULTS / "train-job.json",
) -> None:
    """Seconds the whole `jewelmatch train` job takes (export, judging, fine-tuning, ONNX
    export) on a deployment whose index holds `photos` confirmed photos per product, in
    moto's S3 server and a fresh embedded index; nothing is left behind."""
    from worker.observability.logs import load_settings
    from worker.tools.bench.report import write_result
    from worker.tools.bench.training import TrainBenchOptions, run_train_bench
    from worker.tools.training.job import TrainOptions

    settings = load_settings(quiet=True)
    options = TrainBenchOptions(data, split, photos, TrainOptions(open_set=open_set))
    with Progress(console=console) as progress:
        figures = run_train_bench(settings, options, progress)
    table = Table(title=f"jewelmatch train, {figures['products']} products × {photos} photos")
    for label in ("confirmed", "train photos", "job s", "training s", "gate"):
        table.add_column(label)
    table.add_row(
        str(figures["confirmed_photos"]),
        str(figures["data"]["train_photos"]),
        f"{figures['seconds']:.0f}",
        f"{figures['training_seconds']:.0f}",
        "passed"
        if figures["gate"]["passed"]
        else "failed: " + "; ".join(figures["gate"]["reasons"]),
    )
    console.print(table)
    console.print(f"written: {write_result(out, 'train', _command(), figures)}")
