"""ONNX Runtime plumbing shared by the ``onnx`` backends: the model file, the execution providers chosen by
``device``, and the model's metadata.

device (per role): ``auto`` (CUDA when ONNX Runtime has it, else CPU), ``cpu``, ``cuda`` / ``cuda:N``,
``tensorrt`` / ``tensorrt:N`` (TensorRT, engines cached under ``perception.weights_dir/onnx_trt_engines``, with
CUDA and CPU behind it). ``tensorrt: true`` in the detector / features config means the same as device tensorrt.
A provider that this ONNX Runtime build lacks is not an error: the session falls back to what exists and says so
in ONE log line (per model), so a robot without a GPU still runs the same config."""

from __future__ import annotations

import ast
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import BackendUnavailable, ConfigError

log = logging.getLogger(__name__)

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


def import_ort():
    try:
        import onnxruntime
    except Exception as exc:
        raise BackendUnavailable(
            f"the onnx backends need onnxruntime ({type(exc).__name__}: {exc}); "
            f"pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA / TensorRT)"
        ) from None
    return onnxruntime


def available_providers() -> List[str]:
    """The execution providers of the installed ONNX Runtime ([] when it does not import)."""
    try:
        return list(import_ort().get_available_providers())
    except BackendUnavailable:
        return []


def onnx_requirements(cfg: Any, weights: Optional[str] = None):
    """What `opentrack doctor` checks for an ONNX Runtime backend: onnxruntime imports, the model file exists,
    and where it would run (the device kind; the providers themselves are a doctor system row)."""
    from .base import Requirements

    kind, _ = parse_device(cfg.device, getattr(cfg, "tensorrt", False))
    return Requirements(modules=("onnxruntime",), weights=weights or cfg.model, device=f"{kind} (onnxruntime)")


def backend_requirements(cfg: Any, perception_cfg: Any = None):
    """``requirements`` of the onnx backend classes (``requirements = staticmethod(backend_requirements)``)."""
    return onnx_requirements(cfg)


def parse_device(device: str, tensorrt: bool = False) -> Tuple[str, int]:
    """'auto' | 'cpu' | 'cuda[:N]' | 'tensorrt[:N]' (also 'trt') -> (kind, device id)."""
    text = (device or "auto").strip().lower()
    kind, _, index = text.partition(":")
    kind = {"trt": "tensorrt", "gpu": "cuda"}.get(kind, kind)
    if kind not in ("auto", "cpu", "cuda", "tensorrt") or (index and not index.isdigit()):
        raise ConfigError(
            f"device = {device!r}: expected auto, cpu, cuda, cuda:N, tensorrt or tensorrt:N (onnx backends)"
        )
    if tensorrt and kind in ("auto", "cuda"):
        kind = "tensorrt"
    return kind, int(index or 0)


def provider_list(
    device: str,
    perception_cfg: Any = None,
    half: bool = False,
    tensorrt: bool = False,
    available: Optional[Sequence[str]] = None,
    role: str = "model",
) -> Tuple[list, Optional[str]]:
    """(providers with options for InferenceSession, a fallback note or None). Only providers that exist are
    listed; what was asked for and is missing is named in the note."""
    kind, index = parse_device(device, tensorrt)
    have = list(available if available is not None else available_providers())
    wanted = {"cpu": [CPU], "auto": [CUDA, CPU], "cuda": [CUDA, CPU], "tensorrt": [TRT, CUDA, CPU]}[kind]
    out: list = []
    for name in wanted:
        if name not in have:
            continue
        if name == TRT:
            from .weights import weights_dir

            cache = weights_dir(perception_cfg) / "onnx_trt_engines"
            out.append(
                (
                    TRT,
                    {
                        "device_id": index,
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": str(cache),
                        "trt_timing_cache_enable": True,
                        "trt_timing_cache_path": str(cache),
                        "trt_fp16_enable": bool(half),
                    },
                )
            )
        elif name == CUDA:
            out.append((CUDA, {"device_id": index}))
        else:
            out.append(name)
    if not out:  # an onnxruntime without even the CPU provider is broken; let ORT say what it has
        out = have[:1]
    missing = [n for n in wanted if n not in have and not (kind == "auto" and n == CUDA)]
    note = None
    if missing:
        chosen = [p if isinstance(p, str) else p[0] for p in out]
        note = (
            f"{role}: device '{device}' asks for {', '.join(missing)}, which this ONNX Runtime lacks "
            f"(it has {', '.join(have) or 'nothing'}): running on {chosen[0] if chosen else '?'}"
        )
    return out, note


