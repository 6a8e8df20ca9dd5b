"""End-to-end: CURVE keys, roles, safe-by-default binding, and nothing in clear on the wire."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import BIN, Cluster, free_port, wait_for

NAMES = ("server", "client", "worker", "stranger")


@dataclass
class SecureCluster(Cluster):
    """A cluster whose jq, worker and status calls use the ``client`` key by default
    (none when ``curve`` is off)."""

    keys: Path = Path()
    curve: bool = True

    def key(self, name: str) -> str:
        return str(self.keys / name)

    def env(self, **extra: str) -> dict[str, str]:
        if not self.curve:
            return super().env(**extra)
        keys = {"JOBQUEUE_KEY": self.key("client"), "JOBQUEUE_SERVER_KEY": self.key("server.pub")}
        return super().env(**{**keys, **extra})

    def secure_server(self) -> subprocess.Popen[bytes]:
        return self.server("--key", self.key("server"), "--clients", str(self.keys / "clients"),
                           "--workers", self.key("worker.pub"))

    def worker_as(self, key: str, name: str | None = None, wait: bool = True,
                  endpoint: str | None = None) -> subprocess.Popen[bytes]:
        return self.worker("--key", self.key(key), "--server-key", self.key("server.pub"), name=name, wait=wait,
                           endpoint=endpoint)


def keygen(path: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(BIN / "jobqueue"), "keygen", str(path)], capture_output=True, timeout=30)


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[SecureCluster]:
    keys = tmp_path / "keys"
    (keys / "clients").mkdir(parents=True)
    for name in NAMES:
        assert keygen(keys / name).returncode == 0
    (keys / "clients" / "client.pub").write_bytes((keys / "client.pub").read_bytes())
    c = SecureCluster(tmp_path, f"tcp://127.0.0.1:{free_port()}", keys=keys)
    yield c
    c.stop()


def wait_exit(proc: subprocess.Popen[bytes], timeout: float = 15) -> int:
    return proc.wait(timeout=timeout)


# --- keys -------------------------------------------------------------------------------------


def test_keygen_writes_0600_secret_and_refuses_readable_keys(cluster: Cluster) -> None:
    path = cluster.tmp / "me"
    r = keygen(path)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(f"{path}.pub").stat().st_mode) == 0o644
    assert keygen(path).returncode == 255  # never overwrites a key

    os.chmod(path, 0o644)
    r = cluster.jq("--key", str(path), "--server-key", f"{path}.pub", "true", timeout=10)
    assert r.returncode == 255
    assert r.stderr.startswith(b"jq: ") and b"chmod 600" in r.stderr and len(r.stderr.splitlines()) == 1
    server = cluster.spawn([str(BIN / "jobqueue-server"), cluster.endpoint, "--key", str(path), "--clients",
                            f"{path}.pub", "--workers", f"{path}.pub"], log="server")
    assert wait_exit(server) == 255
    assert b"chmod 600" in cluster.logs[-1].read_bytes()


def test_socket_file_is_owner_only_unless_configured(cluster: Cluster) -> None:
    cluster.server()
    path = Path(cluster.endpoint.removeprefix("ipc://"))
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700

    shared = cluster.endpoint + "-shared"
    cluster.server("--ipc-mode", "770", endpoint=shared, wait=False)
    log = cluster.logs[-1]
    wait_for(lambda: " listening " in log.read_text(), 10, "the second server to listen")
    assert stat.S_IMODE(Path(shared.removeprefix("ipc://")).stat().st_mode) == 0o770


# --- who may do what --------------------------------------------------------------------------


def test_authorized_client_runs_and_stranger_is_refused_fast(secure: SecureCluster) -> None:
    secure.secure_server()
    secure.worker_as("worker")
    r = secure.jq("echo", "hello")
    assert (r.returncode, r.stdout) == (0, b"hello\n"), r.stderr

    start = time.monotonic()
    r = secure.jq("echo", "hello", env=secure.env(JOBQUEUE_KEY=secure.key("stranger")))
    assert time.monotonic() - start < 5
    assert r.returncode == 255 and r.stdout == b""
    assert r.stderr.startswith(b"jq: authentication failed: ") and len(r.stderr.splitlines()) == 1

    r = secure.jq("echo", "hello", env=secure.env(JOBQUEUE_SERVER_KEY=secure.key("stranger.pub")))
    assert r.returncode == 255 and r.stderr.startswith(b"jq: authentication failed: ")
    assert b"unknown CURVE key" in secure.logs[0].read_bytes()


def test_unauthorized_worker_never_gets_jobs(secure: SecureCluster) -> None:
    secure.secure_server()
    job = secure.popen_jq("echo", "ran")
    wait_for(lambda: [j for j in secure.jobs() if j["state"] == "queued"], 10, "the job to queue")
    stranger = secure.worker_as("stranger", name="stranger", wait=False)
    assert wait_exit(stranger) != 0
    assert b"authentication failed" in secure.logs[-1].read_bytes()
    st = secure.status()
    assert st is not None and st["workers"] == [] and [j["state"] for j in st["jobs"]] == ["queued"]

    keyless = secure.spawn([str(BIN / "jobqueue-worker"), secure.endpoint, "--name", "keyless"], log="keyless",
                           env=Cluster.env(secure))  # no keys at all: told so at once, not left waiting
    assert wait_exit(keyless) == 1
    assert b"uses CURVE keys: give --key and --server-key" in secure.logs[-1].read_bytes()

    secure.worker_as("worker")  # the same job runs as soon as an authorized worker comes
    out, _ = job.communicate(timeout=20)
    assert (job.returncode, out) == (0, b"ran\n")


def test_client_key_cannot_work_and_worker_key_cannot_submit(secure: SecureCluster) -> None:
    secure.secure_server()
    imposter = secure.worker_as("client", name="imposter", wait=False)
    assert wait_exit(imposter) != 0
    assert b"authorized as a client, not as a worker" in secure.logs[-1].read_bytes()

    as_worker = secure.env(JOBQUEUE_KEY=secure.key("worker"))
    r = secure.jq("echo", "hello", env=as_worker)
    assert r.returncode == 255 and b"authorized as a worker, not as a client" in r.stderr
    r = subprocess.run([str(BIN / "jobqueue"), "status", "-s", secure.endpoint], env=as_worker,
                       capture_output=True, timeout=20)
    assert r.returncode == 255 and b"worker key may not send StatusRequest" in r.stderr
    assert secure.status() is not None  # while the client key may


# --- the wire ---------------------------------------------------------------------------------


class Relay:
    """A TCP relay between peers and the server that records every byte both ways."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.recorded = bytearray()
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                inbound, _ = self.listener.accept()
                outbound = socket.create_connection(self.target)
            except OSError:
                return
            self.sockets += [inbound, outbound]
            threading.Thread(target=self._pump, args=(inbound, outbound), daemon=True).start()
            threading.Thread(target=self._pump, args=(outbound, inbound), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                with self.lock:
                    self.recorded += data
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        for s in self.sockets:
            s.close()


@pytest.mark.parametrize("curve", [True, False], ids=["curve", "clear"])
def test_nothing_in_clear_on_the_wire(secure: SecureCluster, curve: bool) -> None:
    port = int(secure.endpoint.rsplit(":", 1)[1])
    relay = Relay(("127.0.0.1", port))
    via_relay = f"tcp://127.0.0.1:{relay.port}"
    try:
        if curve:
            secure.secure_server()
            secure.worker_as("worker", endpoint=via_relay)
            env = secure.env(JOBQUEUE_SERVER=via_relay)
        else:
            secure.curve = False
            secure.server()
            secure.worker(endpoint=via_relay)
            env = secure.env(JOBQUEUE_SERVER=via_relay)
        token = os.urandom(8).hex()
        secrets = {f"stdin-{token}", f"argv-{token}", f"env-{token}"}
        r = secure.jq("-e", f"SECRET=env-{token}", "sh", "-c", 'cat; echo "$0 $SECRET"', f"argv-{token}",
                      input=f"stdin-{token}\n".encode(), env=env)
        assert r.returncode == 0, r.stderr
        assert set(r.stdout.decode().split()) == secrets  # they did travel, through the relay
        with relay.lock:
            recorded = bytes(relay.recorded)
        found = {s for s in secrets if s.encode() in recorded}
        assert found == (set() if curve else secrets)
        assert not [s for s in secrets if s in secure.log_text()]  # nor in the server's and worker's logs
    finally:
        relay.close()


# --- safe by default --------------------------------------------------------------------------


def non_loopback_address() -> str:
    """This machine's address towards the network (no packet is sent), else the wildcard."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks a route
            address = str(s.getsockname()[0])
        except OSError:
            return "*"
    return "*" if address.startswith("127.") or address == "0.0.0.0" else address


def test_network_bind_needs_keys_or_insecure(cluster: Cluster) -> None:
    endpoint = f"tcp://{non_loopback_address()}:{free_port()}"
    refused = cluster.server(endpoint=endpoint, wait=False)
    assert wait_exit(refused) == 255
    text = cluster.logs[-1].read_text()
    assert "refusing to bind" in text and "--insecure" in text

    cluster.server("--insecure", endpoint=endpoint, wait=False)
    log = cluster.logs[-1]
    wait_for(lambda: " listening " in log.read_text(), 10, "the server to listen")
    assert "warning" in log.read_text() and "--insecure" in log.read_text()
