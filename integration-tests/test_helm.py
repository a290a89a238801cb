"""The Helm chart (helm/weir), checked with the real helm v3 binary.

For the default values and every values file in helm/weir/ci/:
- `helm lint --strict` passes;
- `helm template` renders manifests that kubernetes-validate accepts for Kubernetes 1.29 in
  strict mode (unknown fields refused), and that hold together: selectors match pod labels,
  Services target named container ports, every mounted ConfigMap and Secret is rendered or
  named by the values, every container runs non-root on a read-only root filesystem with all
  capabilities dropped and has resource requests and limits;
- each component's bootstrap config, as rendered into its ConfigMap, passes the binary's own
  `--check-config`, run the way the pod runs it: with the container's arguments, the files its
  volumes mount (at temporary paths) and its environment variables.

NOTES.txt tells how to point SDKs at the gateway Service, and values.schema.json refuses values
files with a wrong type or an unknown key.

Needs helm (scripts/test.sh installs it; WEIR_HELM_BIN names it) and the three binaries
(target/debug/...; WEIR_GATEWAY_BIN, WEIR_CONTROL_PLANE_BIN, WEIR_TAIL_ROUTER_BIN name others).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
CHART = REPO_ROOT / "helm" / "weir"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
KUBE_VERSION = "1.29.0"
RELEASE = "weir-test"
NAMESPACE = "observability"

# Component label -> (env var naming the binary, its default path).
BINARIES = {
    "gateway": ("WEIR_GATEWAY_BIN", REPO_ROOT / "target" / "debug" / "weir-gateway"),
    "control-plane": (
        "WEIR_CONTROL_PLANE_BIN",
        REPO_ROOT / "target" / "debug" / "weir-control-plane",
    ),
    "tail-router": ("WEIR_TAIL_ROUTER_BIN", REPO_ROOT / "target" / "debug" / "weir-tail-router"),
}


# What the Secrets that helm/weir/ci/ values files name (and the chart does not create) hold in
# the cluster this test plays: values of the right shape where the binaries check the shape.
EXISTING_SECRETS = {
    ("weir-postgresql", "uri"): "postgres://weir:from-a-secret@postgresql.db.svc:5432/weir",
}


def existing_secret_value(name: str, key: str) -> str:
    """What an existing Secret (named in values, not rendered by the chart) holds in this test:
    distinct per Secret and key, as real tokens are."""
    return EXISTING_SECRETS.get((name, key), f"value-of-{name}-{key}")


WORKLOAD_KINDS = {"Deployment", "StatefulSet"}
# API groups of custom resources the chart renders (Prometheus Operator, Gateway API).
CRD_GROUPS = ("monitoring.coreos.com/", "gateway.networking.k8s.io/")
# The container running each component's binary (others are the values' extraContainers).
MAIN_CONTAINER = {c: c for c in ("gateway", "control-plane", "tail-router")}


def helm_bin() -> Path:
    return Path(os.environ.get("WEIR_HELM_BIN", Path.home() / ".cache" / "weir" / "bin" / "helm"))


def binary(component: str) -> Path:
    env, default = BINARIES[component]
    path = Path(os.environ.get(env, default))
    if not path.is_file():
        pytest.fail(
            f"{path} does not exist: build it (cargo build --workspace --bins) or set {env}; "
            f"the {component}'s rendered config cannot be checked without it"
        )
    return path


@pytest.fixture(scope="module")
def helm_env(tmp_path_factory):
    """Environment for helm: its cache, config and data directories in a temporary place."""
    if not helm_bin().is_file():
        pytest.fail(f"{helm_bin()} does not exist: run scripts/test.sh (ensure_helm installs it)")
    home = tmp_path_factory.mktemp("helm-home")
    env = dict(os.environ)
    for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[var] = str(home / var.lower())
    return env


def helm(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(helm_bin()), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def values_args(values: Path | None) -> list[str]:
    return [] if values is None else ["--values", str(values)]


_RENDERED: dict[Path | None, str] = {}


def render(env, values: Path | None) -> list[dict]:
    """The objects `helm template` renders with these values (rendered once per module)."""
    if values not in _RENDERED:
        _RENDERED[values] = render_text(env, values)
    docs = [d for d in yaml.safe_load_all(_RENDERED[values]) if d]
    assert docs, "helm template rendered nothing"
    return docs


def render_text(env, values: Path | None) -> str:
    r = helm(
        env,
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
        *values_args(values),
    )
    assert r.returncode == 0, f"helm template failed:\n{r.stderr}"
    return r.stdout


def load_values(values: Path | None) -> dict:
    return {} if values is None else yaml.safe_load(values.read_text()) or {}


CASES = [None, *CI_VALUES]
CASE_IDS = ["defaults", *[p.stem for p in CI_VALUES]]


def test_ci_values_files_cover_the_required_cases():
    names = {p.stem for p in CI_VALUES}
    for want in (
        "postgresql",
        "kafka-sasl-tls",
        "fixed-replicas",
        "spool-statefulset",
        "gateway-exposure",
        "gateway-headless-grpc",
        "gateway-pod-extras",
        "monitoring",
    ):
        assert any(want in n for n in names), f"helm/weir/ci/ has no *{want}* values file: {names}"


@pytest.mark.parametrize("values", CASES, ids=CASE_IDS)
def test_helm_lint(helm_env, values):
    r = helm(
        helm_env,
        "lint",
        str(CHART),
        "--strict",
        "--kube-version",
        KUBE_VERSION,
        *values_args(values),
    )
    assert r.returncode == 0, f"helm lint failed:\n{r.stdout}\n{r.stderr}"


# ---------------------------------------------------------------------------------------------
# The rendered manifests


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def named(docs: list[dict], kind: str, name: str) -> dict | None:
    return next((d for d in by_kind(docs, kind) if d["metadata"]["name"] == name), None)


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def component(obj: dict) -> str:
    return obj["metadata"]["labels"]["app.kubernetes.io/component"]


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("values", CASES, ids=CASE_IDS)
def test_manifests_are_valid_kubernetes_1_29(helm_env, values):
    docs = render(helm_env, values)
    for doc in docs:
        what = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc.get("apiVersion", "").startswith(CRD_GROUPS):
            # CRDs: Kubernetes' schemas do not have them; test_service_monitors,
            # test_monitoring_objects and test_gateway_exposure check them.
            continue
        problem = None
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except jsonschema.ValidationError as e:  # kubernetes_validate's errors derive from it
            problem = f"{e.message} at {'.'.join(str(p) for p in e.absolute_path)}"
        except kubernetes_validate.SchemaNotFoundError as e:
            problem = f"no Kubernetes {KUBE_VERSION} schema: {e}"
        assert problem is None, f"{what} is not valid for Kubernetes {KUBE_VERSION}: {problem}"
        assert doc["metadata"].get("namespace") in (None, NAMESPACE), what


@pytest.mark.parametrize("values", CASES, ids=CASE_IDS)
def test_manifests_hold_together(helm_env, values):
    docs = render(helm_env, values)
    v = load_values(values)
    workloads = [d for d in docs if d["kind"] in WORKLOAD_KINDS]
    assert workloads, "no Deployment or StatefulSet rendered"
    existing = existing_secret_names(v)
    existing_cms = existing_configmap_names(v)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}

    for w in workloads:
        what = f"{w['kind']}/{w['metadata']['name']}"
        labels = w["spec"]["template"]["metadata"]["labels"]
        matched = selects(w["spec"]["selector"]["matchLabels"], labels)
        assert matched, f"{what}: selector misses its pods"
        spec = pod_spec(w)
        claims = {c["metadata"]["name"] for c in w["spec"].get("volumeClaimTemplates", [])}
        volumes = {vol["name"]: vol for vol in spec.get("volumes", [])}
        for vol in volumes.values():
            sources = [vol] + vol.get("projected", {}).get("sources", [])
            for src in sources:
                if "configMap" in src:
                    cm = src["configMap"]["name"]
                    known = ("ConfigMap", cm) in names or cm in existing_cms
                    assert known, f"{what}: ConfigMap {cm} is neither rendered nor named in values"
                if "secret" in src:
                    sn = src["secret"].get("secretName") or src["secret"]["name"]
                    known = ("Secret", sn) in names or sn in existing
                    assert known, f"{what}: Secret {sn} is neither rendered nor named in values"
            assert "persistentVolumeClaim" not in vol, f"{what}: claims come from templates"
        sa = spec.get("serviceAccountName")
        if sa and v.get("serviceAccount", {}).get("create", True):
            assert ("ServiceAccount", sa) in names, f"{what}: ServiceAccount {sa} not rendered"
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, f"{what}: pod not runAsNonRoot"
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", what
        for c in spec["containers"] + spec.get("initContainers", []):
            cwhat = f"{what} container {c['name']}"
            sc = c.get("securityContext", {})
            assert sc.get("runAsNonRoot") is True, cwhat
            assert isinstance(sc.get("runAsUser"), int) and sc["runAsUser"] > 0, cwhat
            assert sc.get("readOnlyRootFilesystem") is True, cwhat
            assert sc.get("allowPrivilegeEscalation") is False, cwhat
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], cwhat
            assert not sc.get("capabilities", {}).get("add"), cwhat
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    assert r in res.get(kind, {}), f"{cwhat}: no {kind}.{r}"
            for m in c.get("volumeMounts", []):
                has_volume = m["name"] in volumes or m["name"] in claims
                assert has_volume, f"{cwhat}: mount {m['name']} has no volume"
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    sn = ref["name"]
                    known = ("Secret", sn) in names or sn in existing
                    assert known, f"{cwhat}: env {e['name']} reads Secret {sn}, unknown"
            if c not in spec["containers"]:
                continue  # init containers run to completion: no probes, no ports
            for probe in ("readinessProbe", "livenessProbe"):
                assert probe in c, f"{cwhat}: no {probe}"
                action = c[probe].get("httpGet") or c[probe].get("tcpSocket")
                assert action, f"{cwhat}: {probe} is neither httpGet nor tcpSocket"
                port = action["port"]
                declared = {p["name"] for p in c["ports"]}
                assert port in declared, f"{cwhat}: {probe} port {port} not declared"

    for svc in by_kind(docs, "Service"):
        sel = svc["spec"].get("selector", {})
        targets = [
            w for w in workloads if selects(sel, w["spec"]["template"]["metadata"]["labels"])
        ]
        name = svc["metadata"]["name"]
        assert len(targets) == 1, f"Service/{name} selects {len(targets)} workloads"
        ports = {p["name"] for c in pod_spec(targets[0])["containers"] for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports, f"Service/{name}: no container port {p['targetPort']}"

    for hpa in by_kind(docs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["kind"], ref["name"]) in names, f"HPA targets missing {ref}"
        target = named(docs, ref["kind"], ref["name"])
        # An autoscaled Deployment must not set replicas: each upgrade would reset them.
        assert "replicas" not in target["spec"], f"{ref['name']} sets replicas under an HPA"
    for pdb in by_kind(docs, "PodDisruptionBudget"):
        sel = pdb["spec"]["selector"]["matchLabels"]
        pods = [w["spec"]["template"]["metadata"]["labels"] for w in workloads]
        assert any(selects(sel, p) for p in pods), f"PDB {pdb['metadata']['name']} selects no pods"


def existing_configmap_names(v: dict) -> set[str]:
    """ConfigMap names the values point at: gateway.configMap.existingName, and the `name` of
    every `configMap` volume source or `configMapRef` in extra volumes and env sources."""
    found: set[str] = set()
    name = v.get("gateway", {}).get("configMap", {}).get("existingName")
    if name:
        found.add(name)

    def walk(node):
        if isinstance(node, dict):
            for k, val in node.items():
                if k in ("configMap", "configMapRef") and isinstance(val, dict) and "name" in val:
                    found.add(val["name"])
                walk(val)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(v)
    return found


def existing_secret_names(v: dict) -> set[str]:
    """Secret names the values point at (the chart mounts them but does not create them), and
    those the user's own `extraEnvs` entries read."""
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            for k, val in node.items():
                if k == "existingSecret" and isinstance(val, str) and val:
                    found.add(val)
                elif k == "secretKeyRef" and isinstance(val, dict) and val.get("name"):
                    found.add(val["name"])
                else:
                    walk(val)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(v)
    return found


