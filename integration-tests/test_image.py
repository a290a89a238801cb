"""The container images scripts/image.sh builds (OCI archives), checked without a container
engine: each archive is unpacked by hand (index.json -> manifest -> config and layers), its
config checked (a non-root user, the OCI labels, the entrypoint, the ports) against
helm/images/Dockerfile, which builds the same images with Docker, and its entrypoint run inside
the image's root filesystem with chroot: `--version`, and `--check-config` on the config the
chart renders for that component, with the files the pod's volumes mount laid out in the root
filesystem as Kubernetes would mount them.

scripts/test.sh builds the archives from the debug binaries (`WEIR_IMAGE_PROFILE=dev
scripts/image.sh`: a release build on top would not fit CI's budget); the tests skip, saying so,
only when they are missing (e.g. pytest run alone). scripts/image.sh builds the release images
(WEIR_IMAGE_DIR names another directory).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from test_helm import (  # noqa: F401  (helm_env is a fixture used by name)
    CHART,
    REPO_ROOT,
    WORKLOAD_KINDS,
    PodFiles,
    component,
    container_env,
    helm_env,
    pod_spec,
    render,
)

VERSION = re.search(r'^version = "([^"]+)"', (REPO_ROOT / "Cargo.toml").read_text(), re.M).group(1)
IMAGE_DIR = Path(
    os.environ.get(
        "WEIR_IMAGE_DIR",
        Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target")) / "images",
    )
)
DOCKERFILE = REPO_ROOT / "helm" / "images" / "Dockerfile"
IMAGE_SCRIPT = REPO_ROOT / "scripts" / "image.sh"
# Image -> the chart component it runs (weirctl is not deployed by the chart).
IMAGES = {
    "weir-gateway": "gateway",
    "weir-control-plane": "control-plane",
    "weir-tail-router": "tail-router",
    "weirctl": None,
}
LABELS = ["title", "description", "version", "revision", "created", "licenses", "source"]


def archive(image: str) -> Path:
    return IMAGE_DIR / f"{image}-{VERSION}.oci.tar"


def require_archive(image: str) -> Path:
    path = archive(image)
    if not path.is_file():
        pytest.skip(f"{path} is not built: run scripts/image.sh (not part of scripts/test.sh)")
    return path


class Image:
    """An OCI archive unpacked: its image config and its root filesystem."""

    def __init__(self, path: Path, dest: Path):
        with tarfile.open(path) as oci:
            index = json.load(oci.extractfile("index.json"))
            (desc,) = index["manifests"]
            assert desc["mediaType"] == "application/vnd.oci.image.manifest.v1+json", desc
            manifest = json.load(oci.extractfile(blob(desc["digest"])))
            self.config = json.load(oci.extractfile(blob(manifest["config"]["digest"])))
            self.rootfs = dest / "rootfs"
            self.rootfs.mkdir(parents=True)
            for layer in manifest["layers"]:
                assert layer["mediaType"].startswith("application/vnd.oci.image.layer.v1.tar")
                with tarfile.open(fileobj=oci.extractfile(blob(layer["digest"])), mode="r:*") as t:
                    apply_layer(t, self.rootfs)


def blob(digest: str) -> str:
    algo, hexdigest = digest.split(":", 1)
    return f"blobs/{algo}/{hexdigest}"


def apply_layer(layer: tarfile.TarFile, rootfs: Path):
    """Extracts one layer, honouring OCI whiteouts (.wh.NAME deletes NAME below)."""
    members = []
    for m in layer.getmembers():
        name = Path(m.name)
        if name.name.startswith(".wh."):
            gone = rootfs / name.parent / name.name[len(".wh.") :]
            if gone.is_dir() and not gone.is_symlink():
                shutil.rmtree(gone)
            elif gone.exists() or gone.is_symlink():
                gone.unlink()
            continue
        members.append(m)
    # The image's own files, owners and device nodes as they are (this is its root fs).
    kwargs = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
    layer.extractall(rootfs, members=members, **kwargs)


_UNPACKED: dict[str, Image] = {}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Unpacks each archive at most once per module; removes them all at the end."""
    base = tmp_path_factory.mktemp("images")

    def get(name: str) -> Image:
        if name not in _UNPACKED:
            _UNPACKED[name] = Image(require_archive(name), base / name)
        return _UNPACKED[name]

    yield get
    _UNPACKED.clear()
    shutil.rmtree(base, ignore_errors=True)


def dockerfile_stage(name: str) -> str:
    """The text of one stage of the Dockerfile (FROM ... AS name up to the next FROM)."""
    text = DOCKERFILE.read_text()
    m = re.search(rf"^FROM \S+ AS {re.escape(name)}$(.*?)(?=^FROM |\Z)", text, re.M | re.S)
    assert m, f"no stage {name} in {DOCKERFILE}"
    return m.group(1)


def dockerfile_labels(stage_name: str = "runtime") -> dict[str, str]:
    """A stage's LABEL keys and values (ARGs left as ${NAME})."""
    stage = dockerfile_stage(stage_name).replace("\\\n", " ")
    labels = {}
    for line in re.findall(r"^LABEL (.*)$", stage, re.M):
        for k, v in re.findall(r'(\S+)="([^"]*)"', line):
            labels[k] = v
    return labels


def script_base_packages() -> list[str]:
    m = re.search(r"^BASE_PACKAGES=\(([^)]*)\)", IMAGE_SCRIPT.read_text(), re.M)
    assert m, "no BASE_PACKAGES=(...) in scripts/image.sh"
    return m.group(1).split()


