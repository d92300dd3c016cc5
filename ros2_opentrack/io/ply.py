"""Minimal PLY point-cloud I/O in numpy (no open3d needed).

Writes binary little-endian vertex-only files; reads ascii and binary (either endianness) files and returns the
vertex element as a dict of columns. Faces or other elements after the vertices (ScanNet meshes) are ignored."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np

from ..errors import InputError

_PLY_TYPES = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
}
_NUMPY_TO_PLY = {
    "i1": "char",
    "u1": "uchar",
    "i2": "short",
    "u2": "ushort",
    "i4": "int",
    "u4": "uint",
    "f4": "float",
    "f8": "double",
}


def write_ply(
    path, points: np.ndarray, colors: Optional[np.ndarray] = None, extra: Optional[Dict[str, np.ndarray]] = None
) -> Path:
    """Write points (N,3), optional colours (N,3) uint8 and extra per-point scalar columns (e.g. instance)."""
    path = Path(path)
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    n = len(points)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    columns = {"x": points[:, 0], "y": points[:, 1], "z": points[:, 2]}
    if colors is not None:
        colors = np.asarray(colors).reshape(-1, 3)
        if len(colors) != n:
            raise InputError(f"PLY '{path}': {len(colors)} colours for {n} points")
        colors = np.clip(colors, 0, 255).astype(np.uint8)
        for i, name in enumerate(("red", "green", "blue")):
            fields.append((name, "u1"))
            columns[name] = colors[:, i]
    for name, values in (extra or {}).items():
        values = np.asarray(values).reshape(-1)
        if len(values) != n:
            raise InputError(f"PLY '{path}': column '{name}' has {len(values)} values for {n} points")
        code = values.dtype.newbyteorder("<").str
        if code[1:] not in _NUMPY_TO_PLY:
            values = values.astype(np.float32 if values.dtype.kind == "f" else np.int32)
            code = values.dtype.newbyteorder("<").str
        fields.append((name, code))
        columns[name] = values
    data = np.empty(n, dtype=fields)
    for name, values in columns.items():
        data[name] = values
    header = ["ply", "format binary_little_endian 1.0", "comment written by ros2_opentrack", f"element vertex {n}"]
    header += [f"property {_NUMPY_TO_PLY[np.dtype(code).str[1:]]} {name}" for name, code in fields]
    header.append("end_header")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(data.tobytes())
    return path


def read_ply(path) -> Dict[str, np.ndarray]:
    """The vertex element of a PLY file as {property name: (N,) array}. Raises InputError on a bad file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read PLY '{path}': {exc.strerror}") from None
    fmt, elements, body_start = _parse_header(raw, path)
    offset = body_start
    text_lines = None
    if fmt == "ascii":
        text_lines = raw[body_start:].decode("ascii", errors="replace").split("\n")
    line_no = 0
    for name, count, props in elements:
        if name == "vertex":
            if any(p[1] == "list" for p in props):
                raise InputError(f"PLY '{path}': list properties on vertices are not supported")
            dtype = np.dtype([(p[0], ("<" if fmt != "binary_big_endian" else ">") + _PLY_TYPES[p[1]]) for p in props])
            if fmt == "ascii":
                rows = [ln.split() for ln in text_lines[line_no : line_no + count]]
                try:
                    table = np.array(rows, dtype=np.float64).reshape(count, len(props))
                except ValueError:
                    raise InputError(f"PLY '{path}': malformed ascii vertex rows") from None
                return {p[0]: table[:, i].astype(dtype[p[0]].newbyteorder("=")) for i, p in enumerate(props)}
            end = offset + dtype.itemsize * count
            if end > len(raw):
                raise InputError(f"PLY '{path}' is truncated: {count} vertices announced, file too short")
            data = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
            return {p[0]: data[p[0]].astype(dtype[p[0]].newbyteorder("=")) for p in props}
        if fmt == "ascii":
            line_no += count
        elif any(p[1] == "list" for p in props):
            raise InputError(f"PLY '{path}': element '{name}' with list properties comes before the vertices")
        else:
            offset += count * sum(np.dtype(_PLY_TYPES[p[1]]).itemsize for p in props)
    raise InputError(f"PLY '{path}' has no vertex element")


def read_ply_points(path):
    """(points (N,3) float32, colors (N,3) uint8 or None) of a PLY file."""
    cols = read_ply(path)
    for axis in "xyz":
        if axis not in cols:
            raise InputError(f"PLY '{path}' has no '{axis}' vertex property")
    points = np.stack([cols["x"], cols["y"], cols["z"]], axis=1).astype(np.float32)
    colors = None
    if all(c in cols for c in ("red", "green", "blue")):
        colors = np.stack([cols["red"], cols["green"], cols["blue"]], axis=1)
        if colors.dtype.kind == "f" and colors.max(initial=0) <= 1.0:
            colors = colors * 255.0
        colors = np.clip(colors, 0, 255).astype(np.uint8)
    return points, colors


def _parse_header(raw: bytes, path: Path):
    end = raw.find(b"end_header")
    if not raw.startswith(b"ply") or end < 0:
        raise InputError(f"'{path}' is not a PLY file (expected a 'ply' header ending in 'end_header')")
    newline = raw.find(b"\n", end)
    body_start = newline + 1 if newline >= 0 else len(raw)
    lines = raw[:end].decode("ascii", errors="replace").splitlines()
    fmt = None
    elements = []
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "format":
            fmt = parts[1]
        elif parts[0] == "element":
            elements.append((parts[1], int(parts[2]), []))
        elif parts[0] == "property" and elements:
            if parts[1] == "list":
                elements[-1][2].append((parts[4], "list"))
            elif parts[1] in _PLY_TYPES:
                elements[-1][2].append((parts[2], parts[1]))
            else:
                raise InputError(f"PLY '{path}': unknown property type '{parts[1]}'")
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise InputError(f"PLY '{path}': unsupported format '{fmt}'")
    return fmt, elements, body_start
