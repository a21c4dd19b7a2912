"""A scripted OpenAI-compatible completions server: a toy tokenizer and a toy causal "model".

The model's distribution predicting the token after a prefix is a fixed function of the
prefix text (digits and "unknown", weighted by a hash of it), so a direct next-token query
and an echo agree wherever the echo files distributions correctly. ``shift`` files the echo
as a server would: 0 puts the distribution that predicted token j at j (vLLM, OpenAI);
-1 puts it at j - 1 and adds token j with that entry's log-probability to it, as stock
llama-cpp-python does for models without BOS (-2, which no server does, files it at j - 2).
``join_tab`` gives the tokenizer tokens that join a tab to the letters after it ("\\tunknown").
"""

import json
import math
import re
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PLAIN = re.compile(r" ?[A-Za-z]+|\d|\s|[^\sA-Za-z\d]")
JOINING = re.compile(r"\t[A-Za-z]+| ?[A-Za-z]+|\d|\s|[^\sA-Za-z\d]")
VOCABULARY = [str(d) for d in range(10)] + ["unknown", "\n", "\t"]


def next_token(prefix: str) -> dict[str, float]:
    """The toy model: log-probabilities of ``VOCABULARY`` after ``prefix``."""
    seed = zlib.crc32(prefix.encode())
    weights = [1 + (seed >> (2 * i) & 7) ** 2 for i in range(len(VOCABULARY))]
    total = sum(weights)
    return {token: math.log(w / total) for token, w in zip(VOCABULARY, weights, strict=True)}


class ScriptedCompletions:
    def __init__(self, *, shift: int = 0, join_tab: bool = False) -> None:
        pattern = JOINING if join_tab else PLAIN
        calls = self.calls = []

        def echo(text: str) -> dict:
            tokens = pattern.findall(text)
            assert "".join(tokens) == text
            offsets = [sum(len(t) for t in tokens[:j]) for j in range(len(tokens))]
            # predicting[j]: the distribution that predicted token j (None for the first)
            predicting = [None] + [next_token(text[:o]) for o in offsets[1:]]
            if shift == 0:
                tops = predicting
            else:  # filed early: at -1, row j is the one computed after token j, as llama-cpp-python files it
                rows = (predicting + [next_token(text)] * -shift)[-shift:]
                tops = [{**row, token: row.get(token, -30.0)} for row, token in zip(rows, tokens, strict=True)]
                tops[0] = None
            token_logprobs = [None if top is None else top.get(t, -30.0) for top, t in zip(tops, tokens, strict=True)]
            return {"tokens": tokens, "text_offset": offsets, "token_logprobs": token_logprobs, "top_logprobs": tops}

        def completion(body: dict) -> dict:
            prompt = body["prompt"]
            top = next_token(prompt)
            generated = max(top, key=top.__getitem__)
            logprobs = {
                "tokens": [generated],
                "text_offset": [len(prompt)],
                "token_logprobs": [top[generated]],
                "top_logprobs": [top],
            }
            if body.get("echo"):
                prompt_logprobs = echo(prompt)
                logprobs = {key: prompt_logprobs[key] + logprobs[key] for key in logprobs}
            return {
                "id": "x",
                "object": "text_completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "length",
                        "text": (prompt if body.get("echo") else "") + generated,
                        "logprobs": logprobs,
                    }
                ],
                "usage": {"prompt_tokens": len(pattern.findall(prompt)), "completion_tokens": 1, "total_tokens": 1},
            }

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                model = {"id": "scripted", "object": "model", "created": 0, "owned_by": "test"}
                self._send(200, {"object": "list", "data": [model]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                calls.append((self.path, body))
                if not self.path.endswith("/completions") or self.path.endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": f"no {self.path} endpoint"}})
                self._send(200, completion(body))

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
