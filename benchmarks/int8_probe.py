"""int8 probe (not a runtime of the worker): ONNX Runtime's dynamic and static (QDQ, calibrated
on 32 catalog images) int8 quantization of the default Lite0 tower, run by ONNX Runtime and by
OpenVINO; p50 of one scan's 6 views as one batch, and the worst cosine to the fp32 vectors.

    .venv/bin/python benchmarks/int8_probe.py [DATA] [WORKDIR]

Figures and the decision: docs/benchmarks.md, "Runtimes".
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openvino as ov
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image

from worker.settings import ModelRuntime, ModelSettings
from worker.vision.embedder import Embedder, centred_crops, unit_rows

DATA = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/grocery-store")
WORK = Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/jewelmatch-int8")
Tower = Callable[[np.ndarray], np.ndarray]


class Calibration(CalibrationDataReader):
    def __init__(self, pixels: list[np.ndarray]) -> None:
        self._batches = iter(pixels)

    def get_next(self) -> dict | None:
        batch = next(self._batches, None)
        return None if batch is None else {"pixels": batch}


def on_onnxruntime(path: Path) -> Tower:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"pixels": batch})[0]


def on_openvino(path: Path) -> Tower:
    compiled = ov.Core().compile_model(
        str(path), "CPU", {"INFERENCE_NUM_THREADS": 2, "NUM_STREAMS": 1}
    )
    request = compiled.create_infer_request()

    def run(batch: np.ndarray) -> np.ndarray:
        request.infer([batch])
        return request.get_output_tensor(0).data.copy()

    return run


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    settings = ModelSettings(threads=2, runtime=ModelRuntime.onnxruntime, cache_dir=WORK / "cache")
    embedder = Embedder(settings)
    fp32 = next((WORK / "cache" / "onnx").glob("*.onnx"))
    prepared = WORK / "prepared.onnx"
    quant_pre_process(str(fp32), str(prepared))

    def pixels(image: Image.Image) -> np.ndarray:
        return embedder._transform(image).numpy()

    catalog = sorted(DATA.rglob("catalog_*.jpg"))[::3][:32]
    calibration = [pixels(Image.open(p).convert("RGB"))[None] for p in catalog]
    quantize_dynamic(str(prepared), str(WORK / "dynamic.onnx"), weight_type=QuantType.QInt8)
    quantize_static(
        str(prepared),
        str(WORK / "static.onnx"),
        Calibration(calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )

    def views(path: Path) -> np.ndarray:
        crops = centred_crops(Image.open(path).convert("RGB"), (1.0, 0.75, 0.5))
        batch = np.stack([pixels(crop) for crop in crops])
        return np.ascontiguousarray(np.concatenate([batch, batch[..., ::-1]]))

    scans = [views(p) for p in sorted(DATA.rglob("query_val_*.jpg"))[::20][:12]]
    reference = on_onnxruntime(fp32)
    expected = [unit_rows(reference(batch)) for batch in scans]
    towers = {
        "onnxruntime fp32": reference,
        "openvino fp32": on_openvino(fp32),
        "onnxruntime dynamic int8": on_onnxruntime(WORK / "dynamic.onnx"),
        "onnxruntime static int8": on_onnxruntime(WORK / "static.onnx"),
        "openvino static int8": on_openvino(WORK / "static.onnx"),
    }
    for label, tower in towers.items():
        vectors = [unit_rows(tower(batch)) for batch in scans]
        timings = []
        for batch in scans:
            started = time.perf_counter()
            tower(batch)
            timings.append((time.perf_counter() - started) * 1000)
        cosine = min(
            float((v * e).sum(axis=1).min()) for v, e in zip(vectors, expected, strict=True)
        )
        print(f"{label}: 6 views p50 {np.median(timings):.1f} ms, worst cosine {cosine:.4f}")


if __name__ == "__main__":
    main()
