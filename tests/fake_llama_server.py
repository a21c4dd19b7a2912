"""A stand-in for the llama.cpp server process, for start-up and crash tests.

``python fake_llama_server.py PORT BEHAVIOUR`` answers ``/v1/models`` like a server that
loaded its model, then, by BEHAVIOUR:
- ``trap``: dies of SIGILL on the first completion, as llama.cpp does when a CPU
  extension its build uses is trapped (AMX on some virtual machines);
- ``ok``: answers completions with an echo of 20 tokens and their log-probabilities;
- ``grow``: as ``ok``, keeping 100 MiB more memory for every completion (as a prompt cache
  that never evicts would), and answering 500 once an allocation fails.
"""

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

PORT, BEHAVIOUR = int(sys.argv[1]), sys.argv[2]
KEPT = []


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.reply({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        if BEHAVIOUR == "trap":
            print("llama_context: evaluating a batch of 42 tokens", flush=True)
            os.kill(os.getpid(), signal.SIGILL)
        if BEHAVIOUR == "grow":
            try:
                KEPT.append(b"\x01" * (100 << 20))  # written, so resident
            except MemoryError:
                self.send_error(500, "MemoryError")
                return
        tokens = [f" t{i}" for i in range(20)]
        logprobs = {"tokens": tokens, "token_logprobs": [-1.0] * 20, "top_logprobs": [{t: -1.0} for t in tokens]}
        self.reply(
            {"choices": [{"index": 0, "text": "".join(tokens), "logprobs": logprobs, "finish_reason": "length"}]}
        )

    def reply(self, body):
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


print(f"fake llama.cpp server on port {PORT}", flush=True)
HTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