def make_session(
    path: Path,
    device: str = "auto",
    perception_cfg: Any = None,
    half: bool = False,
    tensorrt: bool = False,
    role: str = "model",
    threads: int = 0,
):
    """An InferenceSession on the best providers the device allows; logs one line on fallback."""
    ort = import_ort()
    providers, note = provider_list(device, perception_cfg, half, tensorrt, role=role)
    for p in providers:
        if isinstance(p, tuple) and p[0] == TRT:
            Path(p[1]["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:
        raise BackendUnavailable(
            f"{role}: ONNX Runtime cannot load {path}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    used = session.get_providers()
    if note:
        log.warning(note)
    elif providers and (providers[0] if isinstance(providers[0], str) else providers[0][0]) != used[0]:
        log.warning(
            "%s: ONNX Runtime could not start %s; running on %s",
            role,
            providers[0] if isinstance(providers[0], str) else providers[0][0],
            used[0],
        )
    log.info("%s: %s on %s", role, Path(path).name, ", ".join(used))
    return session


def resolve_model(ref: str, role: str, perception_cfg: Any = None) -> Path:
    """A local .onnx path or a file name inside perception.weights_dir; a clear error when it is missing."""
    from .weights import resolve_file

    if not ref:
        raise ConfigError(
            f"{role}: no model file given; set it to the path of an .onnx file "
            f"(or a file name inside perception.weights_dir)"
        )
    path = resolve_file(ref, role, perception_cfg)
    if path.is_dir():
        raise ConfigError(f"{role}: {path} is a folder; name the .onnx file in it")
    return path


def session_from_config(cfg: Any, role: str, perception_cfg: Any = None) -> Tuple[Path, Any]:
    """(the model file cfg.model names, an InferenceSession on it as cfg.device / half / tensorrt ask, with
    env_threads(perception_cfg) threads): what from_config of a one-model onnx backend starts from."""
    path = resolve_model(cfg.model, role, perception_cfg)
    session = make_session(
        path,
        cfg.device,
        perception_cfg,
        half=cfg.half,
        tensorrt=cfg.tensorrt,
        role=role,
        threads=env_threads(perception_cfg),
    )
    return path, session


def metadata(session) -> Dict[str, str]:
    """The model's metadata_props (custom_metadata_map) as a plain dict."""
    try:
        return dict(session.get_modelmeta().custom_metadata_map or {})
    except Exception:  # a model without metadata
        return {}


def parse_names(text: Optional[str]) -> Optional[List[str]]:
    """Class names from metadata: a JSON list, or ultralytics' dict literal "{0: 'person', 1: 'bicycle'}"."""
    if not text:
        return None
    value: Any = None
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return None
    if isinstance(value, dict):
        try:
            return [str(value[k]) for k in sorted(value, key=lambda k: int(k))]
        except (TypeError, ValueError):
            return None
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return None


def sidecar_names(model_path: Path) -> Optional[List[str]]:
    """``<model>.classes.txt`` beside the model (one name a line)."""
    for candidate in (model_path.with_suffix(".classes.txt"), Path(str(model_path) + ".classes.txt")):
        if candidate.is_file():
            return [line.strip() for line in candidate.read_text().splitlines() if line.strip()]
    return None


def input_scale(meta: Dict[str, str]) -> float:
    """Pixel divisor from metadata ``input_scale`` ('0..1 RGB' -> 255, '0..255' -> 1). Default 0..1."""
    text = meta.get("input_scale", "").replace(" ", "")
    return 1.0 if text.startswith("0..255") else 255.0


def fixed_hw(shape: Sequence[Any]) -> Optional[Tuple[int, int]]:
    """(H, W) of an NCHW input when both are fixed integers in the graph, else None."""
    if len(shape) != 4:
        return None
    h, w = shape[2], shape[3]
    if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
        return h, w
    return None


def env_threads(perception_cfg: Any = None) -> int:
    """Intra-op threads per session: perception.onnx_threads, else OPENTRACK_ORT_THREADS, else 0 (ONNX Runtime's
    default: all cores)."""
    configured = int(getattr(perception_cfg, "onnx_threads", 0) or 0)
    if configured > 0:
        return configured
    try:
        return max(0, int(os.environ.get("OPENTRACK_ORT_THREADS", "0")))
    except ValueError:
        return 0
