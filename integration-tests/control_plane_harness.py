"""The control plane under test: a throwaway PostgreSQL cluster, a `weir-control-plane` process
on free loopback ports (SQLite or PostgreSQL backend), a small REST client and a `weirctl`
runner. Shared by test_control_plane_api.py and test_rollout.py.

Use from a test module (pytest discovers fixtures imported into the module):

    from control_plane_harness import (  # noqa: F401  (fixtures)
        ADMIN_TOKEN, GATEWAY_TOKEN, VIEWER_TOKEN, control_plane_factory, postgres, in_canary,
    )

    @pytest.fixture(params=["sqlite", "postgres"])
    def backend(request):
        return request.param

    def test_x(control_plane_factory, backend):
        cp = control_plane_factory(backend)      # started, /healthz answered
        cp.api("POST", "/policies", ADMIN_TOKEN, {"document": "version: 1\\n"})
        cp.api("POST", "/rollouts", ADMIN_TOKEN, {"version": 1})
        cp.watch_endpoint                        # "127.0.0.1:PORT" for gateways' control_plane
        cp.weirctl("gateways", "-o", "json")     # CompletedProcess; .json() helper below
        cp.restart() / cp.stop() / cp.start()    # same ports, same database

`postgres` is session-scoped: one cluster for the whole run, a fresh database per control
plane. Every process started here is stopped by PID (PostgreSQL by `pg_ctl stop`) at teardown.
Binaries: WEIR_CONTROL_PLANE_BIN and WEIRCTL_BIN, default target/debug/; PostgreSQL programs
from WEIR_PG_BIN (scripts/lib.sh ensure_postgres), else the newest /usr/lib/postgresql/*/bin.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from harness import free_ports, log_tail, spawn, stop_process, unique_name, wait_until

ROOT = Path(__file__).resolve().parent.parent

# Tokens the control planes started here accept (the config holds their SHA-256).
ADMIN_TOKEN = "test-admin-token"
VIEWER_TOKEN = "test-viewer-token"
GATEWAY_TOKEN = "test-gateway-token"
TOKEN_NAMES = {ADMIN_TOKEN: "test-admin", VIEWER_TOKEN: "test-viewer", GATEWAY_TOKEN: "test-gateways"}


def control_plane_bin() -> Path:
    return Path(os.environ.get("WEIR_CONTROL_PLANE_BIN", ROOT / "target/debug/weir-control-plane"))


def weirctl_bin() -> Path:
    return Path(os.environ.get("WEIRCTL_BIN", ROOT / "target/debug/weirctl"))


def in_canary(instance_id: str, percent: float) -> bool:
    """The contract's stable hash: is this instance in a `percent`% canary?"""
    bucket = int.from_bytes(hashlib.sha256(instance_id.encode()).digest()[:8], "big") % 10000
    return bucket < round(percent * 100)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# PostgreSQL


def pg_bin_dir() -> Path | None:
    env = os.environ.get("WEIR_PG_BIN")
    if env:
        return Path(env)
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name))
    return Path(dirs[-1]) if dirs else None


