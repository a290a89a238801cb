"""weir-gateway --check-config: the shipped config passes; unknown keys and bad values fail with
the key's path."""

from __future__ import annotations

import subprocess

import pytest

from harness import REPO_ROOT, gateway_bin


def check(path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(gateway_bin()), "--check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def test_shipped_config_is_valid():
    r = check(REPO_ROOT / "config" / "gateway.yaml")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "text,key_path",
    [
        ('kafka:\n  brokerz: ["127.0.0.1:9092"]\n', "kafka.brokerz"),
        ('receivers:\n  grpc:\n    endpiont: "127.0.0.1:4317"\n', "receivers.grpc.endpiont"),
        ("limits:\n  max_message_size: -5\n", "limits.max_message_size"),
        ("kafka:\n  traces:\n    encoding: xml\n", "kafka.traces.encoding"),
        ('limits:\n  export_timeout: "soon"\n', "limits.export_timeout"),
    ],
    ids=["unknown-key", "unknown-nested-key", "negative-size", "unknown-encoding", "bad-duration"],
)
def test_bad_config_names_the_key(tmp_path, text, key_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    r = check(cfg)
    assert r.returncode != 0, f"accepted:\n{text}"
    assert key_path in r.stderr, f"stderr does not name {key_path}:\n{r.stderr}"
