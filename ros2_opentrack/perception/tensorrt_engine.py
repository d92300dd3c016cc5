"""Optional TensorRT engines (detector.tensorrt / features.tensorrt).

YOLO-World: ultralytics' own export (format='engine'), one engine per vocabulary, since the text embeddings are
baked into the exported graph. DINOv2: ONNX export -> TensorRT builder, one engine per input size. Engines are
built once and cached under <weights_dir>/engines. When tensorrt does not import, or a build fails, the backend
keeps running on PyTorch and says so once in the log."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Set, Tuple

log = logging.getLogger(__name__)
_warned: Set[str] = set()


def warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def tensorrt_status() -> Tuple[bool, str]:
    """(usable, reason): TensorRT needs the tensorrt package and a CUDA device."""
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising OSError on a missing libnvinfer
        return False, f"tensorrt does not import ({type(exc).__name__}: {exc})"
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA device"
    return True, f"tensorrt {tensorrt.__version__}"


def engine_dir(perception_cfg: Any = None) -> Path:
    from .weights import weights_dir

    return weights_dir(perception_cfg) / "engines"


def vocabulary_key(classes: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(classes).encode()).hexdigest()[:10]


# ---------------------------------------------------------------------------------------------------------
# YOLO-World


def yolo_world_engine(
    yolo: Any, classes: Sequence[str], stem: str, image_size: int, half: bool, device: str, perception_cfg: Any = None
) -> Optional[Any]:
    """An ultralytics model running the engine for this vocabulary, or None (use PyTorch)."""
    ok, reason = tensorrt_status()
    if not ok:
        warn_once("yolo_world", f"detector.tensorrt: {reason}; YOLO-World runs on PyTorch")
        return None
    path = (
        engine_dir(perception_cfg)
        / f"{stem}-{vocabulary_key(classes)}-{image_size}-{'fp16' if half else 'fp32'}.engine"
    )
    try:
        if not path.is_file():
            log.info("building TensorRT engine %s (once per vocabulary; takes minutes)", path)
            exported = yolo.export(format="engine", half=half, imgsz=image_size, device=device, verbose=False)
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(exported), path)
        from ultralytics import YOLO

        return YOLO(str(path), task="detect")
    except Exception as exc:
        warn_once(
            f"yolo_world:{path}",
            f"detector.tensorrt: engine build/load failed ({type(exc).__name__}: {exc}); YOLO-World runs on PyTorch",
        )
        return None


# ---------------------------------------------------------------------------------------------------------
# DINOv2


class Dinov2EngineCache:
    """Engines for a Dinov2Model by input size; .get(hw) -> runner or None (PyTorch fallback)."""

    def __init__(self, model: Any, perception_cfg: Any, name: str, half: bool):
        self.model = model
        self.perception_cfg = perception_cfg
        self.name = name
        self.half = half
        self.available, reason = tensorrt_status()
        if not self.available:
            warn_once("dinov2", f"features.tensorrt: {reason}; DINOv2 runs on PyTorch")
        self._runners: Dict[Tuple[int, int], Callable] = {}
        self._failed: Set[Tuple[int, int]] = set()

    def get(self, hw: Tuple[int, int]) -> Optional[Callable]:
        if not self.available or hw in self._failed:
            return None
        if hw not in self._runners:
            path = (
                engine_dir(self.perception_cfg)
                / f"{self.name}-{hw[0]}x{hw[1]}-{'fp16' if self.half else 'fp32'}.engine"
            )
            try:
                if not path.is_file():
                    build_dinov2_engine(self.model, hw, self.half, path)
                self._runners[hw] = TrtRunner(path)
            except Exception as exc:
                self._failed.add(hw)
                warn_once(
                    f"dinov2:{hw}",
                    f"features.tensorrt: engine for {hw} failed ({type(exc).__name__}: {exc}); DINOv2 runs on PyTorch",
                )
                return None
        return self._runners[hw]


class _LastHidden:
    """ONNX-exportable wrapper returning only last_hidden_state."""

    def __new__(cls, model):
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, pixel_values):
                return self.inner(pixel_values=pixel_values).last_hidden_state

        return Wrapper(model)


def build_dinov2_engine(model: Any, hw: Tuple[int, int], half: bool, path: Path) -> Path:
    import tensorrt as trt
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_path = path.with_suffix(".onnx")
    param = next(model.parameters())
    dummy = torch.zeros(1, 3, hw[0], hw[1], device=param.device, dtype=param.dtype)
    log.info("exporting DINOv2 to %s and building %s (once per input size)", onnx_path, path)
    torch.onnx.export(
        _LastHidden(model),
        (dummy,),
        str(onnx_path),
        input_names=["pixel_values"],
        output_names=["last_hidden_state"],
        opset_version=17,
    )
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = (
        0 if int(trt.__version__.split(".")[0]) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    )
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"ONNX parse failed: {errors}")
    config = builder.create_builder_config()
    if half:
        config.set_flag(trt.BuilderFlag.FP16)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT builder returned no engine")
    path.write_bytes(bytes(serialized))
    return path


class TrtRunner:
    """Runs a single-input single-output engine on torch CUDA tensors (no extra copies)."""

    def __init__(self, path: Path):
        import tensorrt as trt

        self.trt = trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"cannot deserialize {path} (built by another TensorRT version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = self.engine.get_tensor_mode
        self.input = next(n for n in names if mode(n) == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if mode(n) == trt.TensorIOMode.OUTPUT)

    def _torch_dtype(self, name: str):
        import torch

        return {self.trt.DataType.HALF: torch.float16, self.trt.DataType.FLOAT: torch.float32}[
            self.engine.get_tensor_dtype(name)
        ]

    def __call__(self, x):
        import torch

        x = x.to(self._torch_dtype(self.input)).contiguous()
        out = torch.empty(
            tuple(self.engine.get_tensor_shape(self.output)), dtype=self._torch_dtype(self.output), device=x.device
        )
        self.context.set_tensor_address(self.input, x.data_ptr())
        self.context.set_tensor_address(self.output, out.data_ptr())
        self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
        return out
