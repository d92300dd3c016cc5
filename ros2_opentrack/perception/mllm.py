"""MLLM labeller (paper 3.3): the top-K full images of a track, each with the target in a red box, and the
paper's prompt -> a class from the label set (or the matching task indices).

Two transports share the prompt builder and the answer parser (prompts.py):
- ``transformers``: a local Qwen3-VL / Qwen2.5-VL, batched generation with left padding;
- ``openai``: any OpenAI-compatible ``/v1/chat/completions`` endpoint (e.g. one vLLM server shared by many
  robots), images sent as base64 JPEG data URLs, concurrent requests, stdlib urllib only.
``label()`` never raises for a failed request: timeouts, HTTP errors and unusable answers come back as
``LabelResult(error=...)`` with label None, so the asynchronous labelling loop never dies on one bad answer.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import socket
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, Callable, List, Optional, Sequence, Union

import numpy as np

from ..errors import BackendUnavailable, ConfigError
from ..io.encodings import encode_jpeg
from .base import LabelRequest, LabelResult, Requirements
from .prompts import Prompt, build_prompt, parse_answer

log = logging.getLogger(__name__)

Answer = Union[str, BaseException]
_THINK = re.compile(r"<think>.*?</think>", re.S)


# ---------------------------------------------------------------------------------------------------------
# transformers transport


def assemble_processor(cls, image_processor, tokenizer, chat_template=None):
    """A Qwen-VL processor without a video processor. transformers refuses to build these processors when
    torchvision is missing (the video processor needs it) although images only need the PIL image processor;
    the labeller never sends video, so the video slot is left empty."""
    base_check = cls.check_argument_for_proper_class

    def check(self, name, arg):
        if name == "video_processor" and arg is None:
            return None
        return base_check(self, name, arg)

    no_video = type(cls.__name__, (cls,), {"check_argument_for_proper_class": check})
    return no_video(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=chat_template or getattr(tokenizer, "chat_template", None),
    )


def _processor_class(model_type: str):
    import transformers

    names = {
        "qwen3_vl": "Qwen3VLProcessor",
        "qwen3_vl_moe": "Qwen3VLProcessor",
        "qwen2_5_vl": "Qwen2_5_VLProcessor",
        "qwen2_vl": "Qwen2VLProcessor",
    }
    if model_type not in names:
        raise BackendUnavailable(
            f"labeler: model type '{model_type}' has no known processor without torchvision "
            f"(supported: {', '.join(sorted(names))}); install torchvision"
        )
    return getattr(transformers, names[model_type])


def _read_chat_template(folder: str) -> Optional[str]:
    for name in ("chat_template.jinja", "chat_template.json"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            text = open(path, encoding="utf-8").read()
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None


def load_processor(folder: str, model_type: str, **kwargs):
    """AutoProcessor when it builds; else (no torchvision) tokenizer + PIL image processor assembled here."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        processor = AutoProcessor.from_pretrained(folder, **kwargs)
    except ImportError as exc:
        log.info(
            "labeler: AutoProcessor unavailable (%s); assembling the image-only processor",
            str(exc).strip().splitlines()[0],
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        template = getattr(tokenizer, "chat_template", None) or _read_chat_template(folder)
        image_processor = AutoImageProcessor.from_pretrained(folder, **kwargs)
        processor = assemble_processor(_processor_class(model_type), image_processor, tokenizer, template)
    processor.tokenizer.padding_side = "left"  # batched generation appends after the prompt
    return processor


class TransformersTransport:
    """A local Qwen-VL: one batched ``generate`` per chunk of prompts."""

    def __init__(self, model, processor, device: str = "cpu", max_new_tokens: int = 32):
        self.model = model
        self.processor = processor
        self.device = device
        self.max_new_tokens = int(max_new_tokens)
        self.processor.tokenizer.padding_side = "left"
        self._lock = threading.Lock()  # one generate at a time on the shared model

    @classmethod
    def from_pretrained(
        cls, ref: str, perception_cfg: Any = None, device: str = "auto", half: bool = True, max_new_tokens: int = 32
    ) -> "TransformersTransport":
        """``ref``: a local folder, a folder in perception.weights_dir, or a hub id (cache only when offline)."""
        try:
            import torch
            from transformers import AutoModelForImageTextToText
        except ImportError as exc:
            raise BackendUnavailable(
                f"labeler: the transformers transport needs torch and transformers ({exc})"
            ) from None
        from . import weights
        from .devices import resolve_device, use_half

        device = resolve_device(device, "perception.labeler")
        dtype = torch.float32
        if use_half(device, half):  # bf16 where the GPU has it: Qwen-VL activations can overflow fp16
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        model = weights.from_pretrained(
            AutoModelForImageTextToText.from_pretrained, ref, "perception.labeler", perception_cfg, dtype=dtype
        )
        folder = _model_folder(model, ref)
        processor = weights.from_pretrained(
            lambda target, **kw: load_processor(target, model.config.model_type, **kw),
            folder,
            "perception.labeler",
            perception_cfg,
        )
        return cls(model.to(device).eval(), processor, device, max_new_tokens)

    def prepare(self, prompts: Sequence[Prompt]):
        """Processor inputs of a batch: chat template, image tokens, left padding."""
        texts = [
            self.processor.apply_chat_template(
                [{"role": "user", "content": p.chat_content()}], add_generation_prompt=True, tokenize=False
            )
            for p in prompts
        ]
        images = [np.ascontiguousarray(image) for p in prompts for image in p.images]
        return self.processor(text=texts, images=images, padding=True, return_tensors="pt")

    def complete(self, prompts: Sequence[Prompt]) -> List[Answer]:
        import torch

        inputs = self.prepare(prompts)
        dtype = next(self.model.parameters()).dtype
        inputs = {
            k: (v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device)) for k, v in inputs.items()
        }
        with self._lock, torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        return list(self.processor.batch_decode(new_tokens, skip_special_tokens=True))