@pytest.mark.parametrize("values", CASES, ids=CASE_IDS)
def test_service_monitors(helm_env, values):
    docs = render(helm_env, values)
    v = load_values(values)
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    if not v.get("serviceMonitor", {}).get("enabled", False):
        assert not monitors, "ServiceMonitor rendered while serviceMonitor.enabled is false"
        return
    assert monitors, "serviceMonitor.enabled but no ServiceMonitor rendered"
    services = by_kind(docs, "Service")
    for m in monitors:
        assert m["apiVersion"] == "monitoring.coreos.com/v1"
        sel = m["spec"]["selector"]["matchLabels"]
        matched = [s for s in services if selects(sel, s["metadata"]["labels"])]
        assert matched, f"ServiceMonitor/{m['metadata']['name']} selects no Service"
        for ep in m["spec"]["endpoints"]:
            assert ep["path"] == "/metrics"
            for svc in matched:
                ports = {p["name"] for p in svc["spec"]["ports"]}
                assert ep["port"] in ports, f"{svc['metadata']['name']} has no port {ep['port']}"


# ---------------------------------------------------------------------------------------------
# The gateway's Kubernetes objects the issue names


def gateway_objects(docs):
    """The gateway's workload (a Deployment, or a StatefulSet in spool statefulSet mode) and
    the Service clients use (not the StatefulSet's headless one)."""
    deps = [d for d in docs if d["kind"] in WORKLOAD_KINDS and component(d) == "gateway"]
    svcs = [
        d
        for d in by_kind(docs, "Service")
        if component(d) == "gateway" and not d["metadata"]["name"].endswith("-headless")
    ]
    assert len(deps) == 1 and len(svcs) == 1, "one gateway workload and one Service expected"
    return deps[0], svcs[0]


