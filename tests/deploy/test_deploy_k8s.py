"""Kubernetes manifests: schema-valid (kubernetes-validate, strict), CRDs structurally sound, and
consistent with each other, the image and the server's settings."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mipic.service.server import SHUTDOWN_MARGIN_S
from mipic.service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.30"  # oldest minor the manifests target; autoscaling/v2 and policy/v1 are GA well before
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
PRESTOP_SLEEP_S = 5

kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (dev extra)")


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def _by_name(kind: str, name: str) -> dict[str, Any]:
    for path in _manifest_files():
        for doc in _docs(path):
            if doc["kind"] == kind and doc["metadata"]["name"] == name and path.parent == K8S:
                return doc
    raise AssertionError(f"no {kind}/{name} in {K8S}")


def _validate(doc: dict[str, Any], where: str) -> None:
    try:
        kv.validate(doc, K8S_VERSION, strict=True)
    except kv.ValidationError as e:
        path = "/".join(str(p) for p in e.path)
        raise AssertionError(f"{where}: {doc['kind']}/{doc['metadata']['name']} invalid at {path}: {e.message}") from e


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_validates(path: Path) -> None:
    docs = _docs(path)
    assert docs
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            continue  # no upstream schema: checked structurally below
        _validate(doc, path.name)


def test_kustomization_lists_existing_core_resources() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    for res in resources:
        assert (K8S / res).is_file(), res
    kinds = {doc["kind"] for res in resources for doc in _docs(K8S / res)}
    assert kinds == {"PersistentVolumeClaim", "Deployment", "Service", "HorizontalPodAutoscaler",
                     "PodDisruptionBudget"}
    # Optional pieces stay out of the base: CRDs may be absent, the GPU needs special nodes.
    assert not {"servicemonitor.yaml", "prometheusrule.yaml", "deployment-gpu.yaml"} & set(resources)


def test_kustomize_build_validates() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: `kubectl kustomize` not checked")
    res = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    docs = [d for d in yaml.safe_load_all(res.stdout) if d]
    assert len(docs) == 5
    for doc in docs:
        _validate(doc, "kustomize build")
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "mipic"


def _pod_spec(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = _by_name("Deployment", name)["spec"]["template"]["spec"]
    return spec


def _container(name: str) -> dict[str, Any]:
    (container,) = [c for c in _pod_spec(name)["containers"] if c["name"] == "mipic"]
    return container


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize("deployment", ["mipic", "mipic-gpu"])
def test_probes_and_shutdown_budget(deployment: str) -> None:
    pod = _pod_spec(deployment)
    c = _container(deployment)
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] == "/health"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60, "time to load and warm the model"
    assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in c["ports"]

    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRESTOP_SLEEP_S)]
    drain = float(_env(c)["MIPIC_DRAIN_TIMEOUT_S"])
    assert drain == Settings.model_fields["drain_timeout_s"].default
    # The grace period starts with preStop; SIGTERM follows it, and the server exits within the drain
    # timeout plus its stated shutdown margin (measured in tests/integration/test_drain.py).
    assert pod["terminationGracePeriodSeconds"] >= PRESTOP_SLEEP_S + drain + SHUTDOWN_MARGIN_S
    # ... and not wastefully longer: a stuck pod is killed within a few seconds of that budget
    assert pod["terminationGracePeriodSeconds"] <= PRESTOP_SLEEP_S + drain + SHUTDOWN_MARGIN_S + 10
    # the header comment states the same budget
    head = (K8S / ("deployment.yaml" if deployment == "mipic" else "deployment-gpu.yaml")).read_text()
    assert f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']}" in head


@pytest.mark.parametrize("deployment", ["mipic", "mipic-gpu"])
def test_pod_security_and_settings(deployment: str) -> None:
    pod = _pod_spec(deployment)
    sc = pod["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001 and sc["runAsGroup"] == 10001
    assert pod["enableServiceLinks"] is False, "Service env vars (MIPIC_PORT=tcp://...) clash with settings"
    assert pod["automountServiceAccountToken"] is False
    for c in [*pod.get("initContainers", []), *pod["containers"]]:
        csc = c["securityContext"]
        assert csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False
        assert csc["capabilities"]["drop"] == ["ALL"]
        assert c["resources"]["requests"] and c["resources"]["limits"]
    c = _container(deployment)
    env = _env(c)
    assert env["MIPIC_BOOTSTRAP_DEFAULT"] == "false"
    # Every MIPIC_ variable must be a real setting, with a value the settings class accepts.
    fields = {f"MIPIC_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    plain = {k[len("MIPIC_"):].lower(): v for k, v in env.items() if isinstance(v, str)}
    Settings(**plain)
    for ref in (v for v in env.values() if isinstance(v, dict)):
        assert ref["secretKeyRef"]["optional"] is True
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/models"].get("readOnly") is True and "/tmp" in mounts
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]["claimName"] == "mipic-models"
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]


def test_cpu_threads_match_cpu_limit() -> None:
    c = _container("mipic")
    assert int(_env(c)["MIPIC_INTRA_OP_THREADS"]) == int(c["resources"]["limits"]["cpu"])


def test_gpu_variant() -> None:
    c = _container("mipic-gpu")
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert _env(c)["MIPIC_PROVIDER"] == "auto"
    assert c["image"].startswith("mipic-gpu:")
    assert any(t["key"] == "nvidia.com/gpu" for t in _pod_spec("mipic-gpu")["tolerations"])


def test_seed_init_container_writes_the_models_the_server_reads() -> None:
    for deployment in ("mipic", "mipic-gpu"):
        (init,) = _pod_spec(deployment)["initContainers"]
        assert init["image"] == _container(deployment)["image"]
        script = init["command"][-1]
        assert "repo=/pvc/all-minilm-l6-v2" in script and '"$repo/CURRENT"' in script
        assert {"name": "models", "mountPath": "/pvc"} in init["volumeMounts"]


@pytest.mark.parametrize("deployment", ["mipic", "mipic-gpu"])
def test_seed_script_runs_concurrently_and_idempotently(deployment: str, tmp_path: Path) -> None:
    """Run the init container's script for real (image paths redirected into tmp_path): replicas
    starting together leave one complete version and a pointer, and a second run changes nothing."""
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no sh")
    image_repo = tmp_path / "image" / "all-minilm-l6-v2"
    (image_repo / "1").mkdir(parents=True)
    (image_repo / "1" / "manifest.json").write_text("{}")
    (image_repo / "1" / "embeddings.onnx").write_bytes(b"x" * 4096)
    (image_repo / "CURRENT").write_text("1\n")
    (image_repo / "HISTORY").write_text("1\n")
    pvc = tmp_path / "pvc"
    pvc.mkdir()
    (init,) = _pod_spec(deployment)["initContainers"]
    script = init["command"][-1].replace("/pvc", str(pvc)).replace("/models/", f"{tmp_path / 'image'}/")
    assert init["command"][:2] == ["sh", "-ceu"]

    procs = [subprocess.Popen([sh, "-ceu", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(4)]
    outputs = [p.communicate(timeout=30)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    repo = pvc / "all-minilm-l6-v2"
    assert sorted(p.name for p in repo.iterdir()) == ["1", "CURRENT", "HISTORY"], "no temp dirs left behind"
    assert (repo / "CURRENT").read_text() == "1\n" and (repo / "1" / "embeddings.onnx").stat().st_size == 4096

    (repo / "CURRENT").write_text("2\n")  # a later promotion must survive a pod restart
    again = subprocess.run([sh, "-ceu", script], capture_output=True, text=True, timeout=30, check=True)
    assert "already seeded" in again.stdout and (repo / "CURRENT").read_text() == "2\n"


def test_selectors_line_up() -> None:
    service = _by_name("Service", "mipic")
    pdb = _by_name("PodDisruptionBudget", "mipic")
    for deployment in ("mipic", "mipic-gpu"):
        dep = _by_name("Deployment", deployment)
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert service["spec"]["selector"].items() <= pod_labels.items(), "the Service routes to both variants"
    cpu_labels = _by_name("Deployment", "mipic")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= cpu_labels.items()
    gpu_selector = _by_name("Deployment", "mipic-gpu")["spec"]["selector"]["matchLabels"]
    assert not gpu_selector.items() <= cpu_labels.items(), "Deployments must not select each other's pods"
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_autoscalers() -> None:
    hpa = _by_name("HorizontalPodAutoscaler", "mipic")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mipic"}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"] == ["cpu"]
    pdb = _by_name("PodDisruptionBudget", "mipic")
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]
    (example,) = _docs(K8S / "examples" / "hpa-queue-depth.yaml")
    pods_metrics = [m["pods"] for m in example["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods_metrics[0]["metric"]["name"] == "mipic_queue_depth"
    assert pods_metrics[0]["target"]["type"] == "AverageValue"
    assert int(pods_metrics[0]["target"]["averageValue"]) < Settings.model_fields["max_queue_size"].default


def test_pvc_is_shared() -> None:
    pvc = _by_name("PersistentVolumeClaim", "mipic-models")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert re.fullmatch(r"\d+[GM]i", pvc["spec"]["resources"]["requests"]["storage"])


def test_service_monitor_structure() -> None:
    sm = _by_name("ServiceMonitor", "mipic")
    service = _by_name("Service", "mipic")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm) == {"apiVersion", "kind", "metadata", "spec"}
    assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"
    assert re.fullmatch(r"\d+[sm]", endpoint["interval"]) and re.fullmatch(r"\d+[sm]", endpoint["scrapeTimeout"])
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels",
                             "relabelings", "metricRelabelings"}


def test_prometheus_rule_structure() -> None:
    rule = _by_name("PrometheusRule", "mipic")
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"} and set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert set(group) == {"name", "rules"}
        for r in group["rules"]:
            assert ("alert" in r) != ("record" in r) and isinstance(r["expr"], str)
            assert set(r) <= {"alert", "record", "expr", "for", "labels", "annotations"}