def _model_folder(model, ref: str) -> str:
    """Where from_pretrained found the model (a local folder or a cache snapshot): the processor lives there."""
    path = getattr(model.config, "_name_or_path", "") or ref
    return path if os.path.isdir(path) else ref


# ---------------------------------------------------------------------------------------------------------
# OpenAI-compatible transport


def jpeg_data_url(rgb: np.ndarray, quality: int = 90) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(encode_jpeg(rgb, quality)).decode("ascii")


class OpenAITransport:
    """POST /chat/completions per prompt, up to ``max_workers`` at once. The API key is read from the env var
    named ``api_key_env`` at each request (never stored); no key set -> no Authorization header."""

    def __init__(
        self,
        endpoint: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 30.0,
        max_workers: int = 8,
        max_new_tokens: int = 32,
        jpeg_quality: int = 90,
    ):
        endpoint = str(endpoint).strip().rstrip("/")
        if not endpoint.startswith(("http://", "https://")):
            raise ConfigError(
                f"parameter 'perception.labeler.endpoint' = {endpoint!r}: expected an http(s) URL "
                f"such as http://127.0.0.1:8000/v1"
            )
        self.url = endpoint if endpoint.endswith("/chat/completions") else endpoint + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = float(timeout_s)
        self.max_new_tokens = int(max_new_tokens)
        self.jpeg_quality = int(jpeg_quality)
        self._pool = ThreadPoolExecutor(max_workers=max(1, int(max_workers)), thread_name_prefix="mllm-http")

    def payload(self, prompt: Prompt) -> dict:
        content = [
            {"type": "image_url", "image_url": {"url": jpeg_data_url(image, self.jpeg_quality)}}
            for image in prompt.images
        ]
        content.append({"type": "text", "text": prompt.text})
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_new_tokens,
            "temperature": 0.0,
        }

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env or "", "").strip()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post(self, prompt: Prompt) -> str:
        body = json.dumps(self.payload(prompt)).encode("utf-8")
        request = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode("utf-8", "replace").strip()
            raise RuntimeError(f"HTTP {exc.code} from {self.url}: {detail or exc.reason}") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (socket.timeout, TimeoutError)):
                raise TimeoutError(f"no answer from {self.url} within {self.timeout_s:g} s") from None
            raise RuntimeError(f"cannot reach {self.url}: {exc.reason}") from None
        except (socket.timeout, TimeoutError):
            raise TimeoutError(f"no answer from {self.url} within {self.timeout_s:g} s") from None
        return _answer_text(raw, self.url)

    def complete(self, prompts: Sequence[Prompt]) -> List[Answer]:
        futures = [self._pool.submit(self._post, p) for p in prompts]
        # The socket timeout bounds each read; this bounds a server that trickles bytes.
        wait(futures, timeout=self.timeout_s * 2 + 1.0)
        answers: List[Answer] = []
        for future in futures:
            if not future.done():
                future.cancel()
                answers.append(TimeoutError(f"no answer from {self.url} within {self.timeout_s:g} s"))
            elif future.exception() is not None:
                answers.append(future.exception())
            else:
                answers.append(future.result())
        return answers

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _answer_text(raw: bytes, url: str) -> str:
    """choices[0].message.content of a chat-completions response (string or list of text parts)."""
    try:
        data = json.loads(raw.decode("utf-8"))
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError):
        raise RuntimeError(f"malformed chat-completions response from {url}: {raw[:200]!r}") from None
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str):
        raise RuntimeError(f"chat-completions response from {url} has no text content: {raw[:200]!r}")
    return content


# ---------------------------------------------------------------------------------------------------------
# The labeller


