"""A scripted OpenAI-compatible HTTP server for tests that run through Dagster and the real client.

It lists one model, has no completions endpoint (404) and answers chat requests without
log-probabilities, so ``auto`` simulation resolves to json; ``answer(request_body)`` writes
every chat reply. ``props``, where given, is what ``GET /props`` answers, as llama.cpp's server
does (``{"total_slots": N}``); without it every GET lists the models.
"""

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ScriptedOpenAI:
    def __init__(self, answer: Callable[[dict], str], props: dict | None = None) -> None:
        calls = self.calls = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # the client's reachability check lists the models
                if props is not None and self.path == "/props":
                    return self._send(200, props)
                self._send(
                    200,
                    {
                        "object": "list",
                        "data": [{"id": "scripted", "object": "model", "created": 0, "owned_by": "test"}],
                    },
                )

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                calls.append(self.path)
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": f"no {self.path} endpoint"}})
                message = {"role": "assistant", "content": answer(body)}
                self._send(
                    200,
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
                    },
                )

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
