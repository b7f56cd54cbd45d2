"""deploy/kubernetes/: the manifests pass kubernetes-validate (offline, strict), the
config in each ConfigMap passes ``callcov-sidecar check-config`` with the environment
the Deployment gives the container, and ports, probes, grace periods, Secrets,
Services and the ingress-nginx annotations agree with that config. No cluster here:
what a cluster would reject or misroute is checked the way a linter would."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from sidecar.config.loading import load
from sidecar.config.model import Config, ConfigError

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "kubernetes"
IN_POD, SHARED = "sidecar-in-pod.yaml", "shared-sidecar.yaml"
INGRESS = "ingress-nginx-forward-auth.yaml"
# preStop `sleep` is beta (on by default) from Kubernetes 1.30: the oldest version we claim.
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
SIDECAR = "callcov-sidecar"
# A Secret's redis-url must still parse as a Redis URL.
SECRET_STAND_INS = {"redis-url": "redis://redis.example.internal:6379/0"}
AUTH_URL = "nginx.ingress.kubernetes.io/auth-url"
RESPONSE_HEADERS = "nginx.ingress.kubernetes.io/auth-response-headers"


def documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc]


def resource(name: str, kind: str, resource_name: str | None = None) -> dict[str, Any]:
    found = [
        doc for doc in documents(name)
        if doc["kind"] == kind and resource_name in (None, doc["metadata"]["name"])
    ]  # fmt: skip
    assert len(found) == 1, f"{name}: {len(found)} {kind} {resource_name or ''}"
    return found[0]


def pod_spec(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = resource(name, "Deployment")["spec"]["template"]["spec"]
    return spec


def sidecar_container(name: str) -> dict[str, Any]:
    [container] = [c for c in pod_spec(name)["containers"] if c["name"] == SIDECAR]
    return container


def named_ports(container: dict[str, Any]) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container["ports"]}


def container_env(name: str) -> dict[str, str]:
    """The sidecar container's environment; a value from a Secret becomes a stand-in."""
    env = {}
    for var in sidecar_container(name)["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = SECRET_STAND_INS.get(
                ref["key"], f"from-secret-{ref['name']}-{ref['key']}-0123456789abcdef0123"
            )
    return env


def config_text(name: str) -> tuple[str, str]:
    """(path in the container, text) of the config the sidecar container reads."""
    path = PurePosixPath(container_env(name)["SIDECAR_CONFIG"])
    container = sidecar_container(name)
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent)]
    assert mount.get("readOnly") is True
    [volume] = [v for v in pod_spec(name)["volumes"] if v["name"] == mount["name"]]
    config_map = resource(name, "ConfigMap", volume["configMap"]["name"])
    return str(path), config_map["data"][path.name]


def sidecar_config(name: str, tmp_path: Path) -> Config:
    file = tmp_path / "sidecar.yaml"
    file.write_text(config_text(name)[1])
    return load(file, container_env(name))


def check_config(file: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "--config", str(file), "check-config"],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


WITH_SIDECAR = [IN_POD, SHARED]


# --- kubernetes-validate ---------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", [IN_POD, SHARED, INGRESS])
def test_the_manifests_pass_kubernetes_validate_strictly(name: str, version: str) -> None:
    for doc in documents(name):
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize(
    "break_it",
    [
        lambda pod: pod["containers"][-1]["livenessProbe"].update(timeoutSecond=3),  # a typo
        lambda pod: pod.update(terminationGracePeriodSeconds="45s"),  # a wrong type
        lambda pod: pod["containers"][-1].pop("name"),  # a required field
    ],
)
def test_kubernetes_validate_rejects_a_broken_manifest(break_it: Any) -> None:
    # The validator really runs here (offline, with its bundled schemas).
    deployment = copy.deepcopy(resource(SHARED, "Deployment"))
    break_it(deployment["spec"]["template"]["spec"])
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


def test_ci_validates_every_manifest() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "kubernetes-validate --strict" in ci and "deploy/kubernetes/*.yaml" in ci


# --- the config in the ConfigMap -----------------------------------------------------


@pytest.mark.parametrize("name", WITH_SIDECAR)
def test_the_configmap_config_passes_check_config(name: str, tmp_path: Path) -> None:
    _, text = config_text(name)
    file = tmp_path / "sidecar.yaml"
    file.write_text(text)
    result = check_config(file, container_env(name))
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["redis"]["url"] == SECRET_STAND_INS["redis-url"]
    assert "from-secret" not in result.stdout  # secrets masked

    # Every ${VAR} the file needs comes from the container's env: drop one, it fails.
    needed = set(re.findall(r"\$\{([A-Z_]+)\}", text))
    assert needed and needed <= set(container_env(name))
    without = {k: v for k, v in container_env(name).items() if k != "CALLCOV_JWT_SECRET"}
    failed = check_config(file, without)
    assert failed.returncode == 2 and "auth.jwt.secret" in failed.stderr