class MllmLabeler:
    """Labeler protocol over a transport. ``text_matcher`` (or a factory building one on first need) maps free
    answers that name no class to the nearest class; the pipeline may share its own matcher by setting
    ``labeler.text_matcher``."""

    def __init__(
        self,
        transport,
        max_batch: int = 8,
        text_matcher=None,
        text_matcher_factory: Optional[Callable[[], Any]] = None,
        min_similarity: float = 0.5,
    ):
        self.transport = transport
        self.max_batch = max(1, int(max_batch))
        self.text_matcher = text_matcher
        self._matcher_factory = text_matcher_factory
        self.min_similarity = float(min_similarity)
        self._matcher_lock = threading.Lock()

    @staticmethod
    def requirements(cfg, perception_cfg=None) -> Requirements:
        if cfg.transport == "openai":
            return Requirements(
                modules=("urllib",),
                device="remote",
                note=f"remote: {cfg.endpoint} (not checked)",
                backend="mllm (openai)",
            )
        return Requirements(modules=("transformers",), weights=cfg.model)

    @classmethod
    def from_config(cls, cfg, perception_cfg=None) -> "MllmLabeler":
        _check_config(cfg)
        if cfg.transport == "openai":
            transport = OpenAITransport(
                cfg.endpoint, cfg.model, cfg.api_key_env, cfg.timeout_s, cfg.max_batch, cfg.max_new_tokens
            )
        else:
            transport = TransformersTransport.from_pretrained(
                cfg.model, perception_cfg, cfg.device, cfg.half, cfg.max_new_tokens
            )
        return cls(transport, cfg.max_batch, text_matcher_factory=_matcher_factory(perception_cfg))

    def label(self, requests: Sequence[LabelRequest]) -> List[LabelResult]:
        results: List[Optional[LabelResult]] = [None] * len(requests)
        ready = []
        for i, request in enumerate(requests):
            try:
                ready.append((i, build_prompt(request)))
            except Exception as exc:  # a malformed request fails alone
                results[i] = LabelResult(track_id=_track_id(request), label=None, error=str(exc))
        for start in range(0, len(ready), self.max_batch):
            chunk = ready[start : start + self.max_batch]
            answers = self._complete([prompt for _, prompt in chunk])
            for (i, _), answer in zip(chunk, answers):
                results[i] = self._result(requests[i], answer)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        """Release the transport's worker threads (openai); a no-op for the local model."""
        close = getattr(self.transport, "close", None)
        if close is not None:
            close()

    def _complete(self, prompts: List[Prompt]) -> List[Answer]:
        try:
            answers = list(self.transport.complete(prompts))
        except Exception as exc:  # the whole chunk failed (out of memory, processor error, ...)
            log.warning("labeler: batch of %d failed: %s", len(prompts), exc)
            return [exc] * len(prompts)
        if len(answers) != len(prompts):
            return [RuntimeError(f"transport returned {len(answers)} answers for {len(prompts)} prompts")] * len(
                prompts
            )
        return answers

    def _result(self, request, answer: Answer) -> LabelResult:
        track_id = _track_id(request)
        if isinstance(answer, BaseException):
            return LabelResult(track_id=track_id, label=None, error=f"{type(answer).__name__}: {answer}")
        text = _THINK.sub("", answer).strip()
        mode = getattr(request, "mode", "closed")
        try:
            parsed = parse_answer(text, mode, request.choices, self._matcher(mode), self.min_similarity)
        except Exception as exc:  # a failing matcher must not lose the answer
            log.warning("labeler: answer mapping failed (%s); parsing without the text matcher", exc)
            parsed = parse_answer(text, mode, request.choices, None)
        return LabelResult(
            track_id=track_id,
            label=parsed.label,
            task_indices=parsed.task_indices,
            score=parsed.score,
            raw=answer,
            error=parsed.error,
        )

    def _matcher(self, mode: str):
        if mode != "closed":
            return None
        with self._matcher_lock:
            if self.text_matcher is None and self._matcher_factory is not None:
                factory, self._matcher_factory = self._matcher_factory, None
                try:
                    self.text_matcher = factory()
                except Exception as exc:  # answers still parse, only free-form ones stay unmapped
                    log.warning("labeler: text matcher unavailable (%s); free answers stay unmapped", exc)
        return self.text_matcher


def _track_id(request) -> int:
    return int(getattr(request, "track_id", -1))


def _check_config(cfg) -> None:
    from ..config import LABELER_TRANSPORTS, one_of

    checks = [
        ("transport", cfg.transport in LABELER_TRANSPORTS, one_of(LABELER_TRANSPORTS)),
        ("timeout_s", cfg.timeout_s > 0, "a time > 0 in seconds"),
        ("max_batch", cfg.max_batch >= 1, "an integer >= 1"),
        ("max_new_tokens", cfg.max_new_tokens >= 1, "an integer >= 1"),
    ]
    for name, ok, expected in checks:
        if not ok:
            raise ConfigError(f"parameter 'perception.labeler.{name}' = {getattr(cfg, name)!r}: expected {expected}")


def _matcher_factory(perception_cfg) -> Optional[Callable[[], Any]]:
    tm_cfg = getattr(perception_cfg, "text_matcher", None)
    if tm_cfg is None or tm_cfg.name == "none":
        return None

    def build():
        from .registry import build as build_backend

        return build_backend("text_matcher", tm_cfg, perception_cfg)

    return build
