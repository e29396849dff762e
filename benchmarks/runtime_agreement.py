"""How closely the exported runtimes' vectors follow torch's, on every code path one machine
can be made to take: each runtime at 1 and 2 threads, and with the instruction sets capped
(`ONEDNN_MAX_CPU_ISA`, which OpenVINO's CPU plugin and torch's oneDNN honour: AVX2 on a
machine with AVX-512, as on an older CPU). Real default weights, real photos.

    .venv/bin/python benchmarks/runtime_agreement.py [DATA] [--isa AVX2,AVX512_CORE,...]

Prints, per path, the worst and median cosine to torch (default ISA, 2 threads) and whether
the top-3 ranking of 16 scans over 8 catalog images is the same. Figures and the bound the
tests assert: docs/benchmarks.md, "Runtimes".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

PRODUCTS = [
    "Arla-Medium-Fat-Milk",
    "Arla-Standard-Milk",
    "Banana",
    "Granny-Smith",
    "Pink-Lady",
    "Red-Bell-Pepper",
    "Yellow-Bell-Pepper",
    "Tropicana-Apple-Juice",
]
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "grocery-store"


def embed(data: Path, runtime: str, threads: int, out: Path) -> None:
    """One path, in this process (the environment fixes its instruction set)."""
    from PIL import Image

    from worker.settings import ModelRuntime, ModelSettings
    from worker.vision.embedder import Embedder, ImageKind

    def pictures(pattern: str, per_product: int) -> list:
        paths = [p for n in PRODUCTS for p in sorted((data / n).glob(pattern))[:per_product]]
        return [Image.open(path).convert("RGB") for path in paths]

    if runtime == "openvino-bf16":  # not a path of the worker: what bf16 would cost
        import openvino

        from worker.vision import runtimes

        compile_model = openvino.Core.compile_model

        def bf16(core, model, device, config):
            return compile_model(
                core, model, device, {**config, "INFERENCE_PRECISION_HINT": "bf16"}
            )

        openvino.Core.compile_model = bf16
        runtimes.openvino = openvino
        runtime = "openvino"
    settings = ModelSettings(
        cache_dir=Path(os.environ["AGREEMENT_CACHE"]),
        threads=threads,
        runtime=ModelRuntime(runtime),
    )
    embedder = Embedder(settings)
    np.savez(
        out,
        catalog=embedder.embed(pictures("catalog_*", 1), ImageKind.catalog),
        scans=embedder.embed(pictures("query_*", 2), ImageKind.scan),
    )


def run_path(data: Path, runtime: str, threads: int, isa: str | None, cache: Path) -> dict:
    env = {**os.environ, "AGREEMENT_CACHE": str(cache)}
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = env["DNNL_MAX_CPU_ISA"] = env["OV_CPU_MAX_ISA"] = isa
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "vectors.npz"
        subprocess.run(
            [sys.executable, __file__, "--embed", runtime, str(threads), str(out), str(data)],
            env=env,
            check=True,
        )
        loaded = np.load(out)
        return {"catalog": loaded["catalog"], "scans": loaded["scans"]}


def compare(path: dict, reference: dict) -> dict:
    cosines = np.concatenate(
        [
            np.sum(path["catalog"] * reference["catalog"], axis=1),
            np.sum(path["scans"] * reference["scans"], axis=1),
        ]
    )
    ranking = np.argsort(-(path["scans"] @ path["catalog"].T), axis=1)[:, :3]
    expected = np.argsort(-(reference["scans"] @ reference["catalog"].T), axis=1)[:, :3]
    return {
        "worst_cosine": float(cosines.min()),
        "worst_gap": f"{1 - float(cosines.min()):.1e}",
        "same_top1": bool((ranking[:, 0] == expected[:, 0]).all()),
        "same_top3": bool((ranking == expected).all()),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--embed":
        runtime, threads, out, data = sys.argv[2:6]
        embed(Path(data), runtime, int(threads), Path(out))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--isa", default="AVX2,AVX512_CORE", help="caps to force, besides none")
    parser.add_argument(
        "--bf16", action="store_true", help="also OpenVINO at bf16 (what the f32 pin avoids)"
    )
    args = parser.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="agreement-cache-"))
    reference = run_path(args.data, "torch", 2, None, cache)
    rows = []
    for isa in [None, *args.isa.split(",")]:
        for runtime in ("torch", "onnxruntime", "openvino"):
            for threads in (1, 2):
                if runtime == "torch" and isa is None and threads == 2:
                    continue  # the reference itself
                figures = compare(run_path(args.data, runtime, threads, isa, cache), reference)
                row = {"runtime": runtime, "threads": threads, "isa": isa or "default", **figures}
                print(json.dumps(row), flush=True)
                rows.append(row)
    worst = min(row["worst_cosine"] for row in rows)
    if args.bf16:
        row = {"runtime": "openvino-bf16", "threads": 2, "isa": "default"}
        row.update(compare(run_path(args.data, "openvino-bf16", 2, None, cache), reference))
        print(json.dumps(row), "(not a path of the worker)", flush=True)
    print(f"worst cosine to torch over {len(rows)} paths: {worst:.7f} (1 - {1 - worst:.1e})")
    print(f"same top-1 on every path: {all(row['same_top1'] for row in rows)}")
    print(f"same top-3 ranking on every path: {all(row['same_top3'] for row in rows)}")


if __name__ == "__main__":
    main()