@pytest.mark.parametrize("name", WITH_SIDECAR)
def test_the_config_is_mounted_where_the_image_reads_it(name: str) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    path, _ = config_text(name)
    assert f"SIDECAR_CONFIG={path}" in dockerfile


@pytest.mark.parametrize("name", WITH_SIDECAR)
def test_secrets_come_from_the_secret_the_header_says_to_create(name: str) -> None:
    header = (MANIFESTS / name).read_text()
    refs = [
        v["valueFrom"]["secretKeyRef"] for v in sidecar_container(name)["env"] if "valueFrom" in v
    ]
    assert {ref["name"] for ref in refs} == {SIDECAR}
    assert f"create secret generic {SIDECAR}" in header
    for ref in refs:
        assert f"--from-literal={ref['key']}=" in header
    assert not [doc for doc in documents(name) if doc["kind"] == "Secret"]  # no placeholders


# --- the pod: ports, probes, shutdown, privileges --------------------------------------


@pytest.mark.parametrize("name", WITH_SIDECAR)
def test_container_ports_are_the_configured_listeners(name: str, tmp_path: Path) -> None:
    config, ports = sidecar_config(name, tmp_path), named_ports(sidecar_container(name))
    assert ports["http"] == config.server.port and ports["admin"] == config.admin.port
    assert config.server.host == config.admin.host == "0.0.0.0"  # the pod IP
    if config.forward_auth.enabled:
        assert ports["forward-auth"] == config.forward_auth.port
    else:
        assert "forward-auth" not in ports


@pytest.mark.parametrize("name", WITH_SIDECAR)
def test_probes_use_the_admin_listener(name: str) -> None:
    container = sidecar_container(name)
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        spec = container[probe]
        assert spec["httpGet"] == {"path": path, "port": "admin"}
        assert spec["timeoutSeconds"] >= 3  # /readyz may take up to 2 s


@pytest.mark.parametrize("name", WITH_SIDECAR)
def test_the_grace_period_covers_prestop_and_the_drain(name: str, tmp_path: Path) -> None:
    config = sidecar_config(name, tmp_path)
    pre_stop = sidecar_container(name)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= 1
    grace = pod_spec(name)["terminationGracePeriodSeconds"]
    assert grace > pre_stop + config.server.graceful_timeout_seconds


def test_the_backend_in_the_pod_outlives_the_sidecars_drain(tmp_path: Path) -> None:
    config = sidecar_config(IN_POD, tmp_path)
    [backend] = [c for c in pod_spec(IN_POD)["containers"] if c["name"] != SIDECAR]
    backend_wait = backend["lifecycle"]["preStop"]["sleep"]["seconds"]
    sidecar_wait = sidecar_container(IN_POD)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert backend_wait >= sidecar_wait + config.server.graceful_timeout_seconds
    assert pod_spec(IN_POD)["terminationGracePeriodSeconds"] > backend_wait


@pytest.mark.parametrize("name", WITH_SIDECAR)
def test_the_sidecar_runs_unprivileged_on_a_read_only_root(name: str) -> None:
    [user] = re.findall(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.M)
    security = sidecar_container(name)["securityContext"]
    assert (str(security["runAsUser"]), str(security["runAsGroup"])) == user
    assert security["runAsNonRoot"] and not security["allowPrivilegeEscalation"]
    assert security["readOnlyRootFilesystem"] and security["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"] for m in sidecar_container(name)["volumeMounts"]}
    assert "/tmp" in mounts  # tempfile's directory (workers' metrics) on a read-only root