def test_gateway_service_probes_hpa_and_pdb(helm_env):
    docs = render(helm_env, None)
    dep, svc = gateway_objects(docs)
    ports = {p["port"]: p for p in svc["spec"]["ports"]}
    assert ports[4317]["appProtocol"] == "grpc"
    assert 4318 in ports and 8888 in ports
    c = pod_spec(dep)["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    admin = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert set(admin) == {"otlp", "otlp-http", "metrics"}, admin
    assert admin[c["readinessProbe"]["httpGet"]["port"]] == 8888
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    assert [h["apiVersion"] for h in hpas] == ["autoscaling/v2"]
    assert hpas[0]["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    pdbs = [p for p in by_kind(docs, "PodDisruptionBudget") if component(p) == "gateway"]
    assert [p["apiVersion"] for p in pdbs] == ["policy/v1"]


def test_a_config_change_rolls_the_gateway_pods(helm_env, tmp_path):
    """The pod template carries a checksum of the config: another config, another checksum."""
    other = tmp_path / "other.yaml"
    other.write_text("gateway:\n  config:\n    log:\n      level: debug\n")
    before = gateway_objects(render(helm_env, None))[0]
    after = gateway_objects(render(helm_env, other))[0]
    key = "checksum/config"
    a = before["spec"]["template"]["metadata"]["annotations"][key]
    b = after["spec"]["template"]["metadata"]["annotations"][key]
    assert len(a) == 64 and a != b
    fresh = [d for d in yaml.safe_load_all(render_text(helm_env, None)) if d]
    again = gateway_objects(fresh)[0]["spec"]["template"]["metadata"]["annotations"][key]
    assert again == a, "the checksum changes between two renders of the same values"


def test_fixed_replicas_turn_autoscaling_off(helm_env):
    path = next(p for p in CI_VALUES if "fixed-replicas" in p.stem)
    docs = render(helm_env, path)
    dep, _ = gateway_objects(docs)
    assert dep["spec"]["replicas"] == 2
    assert not by_kind(docs, "HorizontalPodAutoscaler")


def test_the_default_spool_is_an_emptydir_of_a_deployment_with_room_for_its_drain(helm_env):
    dep, _ = gateway_objects(render(helm_env, None))
    spec = pod_spec(dep)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes["spool"], volumes["spool"]
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["gateway"]
    # preStop 5 s + shutdown_timeout 30 s + spool.drain_timeout 20 s.
    assert defaults["config"]["spool"]["drain_timeout"] == "20s"
    assert spec["terminationGracePeriodSeconds"] > 5 + 30 + 20


def test_spool_statefulset_mode_renders_a_statefulset_with_a_claim_per_pod(helm_env):
    path = next(p for p in CI_VALUES if p.stem == "spool-statefulset")
    v = load_values(path)["gateway"]
    docs = render(helm_env, path)
    assert not [d for d in by_kind(docs, "Deployment") if component(d) == "gateway"]
    (sts,) = [d for d in by_kind(docs, "StatefulSet") if component(d) == "gateway"]
    assert sts["spec"]["replicas"] == v["replicas"]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "spool"
    assert claim["spec"]["resources"]["requests"]["storage"] == v["spool"]["persistence"]["size"]
    assert claim["spec"]["storageClassName"] == v["spool"]["persistence"]["storageClassName"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    spec = pod_spec(sts)
    assert "spool" not in {vol["name"] for vol in spec.get("volumes", [])}, "the claim, not an emptyDir"
    (c,) = [c for c in spec["containers"] if c["name"] == "gateway"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["spool"] == "/var/lib/weir-gateway/spool"
    # The headless Service the StatefulSet names, selecting its pods.
    headless = named(docs, "Service", sts["spec"]["serviceName"])
    assert headless is not None, f"no Service {sts['spec']['serviceName']}"
    assert headless["spec"]["clusterIP"] == "None"
    assert selects(headless["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])
    # Grace: preStop sleep, then shutdown_timeout (20s) and the spool's drain (1m).
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert spec["terminationGracePeriodSeconds"] == v["terminationGracePeriodSeconds"] > 5 + 20 + 60
    # The config the pod reads drains for what the values say.
    cm = named(docs, "ConfigMap", sts["metadata"]["name"])
    config = yaml.safe_load(cm["data"]["gateway.yaml"])
    assert config["spool"]["drain_timeout"] == "1m"
    assert config["spool"]["directory"] == "/var/lib/weir-gateway/spool"


def test_an_autoscaled_statefulset_is_the_hpas_target(helm_env, tmp_path):
    values = tmp_path / "sts-hpa.yaml"
    values.write_text("gateway:\n  spool:\n    mode: statefulSet\n")
    docs = render(helm_env, values)
    (sts,) = [d for d in by_kind(docs, "StatefulSet") if component(d) == "gateway"]
    (hpa,) = [h for h in by_kind(docs, "HorizontalPodAutoscaler") if component(h) == "gateway"]
    target = {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": sts["metadata"]["name"]}
    assert hpa["spec"]["scaleTargetRef"] == target
    assert "replicas" not in sts["spec"]


@pytest.mark.parametrize("values", CASES, ids=CASE_IDS)
def test_notes_tell_how_to_point_sdks_at_the_service(helm_env, values, tmp_path):
    """NOTES.txt, rendered: helm shows it only after an install, so the test renders a copy of
    the chart in which the notes are also a template's content."""
    chart = tmp_path / "weir"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "notes-preview.yaml").write_text(
        '{{- define "notes.preview" }}\n' + notes + "{{- end }}\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n"
        '    {{- include "notes.preview" . | nindent 4 }}\n'
    )
    r = helm(
        helm_env,
        "template",
        RELEASE,
        str(chart),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
        "--show-only",
        "templates/notes-preview.yaml",
        *values_args(values),
    )
    assert r.returncode == 0, r.stderr
    text = yaml.safe_load(r.stdout)["data"]["notes"]
    _, svc = gateway_objects(render(helm_env, values))
    host = f"{svc['metadata']['name']}.{NAMESPACE}.svc"
    ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in text
    scheme = (
        "https"
        if load_values(values).get("gateway", {}).get("tls", {}).get("existingSecret")
        else "http"
    )
    assert f"{scheme}://{host}:{ports['otlp-http']}" in text, text
    assert f"{host}:{ports['otlp']}" in text, text


# ---------------------------------------------------------------------------------------------
# The rendered configs, checked by the binaries


class PodFiles:
    """The files a container sees through its volume mounts, laid out under a temporary root."""

    def __init__(
        self,
        root: Path,
        docs: list[dict],
        workload: dict,
        container: dict,
        existing_configmaps: dict[str, dict] | None = None,
    ):
        self.root = root
        self.mounts: list[str] = []
        # Mounts whose files come from a ConfigMap or Secret: a config naming a file there
        # names one the pod will have. (emptyDir and claims start empty: files there are made
        # by the process, like the SQLite database.)
        self.provided: list[str] = []
        spec = pod_spec(workload)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
        for m in container.get("volumeMounts", []):
            target = self.path(m["mountPath"])
            target.mkdir(parents=True, exist_ok=True)
            self.mounts.append(m["mountPath"].rstrip("/"))
            if m["name"] in claims:
                continue
            vol = volumes[m["name"]]
            if {"configMap", "secret", "projected"} & set(vol):
                self.provided.append(m["mountPath"].rstrip("/"))
            if "configMap" in vol:
                cm_name = vol["configMap"]["name"]
                cm = named(docs, "ConfigMap", cm_name) or (existing_configmaps or {}).get(cm_name)
                if cm is None and vol["configMap"].get("optional"):
                    continue  # an optional ConfigMap the values name, absent here
                assert cm is not None, f"ConfigMap {vol['configMap']['name']} not rendered"
                self.write(target, cm.get("data", {}), vol["configMap"].get("items"))
            elif "secret" in vol:
                self.write_secret(
                    target, docs, vol["secret"]["secretName"], vol["secret"].get("items")
                )
            elif "projected" in vol:
                for src in vol["projected"]["sources"]:
                    assert set(src) <= {"secret", "configMap"}, f"projected source {src}"
                    if "secret" in src:
                        self.write_secret(
                            target, docs, src["secret"]["name"], src["secret"].get("items")
                        )
                    else:
                        cm = named(docs, "ConfigMap", src["configMap"]["name"])
                        assert cm is not None, f"ConfigMap {src['configMap']['name']} not rendered"
                        self.write(target, cm.get("data", {}), src["configMap"].get("items"))
            # emptyDir and persistentVolumeClaim: an empty directory, as in the pod.
        self.mounts.sort(key=len, reverse=True)

    def write_secret(self, target: Path, docs: list[dict], name: str, items: list | None):
        sec = named(docs, "Secret", name)
        if sec is None:
            # The test knows an existing Secret's keys only from the items the pod mounts.
            assert items, f"existing Secret {name} is mounted without items"
            data = {i["key"]: existing_secret_value(name, i["key"]) for i in items}
        else:
            data = {k: base64.b64decode(val).decode() for k, val in sec.get("data", {}).items()}
            data.update(sec.get("stringData", {}))
        self.write(target, data, items)

    def path(self, container_path: str) -> Path:
        return self.root / container_path.lstrip("/")

    @staticmethod
    def write(target: Path, data: dict, items: list | None):
        if items:
            for i in items:
                assert i["key"] in data, f"mounted key {i['key']} is not in the object"
                (target / i["path"]).parent.mkdir(parents=True, exist_ok=True)
                (target / i["path"]).write_text(data[i["key"]])
        else:
            for k, val in data.items():
                (target / k).write_text(val)

    def mapped(self, value: str) -> str | None:
        """A container path under a mount, as a path in the temporary root; None otherwise."""
        for m in self.mounts:
            if value == m or value.startswith(m + "/"):
                return str(self.path(value))
        return None


def container_env(docs: list[dict], container: dict) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
            continue
        src = e.get("valueFrom", {})
        if "secretKeyRef" in src:
            ref = src["secretKeyRef"]
            sec = named(docs, "Secret", ref["name"])
            if sec is None:
                env[e["name"]] = existing_secret_value(ref["name"], ref["key"])
            else:
                data = sec.get("data", {})
                assert ref["key"] in data, f"Secret {ref['name']} has no key {ref['key']}"
                env[e["name"]] = base64.b64decode(data[ref["key"]]).decode()
        elif "fieldRef" in src:
            env[e["name"]] = f"fake-{src['fieldRef']['fieldPath'].replace('.', '-')}"
        else:
            pytest.fail(f"env {e['name']}: a source this test cannot emulate: {src}")
    return env


def remap_paths(node, files: PodFiles, where: str = ""):
    """The config with every absolute path in it moved under the temporary root. A path outside
    every mount fails the test: the container would not find that file."""
    if isinstance(node, dict):
        return {
            k: remap_paths(val, files, f"{where}.{k}" if where else k) for k, val in node.items()
        }
    if isinstance(node, list):
        return [remap_paths(val, files, f"{where}[{i}]") for i, val in enumerate(node)]
    if isinstance(node, str) and node.startswith("/"):
        moved = files.mapped(node)
        assert moved is not None, f"config key {where}: {node} is under no volume mount"
        if any(node.startswith(m + "/") for m in files.provided):
            mounted = Path(moved).is_file()
            assert mounted, f"config key {where}: {node} is not among the files its volume mounts"
        return moved
    return node


VALUES_KEY = {"gateway": "gateway", "control-plane": "controlPlane", "tail-router": "tailRouter"}


@pytest.mark.parametrize("comp", list(BINARIES))
@pytest.mark.parametrize("values", CASES, ids=CASE_IDS)
def test_rendered_configs_pass_check_config(helm_env, values, comp, tmp_path):
    docs = render(helm_env, values)
    workloads = [d for d in docs if d["kind"] in WORKLOAD_KINDS and component(d) == comp]
    enabled = load_values(values).get(VALUES_KEY[comp], {}).get("enabled", True)
    rendered = len(workloads)
    assert bool(rendered) == enabled, f"{comp}: enabled={enabled} but {rendered} workloads rendered"
    check_configs(docs, workloads, comp, tmp_path, existing_configmaps(helm_env, values))


def existing_configmaps(helm_env, values: Path | None) -> dict[str, dict]:
    """What a ConfigMap the values name (gateway.configMap.existingName) holds in the cluster
    this test plays: the config the chart renders itself for the same values."""
    v = load_values(values)
    name = v.get("gateway", {}).get("configMap", {}).get("existingName")
    if not name:
        return {}
    v["gateway"]["configMap"] = {"create": True, "existingName": ""}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as own:
        own.write(yaml.safe_dump(v))
        own.flush()
        docs = [d for d in yaml.safe_load_all(render_text(helm_env, Path(own.name))) if d]
    cm = next(d for d in by_kind(docs, "ConfigMap") if "gateway.yaml" in d.get("data", {}))
    return {name: cm}


def check_configs(
    docs: list[dict],
    workloads: list[dict],
    comp: str,
    tmp_path: Path,
    existing_configmaps: dict[str, dict] | None = None,
):
    """Runs `<binary> --config <its rendered config> --check-config` for every container of
    the workloads, as the pod would run it (files from its mounts, its environment)."""
    for w in workloads:
        for c in pod_spec(w)["containers"]:
            if c["name"] != MAIN_CONTAINER[comp]:
                continue  # a sidecar from extraContainers
            root = tmp_path / f"{w['metadata']['name']}-{c['name']}"
            files = PodFiles(root, docs, w, c, existing_configmaps)
            args = list(c.get("args", []))
            assert "--config" in args, f"{w['metadata']['name']}: no --config in {args}"
            i = args.index("--config") + 1
            cfg_path = files.mapped(args[i])
            mounted = cfg_path is not None and Path(cfg_path).is_file()
            assert mounted, f"--config {args[i]} is not a mounted file"
            cfg = yaml.safe_load(Path(cfg_path).read_text())
            assert isinstance(cfg, dict) and cfg, f"{args[i]} is empty"
            checked_cfg = root / "checked-config.yaml"
            checked_cfg.write_text(yaml.safe_dump(remap_paths(cfg, files), sort_keys=False))
            args[i] = str(checked_cfg)
            r = subprocess.run(
                [str(binary(comp)), *args, "--check-config"],
                env=container_env(docs, c),
                cwd=root,
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
            assert r.returncode == 0, (
                f"{comp} refused its rendered config (exit {r.returncode}):\n{r.stderr}\n"
                f"--- config:\n{checked_cfg.read_text()}"
            )


# ---------------------------------------------------------------------------------------------
# The schema


@pytest.mark.parametrize(
    "text,expect",
    [
        ("gateway:\n  replicas: two\n", "gateway.replicas"),
        ('gateway:\n  autoscaling:\n    enabled: "yes"\n', "gateway.autoscaling.enabled"),
        ("kafka:\n  brokers: kafka:9092\n", "kafka.brokers"),
        ("gateway:\n  config:\n    kafka:\n      acks: 1\n", "gateway.config.kafka.acks"),
        ("gateway:\n  config:\n    limits:\n      export_timeout: 10\n", "export_timeout"),
        ("gateway:\n  replica: 2\n", "replica"),
        ("gatway:\n  replicas: 2\n", "gatway"),
        ('gateway:\n  config:\n    kafka:\n      brokerz: ["a:1"]\n', "brokerz"),
        ("gateway:\n  config:\n    admin:\n      endpoint: 0.0.0.0:9999\n", "admin"),
        ("gateway:\n  ports:\n    grpc: 4317\n", "grpc"),
        ("gateway:\n  ports:\n    otlp:\n      protocol: UDP\n", "gateway.ports.otlp.protocol"),
        ("gateway:\n  extraEnv: []\n", "extraEnv"),
        ("serviceMonitor:\n  labels: {}\n", "labels"),
        ("gateway:\n  service:\n    internalTrafficPolicy: Nearby\n", "internalTrafficPolicy"),
        (
            "kafka:\n  security:\n    sasl:\n      mechanism: GSSAPI\n",
            "kafka.security.sasl.mechanism",
        ),
        ("tailRouter:\n  config:\n    delay: 120\n", "tailRouter.config.delay"),
        ("controlPlane:\n  config:\n    auth: {}\n", "auth"),
        ("controlPlane:\n  storage:\n    backend: mysql\n", "controlPlane.storage.backend"),
    ],
    ids=[
        "wrong-type-int",
        "wrong-type-bool",
        "wrong-type-list",
        "wrong-type-acks",
        "wrong-type-duration",
        "unknown-key",
        "unknown-top-level-key",
        "unknown-config-key",
        "chart-owned-config-key",
        "old-ports-key",
        "udp-port",
        "old-extra-env-key",
        "old-service-monitor-labels-key",
        "unknown-traffic-policy",
        "unknown-enum-value",
        "tail-router-wrong-type",
        "control-plane-chart-owned-key",
        "unknown-storage-backend",
    ],
)
def test_schema_refuses_bad_values(helm_env, tmp_path, text, expect):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    for cmd in ("template", "lint"):
        args = [cmd, RELEASE, str(CHART)] if cmd == "template" else [cmd, str(CHART)]
        r = helm(helm_env, *args, "--kube-version", KUBE_VERSION, "--values", str(bad))
        out = r.stdout + r.stderr
        assert r.returncode != 0, f"helm {cmd} accepted:\n{text}"
        assert "values don't meet the specifications of the schema" in out, out
        assert expect in out, f"helm {cmd}'s message does not name {expect}:\n{out}"


def test_schema_file_refuses_unknown_keys_everywhere():
    """Every object in values.schema.json with fixed properties refuses others."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    seen = 0

    def walk(node: dict, where: str):
        nonlocal seen
        if "properties" in node:
            seen += 1
            assert node.get("additionalProperties") is False, f"{where} allows unknown keys"
            for k, sub in node["properties"].items():
                walk(sub, f"{where}.{k}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key], f"{where}/{key}")
        for key in ("oneOf", "anyOf", "allOf"):
            for i, sub in enumerate(node.get(key, [])):
                walk(sub, f"{where}/{key}[{i}]")
        for name, sub in node.get("definitions", {}).items():
            walk(sub, f"#/definitions/{name}")

    walk(schema, "values")
    assert seen > 20, f"only {seen} objects with properties in the schema"


@pytest.mark.parametrize(
    "text,expect",
    [
        ("controlPlane:\n  storage:\n    backend: postgresql\n", "controlPlane.storage.postgresql"),
        (
            "kafka:\n  security:\n    protocol: sasl_ssl\n    sasl:\n      username: weir\n",
            "kafka.security.sasl: set existingSecret",
        ),
        (
            "kafka:\n  security:\n    tls:\n      ca: pem\n",
            "use kafka.security.protocol ssl or sasl_ssl",
        ),
        (
            "controlPlane:\n  enabled: false\n"
            "gateway:\n  config:\n    control_plane:\n      connect_timeout: 1s\n",
            "gateway.config.control_plane is set but the gateway has no control plane",
        ),
        (
            "gateway:\n  ports:\n    metrics:\n      enabled: false\n",
            "gateway.ports.metrics.enabled must stay true",
        ),
        (
            "gateway:\n  ports:\n    otlp:\n      enabled: false\n    otlp-http:\n      enabled: false\n",
            "gateway.ports: enable otlp or otlp-http",
        ),
        (
            "gateway:\n  service:\n    type: LoadBalancer\n    clusterIP: None\n",
            "gateway.service.clusterIP (e.g. None, headless) needs gateway.service.type ClusterIP",
        ),
        (
            "gateway:\n  configMap:\n    create: false\n",
            "gateway.configMap: with create: false, set existingName",
        ),
        (
            "gateway:\n  httproute:\n    enabled: true\n",
            "gateway.httproute.parentRefs",
        ),
        (
            "gateway:\n  autoscaling:\n    minReplicas: 5\n    maxReplicas: 3\n",
            "gateway.autoscaling.minReplicas (5) is above maxReplicas (3)",
        ),
        (
            "gateway:\n  terminationGracePeriodSeconds: 50\n",
            "gateway.terminationGracePeriodSeconds (50) must exceed preStopSleepSeconds + config.shutdown_timeout + config.spool.drain_timeout (55 s)",
        ),
        (
            "gateway:\n  config:\n    spool:\n      drain_timeout: 1m 30s\n",
            "gateway.terminationGracePeriodSeconds (60) must exceed preStopSleepSeconds + config.shutdown_timeout + config.spool.drain_timeout (125 s)",
        ),
    ],
    ids=[
        "postgresql-without-dsn",
        "sasl-without-password",
        "tls-on-plaintext",
        "control-plane-settings-without-one",
        "metrics-port-off",
        "no-receiver",
        "headless-load-balancer",
        "no-configmap",
        "httproute-without-parent",
        "min-above-max",
        "grace-shorter-than-shutdown-and-drain",
        "drain-longer-than-grace",
    ],
)
def test_settings_that_cannot_work_are_refused(helm_env, tmp_path, text, expect):
    """Values the schema accepts but the chart cannot turn into a working install fail
    `helm template` with a message naming what to fix."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    r = helm(
        helm_env,
        "template",
        RELEASE,
        str(CHART),
        "--kube-version",
        KUBE_VERSION,
        "--values",
        str(bad),
    )
    assert r.returncode != 0, f"helm template accepted:\n{text}"
    assert expect in r.stderr, r.stderr


def schema_sample(schema: dict, node: dict, default):
    """A value `node` (a values.schema.json subschema) accepts: `default` where values.yaml
    has one, else a small valid sample; objects get every property the schema lists."""
    if "$ref" in node:
        node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
    if "oneOf" in node:
        node = node["oneOf"][-1]
    if node.get("type") == "object" and "properties" in node:
        base = default if isinstance(default, dict) else {}
        # Keys the schema admits only one of at a time (`not: {required: [a, b]}`) are the
        # sources of a secret the pod must provide: ci/tail-signing.yaml sets them with one.
        exclusive = node.get("not", {}).get("required", [])
        return {
            k: schema_sample(schema, sub, base.get(k))
            for k, sub in node["properties"].items()
            if k not in exclusive
        }
    if default is not None:
        return default
    if "enum" in node:
        return node["enum"][-1]
    kind = node.get("type")
    if kind == "integer":
        return max(node.get("minimum", 1), 1)
    if kind == "array":
        return ["x-weir-sample"]
    if kind == "object":
        return {"x-weir-sample": "1"}
    pattern = node.get("pattern", "")
    if "[a-zA-Zµ]" in pattern:  # a duration
        return "1s"
    if "[kKmMgG]" in pattern:  # a byte size
        return "1KiB"
    return "x-weir-sample"


def test_every_config_key_the_schema_admits_is_one_the_binaries_accept(helm_env, tmp_path):
    """The schema mirrors the binaries' config keys: a values file that sets every key it
    admits under gateway.config, controlPlane.config and tailRouter.config (defaults from
    values.yaml, samples for the rest) renders configs all three binaries accept."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    full = {}
    for key in ("gateway", "controlPlane", "tailRouter"):
        sub = schema["properties"][key]["properties"]["config"]
        full[key] = {"config": schema_sample(schema, sub, defaults[key]["config"])}
    # The sampled decisions.signing_key_env names this variable: the pod's env gives it.
    full["tailRouter"]["extraEnvs"] = [{"name": "x-weir-sample", "value": "k" * 32}]
    values = tmp_path / "every-key.yaml"
    values.write_text(yaml.safe_dump(full))
    docs = render(helm_env, values)
    for comp in BINARIES:
        workloads = [d for d in docs if d["kind"] in WORKLOAD_KINDS and component(d) == comp]
        assert workloads, comp
        check_configs(docs, workloads, comp, tmp_path / comp)


def test_schema_file_is_what_its_generator_writes(tmp_path):
    """helm/weir/values.schema.json is written by helm/schema/values_schema.py: a hand edit of
    the JSON would be lost at the next regeneration."""
    out = tmp_path / "values.schema.json"
    script = REPO_ROOT / "helm" / "schema" / "values_schema.py"
    r = subprocess.run(
        [sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    committed = (CHART / "values.schema.json").read_text()
    assert (
        out.read_text() == committed
    ), f"regenerate it: python3 {script} {CHART}/values.schema.json"


# ---------------------------------------------------------------------------------------------
# The images (there is no container engine here to build them: these check the Dockerfile
# against the workspace and the chart instead)


def test_dockerfile_builds_the_binaries_and_images_the_chart_uses():
    dockerfile = (REPO_ROOT / "helm" / "images" / "Dockerfile").read_text()
    meta = subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert meta.returncode == 0, meta.stderr
    bins = {
        t["name"]
        for p in json.loads(meta.stdout)["packages"]
        for t in p["targets"]
        if "bin" in t["kind"]
    }
    built = set(re.findall(r"--bin (\S+)", dockerfile))
    assert built == {"weir-gateway", "weir-control-plane", "weir-tail-router", "weirctl"}, built
    assert built <= bins, f"the Dockerfile builds binaries the workspace lacks: {built - bins}"
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.MULTILINE))
    for b in built:
        assert b in stages, f"no image stage for {b}"
        assert f"COPY --from=builder /out/{b} /usr/local/bin/{b}" in dockerfile, b
        assert f'ENTRYPOINT ["/usr/local/bin/{b}"]' in dockerfile, b
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    for key in ("gateway", "controlPlane", "tailRouter"):
        repo = defaults[key]["image"]["repository"]
        assert repo in stages, f"{key}.image.repository {repo} is no Dockerfile target"
    uid = defaults["securityContext"]["runAsUser"]
    assert f"USER {uid}:{uid}" in dockerfile, "the image's user is not the chart's runAsUser"
    assert re.search(
        r"^FROM rust:\$\{RUST_VERSION\}-\$\{DEBIAN_RELEASE\} AS builder$", dockerfile, re.M
    )
    assert "ARG RUST_VERSION=1.95" in dockerfile


def test_names_fit_kubernetes_limits_with_the_longest_release_name(helm_env):
    """Helm allows 53-character release names; every object name must still be a DNS label
    (63), and a StatefulSet's name at most 52 (its pods' controller-revision-hash label adds
    11 characters to it)."""
    release = "r" * 53
    r = helm(
        helm_env,
        "template",
        release,
        str(CHART),
        "--kube-version",
        KUBE_VERSION,
        "--namespace",
        NAMESPACE,
    )
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    for d in docs:
        name = d["metadata"]["name"]
        assert len(name) <= 63, f"{d['kind']}/{name} is {len(name)} characters"
        if d["kind"] == "StatefulSet":
            assert len(name) <= 52, f"StatefulSet/{name} is {len(name)} characters"


# ---------------------------------------------------------------------------------------------
# The keys named as in the opentelemetry-collector chart (docs/helm.md maps them)


def ci_values(stem: str) -> Path:
    return next(p for p in CI_VALUES if p.stem == stem)


def gateway_container(workload: dict) -> dict:
    return next(c for c in pod_spec(workload)["containers"] if c["name"] == "gateway")


def test_gateway_exposure(helm_env):
    """ports map (nodePort, servicePort), LoadBalancer options, Ingresses, HTTPRoute and the
    NetworkPolicy, as gateway-exposure.yaml sets them."""
    docs = render(helm_env, ci_values("gateway-exposure"))
    dep, svc = gateway_objects(docs)
    spec = svc["spec"]
    assert spec["type"] == "LoadBalancer"
    assert spec["loadBalancerIP"] == "203.0.113.10"
    assert spec["loadBalancerSourceRanges"] == ["10.0.0.0/8", "192.168.0.0/16"]
    assert spec["internalTrafficPolicy"] == "Local"
    assert spec["externalTrafficPolicy"] == "Local"
    ports = {p["name"]: p for p in spec["ports"]}
    assert ports["otlp"]["nodePort"] == 30317 and ports["otlp"]["appProtocol"] == "grpc"
    assert ports["otlp-http"]["port"] == 80 and ports["otlp-http"]["nodePort"] == 30318
    assert ports["otlp-http"]["targetPort"] == "otlp-http"
    container_ports = {p["name"]: p["containerPort"] for p in gateway_container(dep)["ports"]}
    assert container_ports == {"otlp": 4317, "otlp-http": 4318, "metrics": 8888}

    ingresses = {i["metadata"]["name"]: i for i in by_kind(docs, "Ingress")}
    main = svc["metadata"]["name"]
    assert set(ingresses) == {main, f"{main}-internal"}, set(ingresses)
    ing = ingresses[main]
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["spec"]["tls"][0]["secretName"] == "otlp-example-com-tls"
    path = ing["spec"]["rules"][0]["http"]["paths"][0]
    assert path["path"] == "/v1/"
    assert path["backend"]["service"] == {"name": main, "port": {"number": 80}}
    internal = ingresses[f"{main}-internal"]["spec"]
    assert internal["ingressClassName"] == "internal"
    # A path without a port goes to the OTLP/HTTP servicePort.
    assert internal["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"] == {"number": 80}

    (route,) = by_kind(docs, "HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"][0]["name"] == "public-gateway"
    assert route["spec"]["hostnames"] == ["otlp.example.com"]
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [{"name": main, "port": 80}]
    assert rule["matches"][0]["path"]["value"] == "/v1/"

    (np,) = by_kind(docs, "NetworkPolicy")
    assert np["metadata"]["annotations"] == {"team": "observability"}
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert selects(np["spec"]["podSelector"]["matchLabels"], pod_labels)
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    first, extra = np["spec"]["ingress"]
    assert {p["port"] for p in first["ports"]} == {4317, 4318, 8888}
    assert first["from"][1] == {"ipBlock": {"cidr": "10.0.0.0/8"}}
    assert extra["ports"] == [{"port": 8888, "protocol": "TCP"}]
    assert np["spec"]["egress"] == [{"to": [{"namespaceSelector": {}}]}]


def test_defaults_render_no_exposure_objects(helm_env):
    docs = render(helm_env, None)
    for kind in ("Ingress", "HTTPRoute", "NetworkPolicy", "PodMonitor", "PrometheusRule"):
        assert not by_kind(docs, kind), f"{kind} rendered with the default values"
    assert "clusterIP" not in gateway_objects(docs)[1]["spec"]


def test_headless_service_ports_map_and_existing_configmap(helm_env):
    docs = render(helm_env, ci_values("gateway-headless-grpc"))
    dep, svc = gateway_objects(docs)
    assert svc["spec"]["clusterIP"] == "None"
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    assert ports["otlp"] == (4317, "otlp") and ports["metrics"] == (8888, "metrics")
    c = gateway_container(dep)
    container_ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert container_ports == {"otlp": 14317, "otlp-http": 4318, "metrics": 18888}
    # The chart renders no gateway ConfigMap and mounts the operator's instead.
    gateway_cms = [
        d for d in by_kind(docs, "ConfigMap") if "gateway.yaml" in d.get("data", {})
    ]
    assert not gateway_cms, [d["metadata"]["name"] for d in gateway_cms]
    config = next(v for v in pod_spec(dep)["volumes"] if v["name"] == "config")
    assert config["configMap"]["name"] == "weir-gateway-own-config"
    assert "checksum/config" not in dep["spec"]["template"]["metadata"]["annotations"]


def test_the_ports_map_sets_the_listeners(helm_env, tmp_path):
    """containerPort is where the gateway listens; enabled: false turns a receiver off."""
    values = tmp_path / "ports.yaml"
    values.write_text(
        "gateway:\n  ports:\n    otlp-http:\n      enabled: false\n"
        "    metrics:\n      containerPort: 9888\n"
    )
    docs = render(helm_env, values)
    dep, svc = gateway_objects(docs)
    assert {p["name"] for p in svc["spec"]["ports"]} == {"otlp", "metrics"}
    assert {p["name"] for p in gateway_container(dep)["ports"]} == {"otlp", "metrics"}
    cm = next(d for d in by_kind(docs, "ConfigMap") if "gateway.yaml" in d.get("data", {}))
    cfg = yaml.safe_load(cm["data"]["gateway.yaml"])
    assert cfg["receivers"]["http"]["enabled"] is False
    assert cfg["receivers"]["grpc"] == {"enabled": True, "endpoint": "0.0.0.0:4317"}
    assert cfg["admin"]["endpoint"] == "0.0.0.0:9888"


def test_gateway_pod_extras(helm_env):
    docs = render(helm_env, ci_values("gateway-pod-extras"))
    dep, _ = gateway_objects(docs)
    spec = pod_spec(dep)
    c = gateway_container(dep)
    env = {e["name"]: e for e in c["env"]}
    assert env["RUST_BACKTRACE"]["value"] == "1"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert c["envFrom"] == [{"configMapRef": {"name": "weir-gateway-env", "optional": True}}]
    assert {"name": "ca-bundle", "mountPath": "/etc/weir/extra-ca", "readOnly": True} in c[
        "volumeMounts"
    ]
    assert any(v["name"] == "ca-bundle" for v in spec["volumes"])
    assert [i["name"] for i in spec["initContainers"]] == ["wait-for-kafka"]
    assert [x["name"] for x in spec["containers"]] == ["gateway", "config-reloader"]
    # lifecycleHooks replaces the chart's preStop sleep.
    assert c["lifecycle"] == {"preStop": {"exec": {"command": ["sleep", "10"]}}}
    assert c["readinessProbe"]["periodSeconds"] == 3
    assert c["livenessProbe"]["periodSeconds"] == 15
    assert c["startupProbe"]["failureThreshold"] == 30
    # The defaults: no startup probe, the preStop sleep.
    default = gateway_container(gateway_objects(render(helm_env, None))[0])
    assert "startupProbe" not in default and "envFrom" not in default
    assert default["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]


# Where the metric names the default alerts use must be exported (string literals in code).
METRIC_SOURCES = [
    "gateway/src",
    "gateway/tail-router/src",
    "config/runtime/src",
    "control-plane/src",
]


def exported_metric_names() -> set[str]:
    names: set[str] = set()
    for root in METRIC_SOURCES:
        for f in (REPO_ROOT / root).rglob("*.rs"):
            names.update(re.findall(r'"((?:otelcol|weir)_[a-z0-9_]+)"', f.read_text()))
    return names


def test_monitoring_objects(helm_env):
    docs = render(helm_env, ci_values("monitoring"))
    services = by_kind(docs, "Service")
    monitors = {component(m): m for m in by_kind(docs, "ServiceMonitor")}
    assert set(monitors) == {"gateway", "tail-router", "control-plane"}, set(monitors)
    for comp, port in (("gateway", "metrics"), ("tail-router", "admin"), ("control-plane", "api")):
        m = monitors[comp]
        assert m["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert m["spec"]["sampleLimit"] == 50000
        (ep,) = m["spec"]["endpoints"]
        assert ep["port"] == port and ep["interval"] == "15s"
        assert ep["relabelings"][0]["targetLabel"] == "node"
        assert ep["metricRelabelings"][0]["action"] == "drop"
    # The control plane's monitor leaves out its StatefulSet's headless Service (one scrape
    # per pod): only the Service without the headless label matches.
    cp = monitors["control-plane"]["spec"]["selector"]
    cp_services = [
        s
        for s in services
        if selects(cp["matchLabels"], s["metadata"]["labels"])
        and "weir.dev/headless" not in s["metadata"]["labels"]
    ]
    assert cp["matchExpressions"] == [{"key": "weir.dev/headless", "operator": "DoesNotExist"}]
    assert len(cp_services) == 1 and cp_services[0]["spec"].get("clusterIP") != "None"

    pods = {component(m): m for m in by_kind(docs, "PodMonitor")}
    assert set(pods) == {"gateway", "tail-router", "control-plane"}
    workloads = [d for d in docs if d["kind"] in WORKLOAD_KINDS]
    for comp, m in pods.items():
        (ep,) = m["spec"]["podMetricsEndpoints"]
        assert ep["path"] == "/metrics" and ep["metricRelabelings"][0]["action"] == "keep"
        (w,) = [w for w in workloads if component(w) == comp]
        pod_labels = w["spec"]["template"]["metadata"]["labels"]
        assert selects(m["spec"]["selector"]["matchLabels"], pod_labels)
        declared = {p["name"] for c in pod_spec(w)["containers"] for p in c.get("ports", [])}
        assert ep["port"] in declared, f"PodMonitor {comp}: no container port {ep['port']}"

    (rule,) = by_kind(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    groups = {g["name"]: g for g in rule["spec"]["groups"]}
    assert set(groups) == {"weir", "weir-custom"}
    alerts = {r["alert"]: r for r in groups["weir"]["rules"]}
    assert set(alerts) == {
        "WeirGatewayRefusedSpans",
        "WeirGatewayExportFailures",
        "WeirGatewayKafkaDown",
        "WeirGatewayPolicyRefused",
        "WeirRolloutNacked",
        "WeirTailRouterLag",
    }, set(alerts)
    exported = exported_metric_names()
    for name, r in alerts.items():
        assert r["labels"]["team"] == "observability", name
        assert r["annotations"]["runbook_url"] == "https://runbooks.example.com/weir", name
        used = set(re.findall(r"\b((?:otelcol|weir)_[a-z0-9_]+)\b", r["expr"]))
        assert used, f"{name}: no Weir metric in {r['expr']}"
        assert used <= exported, f"{name} uses metrics nothing exports: {used - exported}"
        assert f'namespace="{NAMESPACE}"' in r["expr"], f"{name} is not scoped to the release"
    assert alerts["WeirTailRouterLag"]["expr"].endswith("> 500000")
    assert "otelcol_receiver_refused_spans" in alerts["WeirGatewayRefusedSpans"]["expr"]
    assert "otelcol_exporter_send_failed_spans" in alerts["WeirGatewayExportFailures"]["expr"]

    (dash,) = [d for d in by_kind(docs, "ConfigMap") if "weir-gateway.json" in d.get("data", {})]
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dash["metadata"]["annotations"] == {"grafana_folder": "Weir"}
    shipped = json.loads((REPO_ROOT / "docs" / "grafana" / "weir-gateway.json").read_text())
    assert json.loads(dash["data"]["weir-gateway.json"]) == shipped


def test_the_charts_dashboard_is_the_documented_one():
    """helm reads files inside the chart only: helm/weir/dashboards/ holds a copy of
    docs/grafana/weir-gateway.json, which must not drift from it."""
    copy = CHART / "dashboards" / "weir-gateway.json"
    assert copy.read_bytes() == (REPO_ROOT / "docs" / "grafana" / "weir-gateway.json").read_bytes()


def test_default_alerts_follow_the_components_enabled(helm_env, tmp_path):
    values = tmp_path / "rules.yaml"
    values.write_text(
        "prometheusRule:\n  enabled: true\ntailRouter:\n  enabled: false\n"
        "controlPlane:\n  enabled: false\n"
    )
    (rule,) = by_kind(render(helm_env, values), "PrometheusRule")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "WeirTailRouterLag" not in alerts and "WeirRolloutNacked" not in alerts
    assert "WeirGatewayKafkaDown" in alerts
