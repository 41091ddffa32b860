"""A real OpenAI-compatible chat server on 127.0.0.1 for tests: slow, failing or leaking on request."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class LocalLLM:
    """POST /v1/chat/completions. reply(body) -> text answers; `status` != 200 answers an error whose body
    echoes the request's Authorization header (as some proxies do), so a leak would be visible;
    refuse(body) -> (status, message) or None answers that error for the requests it picks."""

    def __init__(
        self,
        *,
        reply: Callable[[dict[str, Any]], str] | None = None,
        status: int = 200,
        delay_s: float = 0.0,
        refuse: Callable[[dict[str, Any]], tuple[int, str] | None] | None = None,
    ):
        self.reply = reply or (lambda body: "echo: " + body["messages"][-1]["content"])
        self.status, self.delay_s = status, delay_s
        self.refuse = refuse or (lambda body: None)
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.started = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.headers.append(dict(self.headers))
                server.started.set()
                time.sleep(server.delay_s)
                status = server.status
                if (refused := server.refuse(body)) is not None:
                    status, message = refused
                    payload = {"error": {"message": message, "type": "internal_server_error"}}
                elif server.status != 200:
                    payload = {
                        "error": {
                            "message": f"upstream refused; got Authorization: "
                            f"{self.headers.get('Authorization')}"
                        }
                    }
                else:
                    payload = {
                        "model": body.get("model"),
                        "choices": [
                            {
                                "message": {"role": "assistant", "content": server.reply(body)},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 7, "completion_tokens": 3},
                    }
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def dead_url() -> str:
    """A URL nothing listens on (a port just closed)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
