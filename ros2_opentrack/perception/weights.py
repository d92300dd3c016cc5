"""Where model weights come from: a local path, a file (or folder) inside perception.weights_dir, or a model hub
id. Offline (perception.offline or HF_HUB_OFFLINE=1) nothing is downloaded, and a missing model gives ONE error
that names what is missing, where it was looked for and where to put it."""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional

from ..errors import BackendUnavailable

_TRUE = ("1", "true", "yes", "on")


def _perception(perception_cfg: Any):
    if perception_cfg is None:
        from ..config import PerceptionConfig

        return PerceptionConfig()
    return perception_cfg


def weights_dir(perception_cfg: Any = None) -> Path:
    return Path(os.path.expandvars(_perception(perception_cfg).weights_dir)).expanduser()


def is_offline(perception_cfg: Any = None) -> bool:
    env = any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return bool(_perception(perception_cfg).offline) or env


HUB_PROBE_S = 1.5  # a hub (or proxy) that does not accept a connection this fast counts as unreachable


def _hub_address() -> tuple:
    """(host, port) a download would connect to first: the HTTPS proxy when one is set, else HF_ENDPOINT."""
    from urllib.parse import urlsplit

    proxy = next(
        (os.environ[k] for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy") if os.environ.get(k)), ""
    )
    url = urlsplit(
        proxy
        if "://" in proxy
        else (f"http://{proxy}" if proxy else os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    )
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


@functools.lru_cache(maxsize=8)
def _reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_S).close()
        return True
    except OSError:  # no route, DNS failure, refused, timed out
        return False


def hub_reachable() -> bool:
    """One quick TCP connect to the hub (or the proxy), remembered per process: without it an offline machine
    with HF_HUB_OFFLINE unset waits out the hub client's retries (about 30 s, every warning twice)."""
    return _reachable(*_hub_address())


def local_only(perception_cfg: Any = None) -> bool:
    """Offline by configuration, or because the hub cannot be reached: only local files and the cache."""
    return is_offline(perception_cfg) or not hub_reachable()


def looks_like_hub_id(ref: str) -> bool:
    """'org/name' that is not an existing path and has no weight-file suffix."""
    parts = ref.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not ref.startswith((".", "~"))
        and Path(ref).suffix.lower() not in (".pt", ".pth", ".onnx", ".engine", ".safetensors", ".bin")
        and not Path(ref).exists()
    )


def candidates(ref: str, perception_cfg: Any = None) -> List[Path]:
    """Places a reference may name on disk, in look-up order."""
    base = weights_dir(perception_cfg)
    path = Path(os.path.expandvars(ref)).expanduser()
    out = [path]
    if not path.is_absolute():
        out.append(base / ref)
        if "/" in ref:  # hub id: a saved folder named like the id or like its last part
            out.append(base / ref.split("/")[-1])
    return out


def find_local(ref: str, perception_cfg: Any = None) -> Optional[Path]:
    for path in candidates(ref, perception_cfg):
        if path.exists():
            return path
    return None


def hf_cached(repo_id: str, filename: str = "config.json") -> Optional[Path]:
    """The file from the local Hugging Face cache, or None (never touches the network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # malformed id: not cached
        return None
    return Path(found) if isinstance(found, str) else None


def hf_cache_dir() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except ImportError:
        return "~/.cache/huggingface/hub"


@dataclass
class WeightStatus:
    """What the doctor prints: found (and where) or missing (and what to do)."""

    present: bool
    where: str


def status(
    ref: str, perception_cfg: Any = None, hub_file: str = "config.json", hub_repo: Optional[str] = None
) -> WeightStatus:
    local = find_local(ref, perception_cfg)
    if local is not None:
        return WeightStatus(True, str(local))
    repo = hub_repo or (ref if looks_like_hub_id(ref) else None)
    if repo is not None:
        cached = hf_cached(repo, hub_file)
        if cached is not None:
            return WeightStatus(True, f"hub cache: {cached.parent}")
    return WeightStatus(False, "missing: " + _where_to_put(ref, perception_cfg, repo))


def _where_to_put(ref: str, perception_cfg: Any, repo: Optional[str]) -> str:
    base = weights_dir(perception_cfg)
    name = ref.split("/")[-1]
    if repo is not None and Path(name).suffix:  # one file of a hub repository (a SAM2 checkpoint)
        return f"put {name} in {base} (on a connected machine: huggingface-cli download {repo} {name}, then copy it)"
    if repo is not None:
        return (
            f"put the saved model folder at {base / name} (or download '{repo}' into the Hugging Face cache "
            f"{hf_cache_dir()} on a connected machine: huggingface-cli download {repo})"
        )
    return f"put {name} in {base}"


def missing_error(
    ref: str, role: str, perception_cfg: Any = None, repo: Optional[str] = None, reason: str = ""
) -> BackendUnavailable:
    looked = ", ".join(str(p) for p in candidates(ref, perception_cfg))
    if repo is not None:
        looked += f", Hugging Face cache {hf_cache_dir()} ('{repo}')"
    if is_offline(perception_cfg):
        mode = "offline mode (perception.offline or HF_HUB_OFFLINE=1)"
    elif not hub_reachable():
        host, port = _hub_address()
        mode = f"offline: the hub {host}:{port} is unreachable (no connection within {HUB_PROBE_S} s)"
    else:
        mode = "download failed"
    detail = f" ({reason})" if reason else ""
    return BackendUnavailable(
        f"{role}: weights '{ref}' not found [{mode}]{detail}. Looked in: {looked}. "
        f"To fix: {_where_to_put(ref, perception_cfg, repo)}"
    )


def resolve_file(
    ref: str,
    role: str,
    perception_cfg: Any = None,
    download: Optional[Callable[[], str]] = None,
    repo: Optional[str] = None,
) -> Path:
    """A single weight file (YOLO-World .pt, SAM2 checkpoint). ``download`` is tried only when online."""
    local = find_local(ref, perception_cfg)
    if local is not None:
        return local
    cached = hf_cached(repo, Path(ref).name) if repo is not None else None
    if cached is not None:
        return cached
    reason = ""
    offline = is_offline(perception_cfg) if repo is None else local_only(perception_cfg)  # repo: a hub download
    if download is not None and not offline:
        try:
            return Path(download())
        except Exception as exc:  # no network, unknown file: reported below with the places looked in
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    raise missing_error(ref, role, perception_cfg, repo=repo, reason=reason)


def hf_download(repo_id: str, filename: str, perception_cfg: Any = None) -> str:
    """A file of a hub repository, from the cache when present (offline) or downloaded (online)."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id, filename, local_files_only=local_only(perception_cfg))


def from_pretrained(loader: Callable[..., Any], ref: str, role: str, perception_cfg: Any = None, **kwargs) -> Any:
    """``loader`` is a transformers ``X.from_pretrained``: local folders first, then the hub id (cache only when
    offline). Any failure becomes one BackendUnavailable naming the model and the places looked in."""
    local = find_local(ref, perception_cfg)
    target = str(local) if local is not None else ref
    repo = None if local is not None else ref
    if local is None and not looks_like_hub_id(ref):
        raise missing_error(ref, role, perception_cfg)
    try:
        return loader(target, local_files_only=local is not None or local_only(perception_cfg), **kwargs)
    except (OSError, ValueError, EnvironmentError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise missing_error(ref, role, perception_cfg, repo=repo, reason=first[:300]) from None
