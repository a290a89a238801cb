"""Fixtures: a session Tansu broker, dedicated brokers for tests that pause one, and a gateway
factory. Every process started here is stopped by PID in teardown."""

from __future__ import annotations

import pytest

# Plain asserts in the helper modules report their operands like asserts in tests do.
pytest.register_assert_rewrite("harness", "otel_sdk")

from harness import Broker, Gateway, log_tail, tansu_bin, unique_name  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def _failed(request) -> bool:
    rep = getattr(request.node, "rep_call", None)
    return rep is None or rep.failed


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("weir")


@pytest.fixture(scope="session")
def broker(workdir):
    """The Tansu broker most tests share (each test uses topics of its own)."""
    if not tansu_bin().exists():
        pytest.fail(f"{tansu_bin()} does not exist: run scripts/test.sh (it installs Tansu)")
    b = Broker(workdir, "tansu-session").start()
    yield b
    b.stop()


@pytest.fixture
def broker_factory(request, workdir):
    """Starts dedicated brokers, for tests that pause theirs (SIGSTOP)."""
    started: list[Broker] = []

    def start() -> Broker:
        b = Broker(workdir, unique_name("tansu"))
        started.append(b)
        return b.start()

    yield start
    for b in started:
        b.stop()
        if _failed(request):
            print(f"--- {b.name} on {b.bootstrap}, log {b.log_path}:\n{log_tail(b.log_path, 20, 5)}")


@pytest.fixture
def gateway_factory(request, broker, workdir):
    """gateway_factory({"kafka.max_message_size": 65536}, on_broker=...) -> a started
    Gateway with unique topics (created first) and free ports."""
    started: list[Gateway] = []

    def start(overrides: dict | None = None, on_broker: Broker | None = None) -> Gateway:
        gw = Gateway(on_broker or broker, workdir, overrides)
        started.append(gw)
        return gw.start()

    yield start
    for gw in started:
        gw.stop()
        if _failed(request):
            print(f"--- {gw.name} (exit {gw.exit_code}) config {gw.config_path}, log tail:\n{gw.log()}")


@pytest.fixture
def gateway(gateway_factory):
    """A gateway with the default limits on the session broker."""
    return gateway_factory()
