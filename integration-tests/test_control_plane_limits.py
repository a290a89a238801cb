"""The control plane behind its front door, black-box against the real binary: the REST
listener's connection limits (header timeout, connection cap, clean shutdown with clients
hanging on), the bounds on what gateways may claim and leave behind (TTL prune, DELETE),
`/healthz` without a database query per hit, `/metrics`, and certificate reload."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from control_plane_harness import (  # noqa: F401  (control_plane_factory: fixture)
    VIEWER_TOKEN,
    control_plane_factory,
    wait_for,
)
from harness import metric_value, parse_prometheus


def with_api_keys(cp, keys: str):
    """Adds `keys` (YAML lines, indented two spaces) to the api section of cp's config."""
    text = cp.config_path.read_text()
    line = f"endpoint: 127.0.0.1:{cp.api_port}\n"
    cp.config_path.write_text(text.replace(line, line + keys, 1))


def closed_by_server(s: socket.socket, within: float) -> bool:
    """True when the server closes s (EOF or reset) within `within` seconds."""
    s.settimeout(within)
    try:
        return s.recv(64) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def still_open(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(64) != b""
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        s.setblocking(True)


def http_get(s: socket.socket, path: str, token: str) -> bytes:
    s.sendall(
        f"GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\r\n".encode()
    )
    s.settimeout(5)
    return s.recv(4096)


def test_half_open_connections_are_cut_and_the_cap_refuses_the_rest(control_plane_factory):
    cp = control_plane_factory("sqlite", start=False)
    with_api_keys(cp, "  max_connections: 4\n  header_read_timeout: 2s\n  idle_timeout: 60s\n")
    cp.start()
    time.sleep(0.3)  # the readiness probe's connection is gone
    addr = ("127.0.0.1", cp.api_port)
    half_open = []
    for i in range(4):
        s = socket.create_connection(addr, timeout=5)
        if i % 2:
            s.sendall(b"GET /api/v1/policies HTTP/1.1\r\nhost: x\r\n")  # a header cut short
        half_open.append(s)
    time.sleep(0.3)
    opened = time.monotonic()
    extra = socket.create_connection(addr, timeout=5)
    assert closed_by_server(extra, 1.0), "the connection past max_connections is refused at once"
    assert all(still_open(s) for s in half_open), "the four under the cap are still waiting"
    for s in half_open:
        assert closed_by_server(s, 4.0), "a half-open connection is cut after header_read_timeout"
    assert time.monotonic() - opened < 5.0
    for s in half_open + [extra]:
        s.close()

    # Slots are back: a normal request is served, and a kept-alive client does not hold up
    # shutdown.
    time.sleep(0.2)
    keep = socket.create_connection(addr, timeout=5)
    assert http_get(keep, "/api/v1/policies", VIEWER_TOKEN).startswith(b"HTTP/1.1 200")
    hanging = socket.create_connection(addr, timeout=5)
    hanging.sendall(b"GET /api/v1/poli")
    started = time.monotonic()
    assert cp.stop() == 0
    assert time.monotonic() - started < 4.0, "shutdown waited on idle or half-open clients"
    keep.close()
    hanging.close()


def scrape(cp) -> list:
    with urllib.request.urlopen(f"{cp.api_base}/metrics", timeout=5) as r:
        assert r.status == 200
        return parse_prometheus(r.read().decode())


def test_metrics_count_requests_rollouts_and_storage(control_plane_factory):
    cp = control_plane_factory("sqlite")
    cp.submit("version: 1\n")
    cp.api("GET", "/policies", VIEWER_TOKEN)
    assert cp.request("GET", "/policies", "wrong-token")[0] == 401
    assert cp.request("POST", "/policies", VIEWER_TOKEN, {"document": "version: 2\n"})[0] == 403
    rollout = cp.release(1, {"percent": 10})
    cp.api("POST", f"/rollouts/{rollout['id']}/pause")

    def paused_counted():
        return metric_value(scrape(cp), "weir_cp_rollouts", state="paused") == 1

    wait_for("weir_cp_rollouts follows the paused rollout", paused_counted, timeout=10)
    samples = scrape(cp)
    count = lambda **labels: metric_value(samples, "weir_cp_http_requests_total", **labels)  # noqa: E731
    assert count(route="/api/v1/policies", method="POST", status="201") == 1
    assert count(route="/api/v1/policies", method="POST", status="403") == 1
    assert count(route="/api/v1/policies", method="GET", status="200") == 1
    assert count(route="/api/v1/policies", method="GET", status="401") == 1
    assert count(route="/api/v1/rollouts/{id}/pause", method="POST", status="200") == 1
    assert metric_value(samples, "weir_cp_rollouts", state="active") == 0
    assert metric_value(samples, "weir_cp_storage_duration_seconds_count", op="insert_policy") == 1
    assert metric_value(samples, "weir_cp_storage_duration_seconds_count", op="counter") >= 1
    assert metric_value(samples, "weir_cp_http_request_duration_seconds_count", route="/healthz") >= 1


class Ca:
    """A throwaway CA (openssl) that issues localhost server certificates."""

    def __init__(self, d: Path):
        self.d = d
        self.pem, self.key = d / "ca.pem", d / "ca-key.pem"
        self.serial = 0
        self._openssl("req", "-x509", *self.EC, "-keyout", self.key, "-out", self.pem, "-days", "1",
                      "-subj", "/CN=weir test CA")

    EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def _openssl(self, *args):
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)

    def issue(self) -> tuple[Path, Path]:
        self.serial += 1
        n = self.serial
        cert, key, csr, ext = (self.d / f"{n}.{s}" for s in ("crt", "key", "csr", "cnf"))
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
        self._openssl("req", *self.EC, "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
        self._openssl("x509", "-req", "-in", csr, "-CA", self.pem, "-CAkey", self.key, "-set_serial", n,
                      "-out", cert, "-days", "1", "-extfile", ext)
        return cert, key


def served_certificate(port: int, ca: Path, alpn: str) -> bytes:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols([alpn])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as conn:
            return conn.getpeercert(binary_form=True)


def test_rotated_certificates_are_served_on_both_listeners_without_a_restart(
    control_plane_factory, tmp_path
):
    ca = Ca(tmp_path)
    first_cert, first_key = ca.issue()
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(first_cert, cert)
    shutil.copy(first_key, key)
    cp = control_plane_factory("sqlite", start=False)
    tls = f"  tls:\n    cert_file: {cert}\n    key_file: {key}\n    reload_interval: 200ms\n"
    with_api_keys(cp, tls)
    text = cp.config_path.read_text()
    line = f"endpoint: 127.0.0.1:{cp.watch_port}\n"
    cp.config_path.write_text(text.replace(line, line + tls, 1))
    cp.health = lambda: _https_health(cp.api_port, ca.pem)
    cp.start()
    pid = cp.proc.pid
    ports = {"api": (cp.api_port, "http/1.1"), "watch": (cp.watch_port, "h2")}
    before = {name: served_certificate(port, ca.pem, alpn) for name, (port, alpn) in ports.items()}

    new_cert, new_key = ca.issue()
    # Replace key and certificate atomically, one after the other: a reload in between sees a
    # pair that does not match, refuses it and keeps the old one until the next change.
    for src, dst in [(new_key, key), (new_cert, cert)]:
        tmp = dst.with_suffix(".tmp")
        shutil.copy(src, tmp)
        os.replace(tmp, dst)
    for name, (port, alpn) in ports.items():
        wait_for(
            f"the {name} listener serves the rotated certificate",
            lambda: served_certificate(port, ca.pem, alpn) != before[name],
            timeout=10,
        )
    assert cp.proc.pid == pid and cp.proc.poll() is None, "no restart"
    samples = scrape_https(cp.api_port, ca.pem)
    for name in ports:
        assert metric_value(samples, "weir_tls_reloads_total", listener=name, result="ok") >= 1, name


def _https_health(port: int, ca: Path) -> int | None:
    try:
        ctx = ssl.create_default_context(cafile=str(ca))
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", timeout=2, context=ctx) as r:
            return r.status
    except OSError:
        return None


def scrape_https(port: int, ca: Path) -> list:
    ctx = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", timeout=5, context=ctx) as r:
        return parse_prometheus(r.read().decode())