class Postgres:
    """A throwaway PostgreSQL cluster in a temp dir on a free loopback port, user `weir` trusted.
    PostgreSQL refuses to run as root, so as root its programs run as `nobody`."""

    def __init__(self):
        self.bin = pg_bin_dir()
        self.port = free_ports(1)[0]
        self.dir: Path | None = None
        self._as = {}
        if os.geteuid() == 0:
            pw = pwd.getpwnam("nobody")
            self._as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    def _run(self, *args: str, timeout: float = 60):
        assert self.dir is not None
        return subprocess.run(
            [str(a) for a in args], cwd=self.dir, capture_output=True, text=True, timeout=timeout, **self._as
        )

    def start(self) -> "Postgres":
        if self.bin is None or not (self.bin / "initdb").exists():
            pytest.fail("no PostgreSQL server programs: run scripts/test.sh (ensure_postgres installs them)")
        # Not under pytest's tmp dir: `nobody` must be able to reach it.
        self.dir = Path(tempfile.mkdtemp(prefix="weir-pg-"))
        if self._as:
            os.chown(self.dir, self._as["user"], self._as["group"])
        r = self._run(self.bin / "initdb", "-D", self.dir / "data", "-U", "weir", "--auth=trust", "-E", "UTF8")
        assert r.returncode == 0, f"initdb failed:\n{r.stdout}\n{r.stderr}"
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        r = self._run(
            self.bin / "pg_ctl", "-D", self.dir / "data", "-l", self.dir / "postgres.log", "-w", "-t", "30",
            "-o", opts, "start",
        )
        assert r.returncode == 0, f"pg_ctl start failed:\n{r.stdout}\n{r.stderr}\n{self.log()}"
        return self

    def log(self) -> str:
        return log_tail(self.dir / "postgres.log") if self.dir else ""

    def create_database(self, prefix: str = "weir") -> str:
        """A new empty database; returns its DSN."""
        name = unique_name(prefix).replace("-", "_").lower()
        r = self._run(self.bin / "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "weir", name)
        assert r.returncode == 0, f"createdb failed: {r.stderr}"
        return f"postgres://weir@127.0.0.1:{self.port}/{name}"

    def stop(self):
        if self.dir is None:
            return
        self._run(self.bin / "pg_ctl", "-D", self.dir / "data", "-m", "fast", "-w", "-t", "30", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None


@pytest.fixture(scope="session")
def postgres():
    """One PostgreSQL cluster for the whole run; each control plane gets a database of its own."""
    pg = Postgres().start()
    yield pg
    pg.stop()


# ---------------------------------------------------------------------------------------------
# The control plane


class ApiError(Exception):
    def __init__(self, status: int, body):
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class ControlPlane:
    """A weir-control-plane process with its own config, database and free ports."""

    def __init__(self, workdir: Path, backend: str, dsn: str | None = None, extra_yaml: str = "", name: str = ""):
        self.name = name or unique_name(f"cp-{backend}")
        self.workdir = workdir / self.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.backend = backend
        self.api_port, self.watch_port = free_ports(2)
        self.log_path = self.workdir / "control-plane.log"
        self.config_path = self.workdir / "control-plane.yaml"
        if backend == "sqlite":
            storage = f"  sqlite:\n    path: {self.workdir / 'cp.db'}\n"
        elif backend == "postgres":
            assert dsn, "the postgres backend needs a DSN (postgres.create_database())"
            storage = f"  postgres:\n    dsn: {dsn}\n"
        else:
            raise ValueError(backend)
        tokens = "".join(
            f"    - name: {TOKEN_NAMES[t]}\n      role: {role}\n      sha256: {sha256_hex(t)}\n"
            for t, role in [(ADMIN_TOKEN, "admin"), (VIEWER_TOKEN, "viewer"), (GATEWAY_TOKEN, "gateway")]
        )
        self.config_path.write_text(
            f"api:\n  endpoint: 127.0.0.1:{self.api_port}\n"
            f"watch:\n  endpoint: 127.0.0.1:{self.watch_port}\n"
            f"storage:\n{storage}  poll_interval: 200ms\n"
            f"auth:\n  tokens:\n{tokens}"
            f"shutdown_timeout: 5s\n"
            f"log:\n  level: info,weir_control_plane=debug\n" + extra_yaml
        )
        self.dsn = dsn
        self.proc: subprocess.Popen | None = None

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def watch_endpoint(self) -> str:
        return f"127.0.0.1:{self.watch_port}"

    def start(self, ready_timeout: float = 30.0) -> "ControlPlane":
        binary = control_plane_bin()
        if not binary.exists():
            pytest.fail(f"{binary} does not exist: cargo build -p weir-control-plane")
        self.proc = spawn([str(binary), "--config", str(self.config_path)], self.log_path)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"control plane exited with {self.proc.returncode}:\n{self.log()}")
            return self.health() == 200

        wait_until(f"control plane {self.name} healthy", ready, ready_timeout)
        return self

    def health(self) -> int | None:
        try:
            with urllib.request.urlopen(f"{self.api_base}/healthz", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    def stop(self) -> int | None:
        """Stops the process (SIGTERM, then SIGKILL); returns its exit code."""
        code = None
        if self.proc is not None:
            code = stop_process(self.proc)
            self.proc = None
        return code

    def restart(self):
        self.stop()
        return self.start()

    def log(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def request(self, method: str, path: str, token: str | None = None, body=None, raw: bytes | None = None):
        """(status, parsed JSON or text) of a request to the REST API; path under /api/v1."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(f"{self.api_base}/api/v1{path}", data=data, method=method)
        if data is not None:
            req.add_header("content-type", "application/json")
        if token is not None:
            req.add_header("authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                status, text = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def api(self, method: str, path: str, token: str = ADMIN_TOKEN, body=None):
        """The JSON of a successful request; raises ApiError otherwise."""
        status, parsed = self.request(method, path, token, body)
        if status >= 300:
            raise ApiError(status, parsed)
        return parsed

    def submit(self, document: str, token: str = ADMIN_TOKEN):
        return self.api("POST", "/policies", token, {"document": document})

    def release(self, version: int, target: dict | None = None, token: str = ADMIN_TOKEN):
        """Starts a rollout of `version` (to every gateway when no target)."""
        body = {"version": version}
        if target is not None:
            body["target"] = target
        return self.api("POST", "/rollouts", token, body)

    def gateways(self) -> dict:
        """instance_id -> gateway record."""
        return {g["instance_id"]: g for g in self.api("GET", "/gateways", VIEWER_TOKEN)["gateways"]}

    def weirctl(self, *args: str, token: str | None = ADMIN_TOKEN, stdin: str | None = None, timeout: float = 30,
                server: str | None = "", env_extra: dict | None = None):
        """Runs weirctl against this control plane; returns the CompletedProcess (text). Its
        config file is one of this control plane's own (never the user's contexts);
        server=None leaves WEIR_SERVER unset, env_extra adds variables."""
        binary = weirctl_bin()
        if not binary.exists():
            pytest.fail(f"{binary} does not exist: cargo build -p weir-control-plane")
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEIR")}
        env["WEIRCONFIG"] = str(self.workdir / "weirctl-config.yaml")
        if server is not None:
            env["WEIR_SERVER"] = server or self.api_base
        if token is not None:
            env["WEIR_TOKEN"] = token
        env.update(env_extra or {})
        return subprocess.run(
            [str(binary), *args], env=env, input=stdin, capture_output=True, text=True, timeout=timeout
        )


def weirctl_json(proc: subprocess.CompletedProcess):
    assert proc.returncode == 0, f"weirctl failed ({proc.returncode}): {proc.stderr}"
    return json.loads(proc.stdout)


@pytest.fixture
def control_plane_factory(tmp_path, request):
    """control_plane_factory(backend, extra_yaml="") starts a control plane on the SQLite or
    PostgreSQL backend (a fresh database each); all are stopped at teardown, their logs shown
    when the test failed."""
    started: list[ControlPlane] = []

    def make(backend: str = "sqlite", extra_yaml: str = "", start: bool = True, dsn: str | None = None):
        if backend == "postgres" and dsn is None:
            dsn = request.getfixturevalue("postgres").create_database()
        cp = ControlPlane(tmp_path, backend, dsn=dsn, extra_yaml=extra_yaml)
        started.append(cp)
        return cp.start() if start else cp

    yield make
    rep = getattr(request.node, "rep_call", None)
    for cp in started:
        if rep is not None and rep.failed:
            print(f"--- {cp.name} log ---\n{cp.log()}")
        cp.stop()


def wait_for(what: str, check, timeout: float = 10.0, interval: float = 0.05):
    """Polls check() until truthy (bounded in time and count)."""
    return wait_until(what, check, timeout, interval)


__all__ = [
    "ADMIN_TOKEN",
    "VIEWER_TOKEN",
    "GATEWAY_TOKEN",
    "TOKEN_NAMES",
    "ApiError",
    "ControlPlane",
    "Postgres",
    "control_plane_factory",
    "in_canary",
    "postgres",
    "wait_for",
    "weirctl_json",
]
