"""`opentrack doctor`: can the configured backends run here? One row per model role (backend, device, whether
its Python dependencies import, whether its weights are on disk) plus the optional system pieces. Nothing is
downloaded and no model is loaded, so it is quick and safe offline.

The rows come from the registry and what each backend class declares (``requirements``, base.Requirements), so
a new backend needs no change here."""

from __future__ import annotations

import dataclasses
import importlib
import sys
from dataclasses import dataclass
from typing import Any, List, TextIO, Tuple

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
    if not modules:
        return True, "none needed"
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


def _row(role: str, name: str, role_cfg: Any, pcfg: Any, required: bool = True) -> Row:
    """One backend's row, from what its class declares (base.Requirements): nothing is built or loaded."""
    from ..errors import ConfigError
    from .registry import BACKENDS, backend_class

    if name not in BACKENDS.get(role, {}):
        known = ", ".join(sorted(BACKENDS.get(role, {})))
        return Row(role, name, "-", "-", f"unknown backend (known: {known}, none)", False, required)
    try:
        req = backend_class(role, name).requirements(role_cfg, pcfg)
    except ConfigError as exc:  # a model setting the backend cannot read
        return Row(role, name, "-", "-", str(exc), False, required)
    except Exception as exc:  # its module does not import
        return Row(role, name, "-", f"{type(exc).__name__}: {exc}"[:160], "-", False, required)
    deps_ok, deps = req.import_check() if req.import_check is not None else _try_import(*req.modules)
    status = (
        W.status(req.weights, pcfg, hub_file=req.hub_file, hub_repo=req.hub_repo) if req.weights is not None else None
    )
    dev_ok, dev = _device(role_cfg.device, role) if req.device is None else (True, req.device)
    weights = status.where if status is not None else req.note
    w_ok = status.present if status is not None else True
    return Row(role, req.backend or name, dev, deps, weights, dev_ok and deps_ok and w_ok, required)


def model_rows(config: Any, all_backends: bool = False) -> List[Row]:
    """One row per model role (its configured backend); with ``all_backends`` also one per other registered
    backend, checked with its role's default settings and informational only."""
    from .registry import BACKENDS

    pcfg = config.perception
    rows = []
    for role, names in BACKENDS.items():
        role_cfg = getattr(pcfg, role)
        if role_cfg.name == "none":
            rows.append(Row(role, "none", "-", "-", "disabled", True, required=False))
        elif role in ("detector", "segmenter") and config.masks.source != "model":
            rows.append(
                Row(
                    role,
                    role_cfg.name,
                    "-",
                    "-",
                    f"not used (masks.source={config.masks.source})",
                    True,
                    required=False,
                )
            )
        else:
            rows.append(_row(role, role_cfg.name, role_cfg, pcfg))
        if all_backends:
            for name in names:
                if name != role_cfg.name:
                    other = dataclasses.replace(type(role_cfg)(), name=name)
                    rows.append(_row(role, name, other, pcfg, required=False))
    return rows


def system_rows(config: Any) -> List[Row]:
    """open3d (+ libusb), rclpy, tensorrt, CUDA. Required only where the config depends on them."""
    rows = [_open3d_row(config.dbscan.backend == "open3d"), _compiled_row()]
    ok, msg = _try_import("rclpy")
    rows.append(Row("ros", "rclpy", "-", msg, "only for the ROS node", ok, required=False))
    from .tensorrt_engine import tensorrt_status

    trt_ok, trt_msg = tensorrt_status()
    wanted = config.perception.detector.tensorrt or config.perception.features.tensorrt
    note = "engines enabled" if wanted and trt_ok else ("PyTorch fallback" if wanted else "not enabled")
    rows.append(Row("tensorrt", "tensorrt", "-", trt_msg[:160], note, trt_ok, required=False))
    from .onnx_runtime import available_providers

    providers = available_providers()
    rows.append(
        Row(
            "onnxruntime",
            "onnxruntime",
            "-",
            "ok" if providers else "not installed",
            "providers: " + (", ".join(p.replace("ExecutionProvider", "") for p in providers) or "none"),
            bool(providers),
            required=False,
        )
    )
    try:
        import torch

        cuda = torch.cuda.is_available()
        rows.append(
            Row(
                "cuda",
                f"torch {torch.__version__}",
                "cuda" if cuda else "cpu",
                "ok",
                torch.cuda.get_device_name(0) if cuda else "no GPU (CPU only)",
                cuda,
                required=False,
            )
        )
    except Exception as exc:
        rows.append(Row("cuda", "torch", "-", f"{type(exc).__name__}: {exc}", "-", False, required=True))
    return rows


def _compiled_row() -> Row:
    """numba for the compiled loops (ros2_opentrack.compiled): optional, the numpy code gives the same results."""
    from .. import compiled

    if compiled.ENABLED:
        msg, note = f"ok (numba {compiled.numba.__version__})", "hot loops compiled"
    else:
        msg, note = compiled.UNAVAILABLE, "numpy code (same results, ~8 ms/keyframe slower on 2 cores)"
    return Row("kernels", "numba", "cpu", msg[:160], note, compiled.ENABLED, required=False)


def _open3d_row(required: bool) -> Row:
    """open3d needs libusb-1.0: import_open3d loads the libusb-package wheel's copy first when the system lacks it."""
    from ..errors import BackendUnavailable
    from ..lifting import import_open3d

    try:
        import_open3d()
        ok, msg = True, "ok (open3d)"
    except BackendUnavailable as exc:
        ok, msg = False, str(exc)
    return Row(
        "open3d",
        "open3d",
        "cpu",
        msg,
        "DBSCAN/PLY (sklearn fallback)" if not required else "dbscan.backend",
        ok,
        required=required,
    )


def run_doctor(config: Any = None, out: TextIO = sys.stdout, all_backends: bool = False) -> int:
    """Print the table; 0 when everything the config needs is usable, 1 otherwise. ``all_backends`` adds a row
    for every registered backend (informational: only the configured ones decide the exit code)."""
    if config is None:
        from ..config import OpenTrackConfig

        config = OpenTrackConfig()
    rows = model_rows(config, all_backends) + system_rows(config)
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