@pytest.mark.parametrize("name", WITH_SIDECAR)
def test_selectors_match_the_pods_and_the_service_targets_the_sidecar(name: str) -> None:
    deployment, service = resource(name, "Deployment"), resource(name, "Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    ports = named_ports(sidecar_container(name))
    targets = {port["targetPort"] for port in service["spec"]["ports"]}
    assert "http" in targets and targets <= set(ports) - {"admin"}


def test_in_the_pod_the_upstream_is_the_backend_on_loopback(tmp_path: Path) -> None:
    upstream = urlsplit(sidecar_config(IN_POD, tmp_path).upstream.url)
    assert upstream.hostname == "127.0.0.1" and upstream.port
    assert len(pod_spec(IN_POD)["containers"]) == 2  # the backend and the sidecar
    assert f"127.0.0.1:{upstream.port}" in (MANIFESTS / IN_POD).read_text().split("---")[1]


# --- the shared sidecar and the ingress-nginx forward-auth shape -------------------


def test_the_decision_port_is_open_only_to_the_ingress_controller(tmp_path: Path) -> None:
    config = sidecar_config(SHARED, tmp_path)
    assert config.forward_auth.enabled and config.forward_auth.host == "0.0.0.0"
    policy = resource(SHARED, "NetworkPolicy", SIDECAR)
    open_ports = {p["port"] for rule in policy["spec"]["ingress"] if "from" not in rule
                  for p in rule["ports"]}  # fmt: skip
    assert "forward-auth" not in open_ports
    [restricted] = [rule for rule in policy["spec"]["ingress"] if "from" in rule]
    assert restricted["ports"] == [{"port": "forward-auth"}]
    [peer] = restricted["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "ingress-nginx"
    }


def test_the_ingress_asks_the_shared_sidecars_forward_auth_listener() -> None:
    ingress = resource(INGRESS, "Ingress", "callcov-backend")
    url = urlsplit(ingress["metadata"]["annotations"][AUTH_URL])
    service = resource(SHARED, "Service", SIDECAR)
    namespace = service["metadata"]["namespace"]
    assert url.scheme == "http" and url.hostname == f"{SIDECAR}.{namespace}.svc.cluster.local"
    [port] = [p for p in service["spec"]["ports"] if p["port"] == url.port]
    assert port["targetPort"] == "forward-auth"
    assert ingress["metadata"]["namespace"] == namespace


def test_the_ingress_copies_the_identity_headers_and_caches_nothing(tmp_path: Path) -> None:
    config = sidecar_config(SHARED, tmp_path)
    annotations = resource(INGRESS, "Ingress", "callcov-backend")["metadata"]["annotations"]
    copied = annotations[RESPONSE_HEADERS].split(",")
    headers = config.identity.headers
    expected = {
        headers.user_id, headers.auth_method, headers.key_id, headers.environment,
        config.identity.assertion.header,  # stripped from what a client sends, even when off
    }  # fmt: skip
    assert expected <= set(copied)
    # The docs show this very manifest (included, not pasted).
    page = (ROOT / "docs" / "deployment" / "kubernetes.md").read_text()
    assert f'--8<-- "deploy/kubernetes/{INGRESS}"' in page
    # Decision caching off on both sides; the file says what turning it on costs.
    assert config.forward_auth.cache_seconds == 0
    assert not [name for name in annotations if name.startswith(AUTH_URL.replace("url", "cache"))]
    text = (MANIFESTS / INGRESS).read_text()
    assert "auth-cache-key" in text and "revocation bound" in text


def test_the_ingress_routes_to_the_sidecars_upstream_and_keys_to_the_sidecar(
    tmp_path: Path,
) -> None:
    upstream = urlsplit(sidecar_config(SHARED, tmp_path).upstream.url)
    [backend] = resource(INGRESS, "Ingress", "callcov-backend")["spec"]["rules"][0]["http"]["paths"]
    service = backend["backend"]["service"]
    assert (service["name"], service["port"]["number"]) == (upstream.hostname, upstream.port)
    # Key management is never allowed through a decision: it goes to the API port.
    keys = resource(INGRESS, "Ingress", "callcov-api-keys")
    assert AUTH_URL not in keys["metadata"].get("annotations", {})
    [route] = keys["spec"]["rules"][0]["http"]["paths"]
    assert route["path"] == "/api/v1/api-keys" and route["pathType"] == "Prefix"
    assert route["backend"]["service"] == {"name": SIDECAR, "port": {"name": "http"}}


def test_the_backend_is_reachable_only_through_the_sidecar_or_the_ingress() -> None:
    for name, policy_name in ((SHARED, "callcov-backend-via-sidecar"),
                              (INGRESS, "callcov-backend-via-ingress")):  # fmt: skip
        policy = resource(name, "NetworkPolicy", policy_name)
        assert policy["spec"]["podSelector"]["matchLabels"] == {
            "app.kubernetes.io/name": "callcov-backend"
        }
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        assert all("from" in rule for rule in policy["spec"]["ingress"])


def test_check_config_rejects_a_configmap_with_a_bad_key(tmp_path: Path) -> None:
    # The check above is not vacuous: the same path refuses a typo in the ConfigMap.
    file = tmp_path / "sidecar.yaml"
    file.write_text(config_text(SHARED)[1].replace("cache_seconds:", "cache_second:"))
    with pytest.raises(ConfigError, match=r"forward_auth\.cache_second"):
        load(file, container_env(SHARED))


def test_the_docs_include_the_manifests() -> None:
    page = (ROOT / "docs" / "deployment" / "kubernetes.md").read_text()
    for name in (IN_POD, SHARED, INGRESS):
        assert f'--8<-- "deploy/kubernetes/{name}"' in page


def test_the_ingress_sets_every_header_the_decision_reads(tmp_path: Path) -> None:
    """ingress-nginx always sets X-Original-URL and X-Original-Method on the decision
    request, but X-Original-URI only with `auth-method`: without it a client's own
    X-Original-URI would reach the sidecar (issue 24 row 1). Connections are kept alive."""
    assert sidecar_config(SHARED, tmp_path).forward_auth.dialect == "nginx"
    annotations = resource(INGRESS, "Ingress", "callcov-backend")["metadata"]["annotations"]
    prefix = AUTH_URL.removesuffix("url")
    assert annotations[prefix + "method"] == "GET"
    assert int(annotations[prefix + "keepalive"]) > 0
    assert int(annotations[prefix + "keepalive-timeout"]) < 5  # the sidecar closes idle at 5 s
