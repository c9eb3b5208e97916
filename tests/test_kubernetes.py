"""The Kubernetes manifests (deploy/kubernetes/) against the Kubernetes API schemas, and against the server.

kubernetes-validate ships the schemas of every Kubernetes release (no network); each object is checked in
strict mode (unknown fields are errors) for the oldest release the manifests claim and the newest known.
The kustomization is rendered with `kubectl kustomize` where kubectl is installed; everywhere its resource
list is checked against the files. Then what a schema cannot see: the pieces name each other correctly,
the environment variables are real server settings, and the termination budget covers the drain.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

kubernetes_validate = pytest.importorskip("kubernetes_validate")
yaml = pytest.importorskip("yaml")

from server.config import Settings  # noqa: E402
from server.process import running_server  # noqa: E402

BASE = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
EXTRAS = BASE / "extras"
VERSIONS = ["1.30", kubernetes_validate.latest_version()]  # preStop's sleep action is on by default from 1.30


def load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def objects() -> dict[str, dict]:
    """The base's objects by kind (one of each), read from the kustomization's resource files."""
    out = {}
    for name in load(BASE / "kustomization.yaml")[0]["resources"]:
        for obj in load(BASE / name):
            assert obj["kind"] not in out, f"two {obj['kind']} objects"
            out[obj["kind"]] = obj
    return out


def manifest_files() -> list[Path]:
    """Every file of Kubernetes objects: the base's, and the alternative autoscaler."""
    return sorted(p for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml") + [
        EXTRAS / "hpa-custom-metrics.yaml"
    ]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.relative_to(BASE).as_posix())
def test_schema(path, version):
    for obj in load(path):
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{path.name}: {obj['kind']} at {'.'.join(map(str, e.path))}: {e.message}")


def test_kustomization_lists_every_base_file():
    kustomization = load(BASE / "kustomization.yaml")[0]
    assert kustomization["kind"] == "Kustomization"
    # nothing that transforms the objects: what the files say is what is applied
    assert set(kustomization) == {"apiVersion", "kind", "resources"}
    files = sorted(p.name for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files
    assert set(objects()) == {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_the_files():
    r = subprocess.run(["kubectl", "kustomize", str(BASE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rendered = {obj["kind"]: obj for obj in yaml.safe_load_all(r.stdout) if obj}
    assert rendered == objects()
    for obj in rendered.values():
        kubernetes_validate.validate(obj, VERSIONS[-1], strict=True)


def container() -> dict:
    (c,) = objects()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


def env() -> dict[str, str]:
    return {e["name"]: e["value"] for e in container()["env"]}


def test_env_names_are_server_settings():
    """The server ignores unknown TINYLLM_* variables, so a misspelt one would silently do nothing."""
    for name in env():
        assert name.startswith("TINYLLM_") and name[8:].lower() in Settings.model_fields, f"{name}: no such setting"


def test_the_pieces_name_each_other():
    o = objects()
    pod_labels = o["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert o["Deployment"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert o["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert o["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    target = o["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", o["Deployment"]["metadata"]["name"])

    (port,) = container()["ports"]
    assert port["containerPort"] == Settings.model_fields["port"].default  # the image serves on 8000
    assert o["Service"]["spec"]["ports"][0]["targetPort"] == port["name"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container()[probe]["httpGet"] == {"path": "/health", "port": port["name"]}, probe


def test_termination_budget_covers_the_drain():
    """preStop's sleep, then the server's grace period for in-flight requests, then time to exit: all before
    the kubelet's SIGKILL at terminationGracePeriodSeconds."""
    pod = objects()["Deployment"]["spec"]["template"]["spec"]
    pre_stop = container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = float(env()["TINYLLM_SHUTDOWN_GRACE"])
    assert pre_stop >= 3, "endpoint removal needs a few seconds to reach every node's proxy"
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + grace + 3


def test_scaling_fits_the_disruption_budget_and_requests():
    o = objects()
    hpa, pdb = o["HorizontalPodAutoscaler"]["spec"], o["PodDisruptionBudget"]["spec"]
    assert hpa["minReplicas"] >= 2 and pdb["maxUnavailable"] == 1, "one replica left while another is evicted"
    assert o["Deployment"]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    requests = container()["resources"]["requests"]
    assert "cpu" in requests, "a CPU utilization target is a share of the CPU request"
    assert env()["TINYLLM_THREADS"] == requests["cpu"], "torch's threads should match the CPUs requested"


def test_a_server_with_the_pods_settings_serves_what_the_probes_and_autoscaler_read(tiny_checkpoint):
    """A real server, configured with the Deployment's environment: /health answers, and /metrics exports
    the gauges the custom-metrics autoscaler (extras/hpa-custom-metrics.yaml) scales on."""
    (hpa,) = load(EXTRAS / "hpa-custom-metrics.yaml")
    assert hpa["metadata"]["name"] == objects()["HorizontalPodAutoscaler"]["metadata"]["name"], (
        "it replaces the CPU one: same name"
    )
    names = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    assert names == {"tinyllm_queue_length", "tinyllm_active_sequences"}
    adapter = load(EXTRAS / "prometheus-adapter-values.yaml")[0]["rules"]["custom"]
    assert {rule["seriesQuery"].split("{")[0] for rule in adapter} == names, "the adapter serves what the HPA reads"
    with running_server(tiny_checkpoint, env=env()) as server:
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200
        exported = {
            line.split()[0].split("{")[0]
            for line in httpx.get(server.url + "/metrics", timeout=10).text.splitlines()
            if line and not line.startswith("#")
        }
    assert names <= exported, f"not exported: {names - exported}"