def test_the_dockerfile_and_the_script_make_the_same_base():
    """Docker users get what scripts/image.sh builds: the same runtime packages and user."""
    stage = dockerfile_stage("runtime").replace("\\\n", " ")
    m = re.search(r"apt-get install -y --no-install-recommends ([^&]+)&&", stage)
    assert m, stage
    assert sorted(m.group(1).split()) == sorted(script_base_packages())
    assert re.search(r"^IMAGE_USER=10001$", IMAGE_SCRIPT.read_text(), re.M)
    assert "USER 10001:10001" in stage
    for name in IMAGES:
        labels = {**dockerfile_labels(), **dockerfile_labels(name)}
        for key in LABELS:
            assert f"org.opencontainers.image.{key}" in labels, f"{name}: no label {key}"
        assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"


@pytest.mark.parametrize("name", list(IMAGES))
def test_image_config(images, name):
    cfg = images(name).config
    c = cfg["config"]
    assert cfg["os"] == "linux" and cfg["architecture"] == "amd64"
    user = c.get("User", "")
    assert user and user.split(":")[0] not in ("", "0", "root"), f"{name} runs as {user!r}"
    assert user == "10001:10001"
    assert c["Entrypoint"] == [f"/usr/local/bin/{name}"]
    assert not c.get("Cmd")
    assert c["WorkingDir"] == "/var/lib/weir"
    labels = c["Labels"]
    for key in LABELS:
        assert labels.get(f"org.opencontainers.image.{key}"), f"{name}: no label {key}"
    assert labels["org.opencontainers.image.title"] == name
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", labels["org.opencontainers.image.revision"])
    # The Dockerfile's stage of the same name: the same entrypoint, ports and labels.
    stage = dockerfile_stage(name)
    assert f'ENTRYPOINT ["/usr/local/bin/{name}"]' in stage
    exposed = {p for line in re.findall(r"^EXPOSE (.*)$", stage, re.M) for p in line.split()}
    assert {p.split("/")[0] for p in c.get("ExposedPorts", {})} == exposed
    in_dockerfile = {**dockerfile_labels(), **dockerfile_labels(name)}
    assert {k for k in labels if k.startswith("org.opencontainers.")} == set(in_dockerfile)
    for key, value in in_dockerfile.items():
        if "${" not in value:
            assert labels.get(key) == value, f"{name}: label {key} differs from the Dockerfile's"
    assert in_dockerfile["org.opencontainers.image.title"] == name


def chroot_run(image: Image, args: list[str], env: dict[str, str] | None = None):
    """Runs the image's entrypoint with `args` in its root filesystem, as the image's user."""
    if os.geteuid() != 0:
        pytest.skip("running an image's entrypoint in its root filesystem needs chroot: not root")
    c = image.config["config"]
    path = next((e.split("=", 1)[1] for e in c.get("Env", []) if e.startswith("PATH=")), "")
    run_env = {**(env or {}), "PATH": path, "HOME": "/var/lib/weir"}
    return subprocess.run(
        ["chroot", f"--userspec={c['User']}", str(image.rootfs), *c["Entrypoint"], *args],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("name", list(IMAGES))
def test_entrypoint_version(images, name):
    r = chroot_run(images(name), ["--version"])
    assert r.returncode == 0, f"{name} --version in its image failed:\n{r.stderr}"
    assert VERSION in r.stdout, r.stdout


@pytest.mark.parametrize("name", [n for n, comp in IMAGES.items() if comp])
def test_entrypoint_checks_the_charts_config(images, helm_env, name):
    """The chart's default rendering, as the pod runs it: the container's args, the files its
    volumes mount placed at their mount paths in the image's root filesystem (owned by the
    pod's fsGroup, as Kubernetes mounts them), its environment."""
    image = images(name)
    comp = IMAGES[name]
    docs = render(helm_env, None)
    (workload,) = [d for d in docs if d["kind"] in WORKLOAD_KINDS and component(d) == comp]
    container = next(c for c in pod_spec(workload)["containers"] if c["name"] == comp)
    assert container["image"].startswith(f"{name}:"), container["image"]
    files = PodFiles(image.rootfs, docs, workload, container)
    uid = int(image.config["config"]["User"].split(":")[0])
    fs_group = pod_spec(workload)["securityContext"]["fsGroup"]
    for mount in files.mounts:
        for p in [image.rootfs / mount.lstrip("/"), *(image.rootfs / mount.lstrip("/")).rglob("*")]:
            os.chown(p, uid, fs_group)
    args = container.get("args", [])
    cfg_file = image.rootfs / args[args.index("--config") + 1].lstrip("/")
    assert yaml.safe_load(cfg_file.read_text()), f"{cfg_file} is empty"
    env = {k: v for k, v in container_env(docs, container).items() if k != "PATH"}
    r = chroot_run(image, [*args, "--check-config"], env)
    assert r.returncode == 0, (
        f"{name} refused the chart's config in its image (exit {r.returncode}):\n{r.stderr}"
    )


def test_the_chart_uses_these_images():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key, image in (
        ("gateway", "weir-gateway"),
        ("controlPlane", "weir-control-plane"),
        ("tailRouter", "weir-tail-router"),
    ):
        assert values[key]["image"]["repository"] == image
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == VERSION, "the chart's default tag is not the images' version"
