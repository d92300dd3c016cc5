"""A chat-completions server on 127.0.0.1 (port 0) for transport tests: http.server in a thread.

``answer`` decides each reply from the decoded request: it returns the assistant text, or a (status, body)
tuple for an HTTP error, or sleeps to simulate a slow server. Every request (headers, JSON, decoded images) is
recorded for assertions."""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, List

import numpy as np


@dataclass
class Received:
    path: str
    headers: dict
    body: dict
    images: List[np.ndarray] = field(default_factory=list)  # decoded RGB
    text: str = ""


def decode_data_url(url: str) -> np.ndarray:
    import cv2

    head, _, data = url.partition(",")
    assert head == "data:image/jpeg;base64", head
    bgr = cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR)
    return bgr[..., ::-1].copy()


def parse_request(path: str, headers, raw: bytes) -> Received:
    body = json.loads(raw.decode("utf-8"))
    received = Received(path=path, headers={k.lower(): v for k, v in headers.items()}, body=body)
    for part in body["messages"][-1]["content"]:
        if part["type"] == "image_url":
            received.images.append(decode_data_url(part["image_url"]["url"]))
        elif part["type"] == "text":
            received.text += part["text"]
    return received


class ChatServer:
    def __init__(self, answer: Callable[[Received], object]):
        self.answer = answer
        self.received: List[Received] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server naming)
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received = parse_request(self.path, self.headers, raw)
                with server._lock:
                    server.received.append(received)
                try:
                    reply = server.answer(received)
                except (BrokenPipeError, ConnectionResetError):
                    return
                if isinstance(reply, tuple):
                    status, text = reply
                    payload = text.encode("utf-8")
                else:
                    status = 200
                    payload = json.dumps(
                        {
                            "id": "cmpl-test",
                            "object": "chat.completion",
                            "model": received.body.get("model"),
                            "choices": [
                                {
                                    "index": 0,
                                    "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": reply},
                                }
                            ],
                        }
                    ).encode("utf-8")
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

            def log_message(self, *args):  # keep test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> "ChatServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
