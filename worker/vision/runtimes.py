"""What runs the image tower: torch, as open_clip builds it, or the same tower exported to ONNX
and run by ONNX Runtime or OpenVINO.

On CPU the exported tower is several times faster than eager torch for the same vectors
(docs/benchmarks.md, "Runtimes"). The export is made once per weights and export settings and
cached beside the prepared weights (`prepare-model`, the Docker build) or in a `local-dir:`
model's own folder (a model version's); torch still defines
the model, so the weights and preprocessing are the same whatever the runtime.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from worker.files import written_whole
from worker.observability.logs import get_logger
from worker.settings import ModelRuntime, ModelSettings

log = get_logger(__name__)

ONNX_OPSET = 17
EXPORT_VERSION = 1
"""Bumped whenever the export itself changes, so that an old cached file is not reused."""


class ImageTower(Protocol):
    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """Image features (not normalised) of a float32 batch of preprocessed pictures, NCHW."""
        ...


class TorchTower:
    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self._model = model
        self._device = device

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            features = self._model.encode_image(torch.from_numpy(pixels).to(self._device))
        return features.float().cpu().numpy()


class OnnxRuntimeTower:
    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: pixels})[0]


class OpenVinoTower:
    def __init__(self, path: Path, threads: int) -> None:
        import openvino

        # one stream on `threads` threads: a batch is one request, as in the worker; f32
        # whatever the CPU offers (OpenVINO would pick bf16 on CPUs with AMX or AVX512_BF16,
        # and the vectors would then depend on the machine)
        compiled = openvino.Core().compile_model(
            str(path),
            "CPU",
            {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32"},
        )
        self.precision = str(compiled.get_property("INFERENCE_PRECISION_HINT"))  # for tests
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        with self._lock:
            self._request.infer([pixels])
            return self._request.get_output_tensor(0).data.copy()


class _EncodeImage(torch.nn.Module):
    """The image tower as one module, for export."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)


def export_fingerprint(model: torch.nn.Module, image_size: tuple[int, int]) -> str:
    """A hash of the weights and of everything the export depends on: another file for other
    weights, input size, opset, exporter or torch version."""
    digest = hashlib.sha256(
        repr((EXPORT_VERSION, ONNX_OPSET, torch.__version__, tuple(image_size))).encode()
    )
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _export(model: torch.nn.Module, image_size: tuple[int, int], path: Path) -> None:
    example = torch.zeros(2, 3, *image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            _EncodeImage(model).eval(),
            (example,),
            str(path),
            input_names=["pixels"],
            output_names=["features"],
            dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


def exported_tower(
    model: torch.nn.Module,
    image_size: tuple[int, int],
    cache_dir: Path,
    name: str,
    model_folder: Path | None = None,
) -> Path:
    """The tower's ONNX file, exported on first use. It is kept in `model_folder/onnx` when
    the weights come from a writable folder (a model version carries its exports, and workers
    that mount it read-only find them), else under `cache_dir/onnx`. Where neither can be
    written (a read-only image without a prepared export), the export goes to a temporary
    folder for this process, with a warning."""
    fingerprint = export_fingerprint(model, image_size)
    places = [
        folder / "onnx" / f"{name}-{fingerprint}.onnx"
        for folder in (model_folder, cache_dir)
        if folder
    ]
    for path in places:
        if path.is_file():
            return path
    started = time.perf_counter()
    for path in places:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with written_whole(path) as partial:  # whole or absent, whoever else exports
                _export(model.cpu(), image_size, partial)
            break
        except OSError as error:
            reason = str(error)
    else:
        path = Path(tempfile.mkdtemp(prefix="jewelmatch-onnx-")) / places[-1].name
        log.warning("model.export_not_cached", reason=reason, path=str(path))
        _export(model.cpu(), image_size, path)
    log.info("model.exported", path=str(path), seconds=round(time.perf_counter() - started, 2))
    return path


def open_tower(
    settings: ModelSettings,
    model: torch.nn.Module,
    image_size: tuple[int, int],
    name: str,
    device: torch.device,
    model_folder: Path | None = None,
) -> ImageTower:
    if settings.runtime is ModelRuntime.torch:
        return TorchTower(model, device)
    path = exported_tower(model, image_size, settings.cache_dir, name, model_folder)
    if settings.runtime is ModelRuntime.onnxruntime:
        return OnnxRuntimeTower(path, settings.threads)
    return OpenVinoTower(path, settings.threads)
