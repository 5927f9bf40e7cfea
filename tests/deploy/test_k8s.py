"""deploy/k8s/: every manifest validates against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: an
unknown field is an error), and the workloads have what a drain-before-stop fleet needs: probes, a preStop hook
that does not cut the drain short, a grace period longer than the drain, a PDB each, one image, non-root
pods, a regions ConfigMap that names exactly the media pods, and commands the real CLI accepts."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from core.regions import parse_regions
from tests.deploy.support import (
    DEPLOY,
    IMAGE_REPOSITORY,
    K8S,
    SERVICE_PORTS,
    classmesh_command,
    command_help,
    flags_in,
    load_yaml,
    load_yaml_all,
    project_version,
    run_cli,
)

try:  # in the dev extra; the schema tests say so, rather than the whole module failing to import, if it is missing
    import kubernetes_validate
except ImportError:  # pragma: no cover - depends on the environment
    kubernetes_validate = None

# The oldest Kubernetes the manifests support and the newest schema the validator bundles.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version() if kubernetes_validate else "latest")
NAMESPACE = "classmesh"
REGIONS = ("eu-central", "us-east", "ap-southeast", "sa-east")
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
NOT_APPLIED = {"secrets.example.yaml", "kustomization.yaml"}

Doc = dict[str, Any]


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _all_docs() -> list[tuple[str, Doc]]:
    return [(path.name, doc) for path in _manifest_files() for doc in load_yaml_all(path)]


def _doc_id(item: tuple[str, Doc]) -> str:
    return f"{item[0]}:{item[1]['kind']}/{item[1]['metadata']['name']}"


ALL_DOCS = _all_docs()
APPLIED = [(f, d) for f, d in ALL_DOCS if f not in NOT_APPLIED]
WORKLOADS = [d for _, d in APPLIED if d["kind"] in WORKLOAD_KINDS]


def _containers(workload: Doc) -> list[Doc]:
    containers: list[Doc] = workload["spec"]["template"]["spec"]["containers"]
    return containers


def _env(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def _env_value(container: Doc, name: str) -> str:
    value = _env(container)[name].get("value")
    assert value is not None, f"{name} must be a literal value"
    return str(value)


def _by_kind(kind: str) -> list[Doc]:
    return [d for _, d in APPLIED if d["kind"] == kind]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _config_env() -> dict[str, str]:
    (config,) = [d for d in _by_kind("ConfigMap") if d["metadata"]["name"] == "classmesh-config"]
    return {str(k): str(v) for k, v in config["data"].items()}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("item", ALL_DOCS, ids=_doc_id)
def test_manifest_validates_against_the_kubernetes_schema(item: tuple[str, Doc], version: str) -> None:
    validator = _validator()
    validator.validate(item[1], version, strict=True)


def _validator() -> Any:
    if kubernetes_validate is None:
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate; it is in the dev extra)")
    return kubernetes_validate


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readinesProbe={}),
        lambda d: d["spec"].update(replicas="two"),
        lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(containerPort="http"),
    ],
    ids=["misspelt-field", "wrong-type", "port-name-for-number"],
)
def test_schema_validation_rejects_broken_manifests(mutate: Any) -> None:
    validator = _validator()
    broken = copy.deepcopy(next(d for d in WORKLOADS if d["metadata"]["name"] == "orchestrator"))
    mutate(broken)
    with pytest.raises(validator.ValidationError):
        validator.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_everything_lives_in_the_classmesh_namespace() -> None:
    for file, doc in ALL_DOCS:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == NAMESPACE
        else:
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{file}: {doc['metadata']['name']}"


def test_kustomization_applies_every_manifest_but_the_secret_placeholders() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(p.name for p in _manifest_files() if p.name not in NOT_APPLIED)
    assert kustomization["namespace"] == NAMESPACE


def test_kubectl_kustomize_renders_the_same_objects() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the offline `kubectl kustomize` render is optional)")
    done = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    import yaml

    rendered = sorted((d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(done.stdout) if d)
    assert rendered == sorted((d["kind"], d["metadata"]["name"]) for _, d in APPLIED)


def test_one_image_everywhere_and_it_is_this_version() -> None:
    images = {c["image"] for w in WORKLOADS for c in _containers(w)}
    assert images == {f"{IMAGE_REPOSITORY}:{project_version()}"}
    compose = load_yaml(DEPLOY / "compose.yaml")
    assert compose["x-classmesh"]["image"] == f"{IMAGE_REPOSITORY}:${{CLASSMESH_VERSION:-{project_version()}}}"


@pytest.mark.parametrize("workload", WORKLOADS, ids=lambda w: w["metadata"]["name"])
def test_workload_has_probes_on_the_port_it_listens_on(workload: Doc) -> None:
    for container in _containers(workload):
        port = int(_env_value(container, "CLASSMESH_PORT"))
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        ready, live = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
        assert ready["path"] == "/readyz" and live["path"] == "/healthz"
        for probe in (ready, live, container["startupProbe"]["httpGet"]):
            assert named.get(probe["port"], probe["port"]) == port, f"probe on {probe['port']}, listens on {port}"
        assert container["readinessProbe"]["periodSeconds"] <= 5, "readiness must notice a drain quickly"


def _prestop_sleep_s(container: Doc) -> float:
    hook = container["lifecycle"]["preStop"]
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = hook["exec"]["command"]
    text = " ".join(command)
    assert "kill" not in text, "preStop must not signal: the kubelet's SIGTERM after it would cut the drain short"
    match = re.fullmatch(r"sleep (\d+)", text)
    assert match, f"preStop is expected to be a plain sleep, got {command}"
    return float(match.group(1))


@pytest.mark.parametrize("workload", WORKLOADS, ids=lambda w: w["metadata"]["name"])
def test_grace_period_covers_prestop_and_drain(workload: Doc) -> None:
    pod = workload["spec"]["template"]["spec"]
    for container in _containers(workload):
        sleep = _prestop_sleep_s(container)
        assert 1 <= sleep <= 15
        drain = float(_env_value(container, "CLASSMESH_DRAIN_TIMEOUT"))
        assert pod["terminationGracePeriodSeconds"] >= sleep + drain + 10, (
            f"grace {pod['terminationGracePeriodSeconds']}s < preStop {sleep}s + drain {drain}s + 10s"
        )


def test_every_workload_has_exactly_one_pdb_allowing_one_pod_down() -> None:
    pdbs = _by_kind("PodDisruptionBudget")
    for workload in WORKLOADS:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        covering = [p for p in pdbs if _selects(p["spec"]["selector"]["matchLabels"], labels)]
        assert len(covering) == 1, f"{workload['metadata']['name']}: {len(covering)} PDBs"
        assert covering[0]["spec"] == {"maxUnavailable": 1, "selector": covering[0]["spec"]["selector"]}
    for pdb in pdbs:
        matched = [
            w
            for w in WORKLOADS
            if _selects(pdb["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(matched) == 1, f"PDB {pdb['metadata']['name']} covers {len(matched)} workloads"


def test_update_strategies_replace_one_pod_at_a_time() -> None:
    for workload in WORKLOADS:
        spec, name = workload["spec"], workload["metadata"]["name"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
        if workload["kind"] == "Deployment":
            assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 1}}
            assert spec["replicas"] >= 2, f"{name}: one replica cannot roll without downtime"
        else:
            assert spec["updateStrategy"]["type"] in ("RollingUpdate", "OnDelete")
    (orchestrator,) = [w for w in WORKLOADS if w["metadata"]["name"] == "orchestrator"]
    assert orchestrator["spec"]["replicas"] == 2


@pytest.mark.parametrize("workload", WORKLOADS, ids=lambda w: w["metadata"]["name"])
def test_pods_run_as_non_root_with_limits(workload: Doc) -> None:
    pod = workload["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    for container in _containers(workload):
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{kind} missing"
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/tmp" in mounts, "a read-only root needs a writable /tmp"


def test_every_service_selects_a_workload_and_a_named_port() -> None:
    for service in _by_kind("Service"):
        selected = [
            w for w in WORKLOADS if _selects(service["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects {len(selected)} workloads"
        names = {p["name"] for c in _containers(selected[0]) for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names
    for statefulset in _by_kind("StatefulSet"):
        (governing,) = [s for s in _by_kind("Service") if s["metadata"]["name"] == statefulset["spec"]["serviceName"]]
        assert governing["spec"]["clusterIP"] == "None", "a StatefulSet's governing Service must be headless"


def test_regions_configmap_lists_exactly_the_media_pods() -> None:
    (config,) = [d for d in _by_kind("ConfigMap") if d["metadata"]["name"] == "classmesh-regions"]
    import yaml

    regions = parse_regions(yaml.safe_load(config["data"]["regions.yaml"]), "classmesh-regions")
    assert tuple(r.name for r in regions) == REGIONS
    for region in regions:
        (media,) = [s for s in _by_kind("StatefulSet") if s["metadata"]["name"] == f"media-{region.name}"]
        (container,) = _containers(media)
        port = int(_env_value(container, "CLASSMESH_PORT"))
        service = media["spec"]["serviceName"]
        pods = [f"media-{region.name}-{i}" for i in range(media["spec"]["replicas"])]
        expected = [(pod, f"http://{pod}.{service}.{NAMESPACE}.svc:{port}") for pod in pods]
        assert [(n.node_id, n.url) for n in region.nodes] == expected
        assert region.nodes_min <= media["spec"]["replicas"]
        env = _env(container)
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert env["CLASSMESH_NODE_ID"]["value"] == "$(POD_NAME)"
        assert env["CLASSMESH_PUBLIC_URL"]["value"] == f"http://$(POD_NAME).{service}.{NAMESPACE}.svc:{port}"
        assert (
            "--region" in container["args"]
            and container["args"][container["args"].index("--region") + 1] == region.name
        )
        (signaling,) = [d for d in _by_kind("Deployment") if d["metadata"]["name"] == f"signaling-{region.name}"]
        assert _containers(signaling)[0]["args"] == ["signaling", "--region", region.name]


def test_region_files_differ_only_in_the_region_name() -> None:
    texts = {r: (K8S / f"region-{r}.yaml").read_text() for r in REGIONS}
    reference = texts[REGIONS[0]].replace(REGIONS[0], "REGION")
    for region, text in texts.items():
        assert text.replace(region, "REGION") == reference, f"region-{region}.yaml drifted from the others"


def test_media_pods_own_their_host_network_one_per_host() -> None:
    for media in [s for s in _by_kind("StatefulSet") if s["metadata"]["name"].startswith("media-")]:
        pod = media["spec"]["template"]["spec"]
        assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
        (term,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"] == {
            "app.kubernetes.io/name": "classmesh",
            "app.kubernetes.io/component": "media",
        }, "any two media pods collide on a host, whatever their region"
        (container,) = _containers(media)
        assert all(p["hostPort"] == p["containerPort"] for p in container["ports"])
        env = _env(container)
        assert env["HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
        assert env["CLASSMESH_ICE_ADDRESSES"]["value"] == "$(HOST_IP)"
        lo, hi = (int(p) for p in env["CLASSMESH_UDP_PORTS"]["value"].split("-"))
        assert 1024 <= lo < hi <= 65535 and SERVICE_PORTS["media"] not in range(lo, hi + 1)


def _claim_mounted_at(workload: Doc, container: Doc, path: str) -> str | None:
    """The PersistentVolumeClaim a container has mounted (read-write) at ``path``, None when it is not a claim."""
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in workload["spec"]["template"]["spec"].get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    for mount in container["volumeMounts"]:
        if mount["mountPath"] == path and not mount.get("readOnly", False) and "subPath" not in mount:
            return claims.get(mount["name"])
    return None


def test_two_recorders_on_different_hosts_share_one_rwx_recordings_claim_with_the_orchestrator() -> None:
    (recorder,) = [s for s in _by_kind("StatefulSet") if s["metadata"]["name"] == "recorder"]
    assert recorder["spec"]["replicas"] >= 2
    assert "volumeClaimTemplates" not in recorder["spec"], "one shared volume, not one per recorder"
    pod = recorder["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    (container,) = _containers(recorder)
    env = _env(container)
    assert env["CLASSMESH_WORKER_ID"]["value"] == "$(POD_NAME)"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["CLASSMESH_ICE_ADDRESSES"]["value"] == "$(POD_IP)"
    storage = container["args"][container["args"].index("--storage") + 1]
    (orchestrator,) = [d for d in _by_kind("Deployment") if d["metadata"]["name"] == "orchestrator"]
    (main,) = _containers(orchestrator)
    recordings = main["args"][main["args"].index("--recordings") + 1]
    mounted = {
        "recorder": _claim_mounted_at(recorder, container, storage),
        "orchestrator": _claim_mounted_at(orchestrator, main, recordings),
    }
    assert mounted == {"recorder": "classmesh-recordings", "orchestrator": "classmesh-recordings"}, mounted
    (claim,) = [c for c in _by_kind("PersistentVolumeClaim") if c["metadata"]["name"] == "classmesh-recordings"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "recorders on different hosts write at once"
    assert "storageClassName" not in claim["spec"], "the cluster's default class (it must support RWX)"


def _secret_keys() -> dict[str, set[str]]:
    return {
        d["metadata"]["name"]: set(d.get("stringData", {})) | set(d.get("data", {}))
        for d in load_yaml_all(K8S / "secrets.example.yaml")
    }


def test_secret_placeholders_are_documented_and_hold_no_value() -> None:
    for secret in load_yaml_all(K8S / "secrets.example.yaml"):
        assert secret["kind"] == "Secret"
        assert secret["metadata"]["annotations"]["classmesh.io/description"]
        assert all(v == "" for v in secret.get("stringData", {}).values()), "placeholders only, no real secret"
        assert "data" not in secret


def test_every_secret_reference_resolves_to_a_file_the_service_is_told_about() -> None:
    keys = _secret_keys()
    signing_holders = set()
    for workload in WORKLOADS:
        pod = workload["spec"]["template"]["spec"]
        secret_volumes = {v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
        for container in _containers(workload):
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in keys[ref["name"]], f"{ref} is not in secrets.example.yaml"
            mounted = {
                m["mountPath"]: secret_volumes[m["name"]]
                for m in container["volumeMounts"]
                if m["name"] in secret_volumes
            }
            values = [e.get("value", "") for e in container.get("env", [])] + container["args"]
            for path, secret in mounted.items():
                files = [v for v in values if str(v).startswith(path + "/")]
                assert files, f"{workload['metadata']['name']}: mounts {secret} but no setting points into it"
                for file in files:
                    assert file[len(path) + 1 :] in keys[secret], f"{file}: {secret} has no such key"
                if secret == "classmesh-token-signing":
                    signing_holders.add(workload["metadata"]["name"])
    assert signing_holders == {"orchestrator"}, "only the orchestrator may hold the signing key"


def _expanded_env(container: Doc) -> dict[str, str]:
    """The container's environment as the kubelet would build it, with stand-ins for the downward API and
    Secrets (values no cluster is needed for)."""
    env = dict(_config_env())
    stand_ins = {"metadata.name": "pod-0", "status.hostIP": "127.0.0.1", "status.podIP": "10.0.0.7"}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), entry["value"])
        elif "fieldRef" in entry["valueFrom"]:
            env[entry["name"]] = stand_ins[entry["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[entry["name"]] = "postgresql+asyncpg://classmesh:secret@db.invalid:5432/classmesh"
    return env


@pytest.mark.parametrize("workload", WORKLOADS, ids=lambda w: w["metadata"]["name"])
def test_container_args_and_environment_are_accepted_by_the_cli(workload: Doc) -> None:
    if classmesh_command() is None:
        pytest.skip("the classmesh CLI is not installed yet (neither the console script nor python -m classmesh)")
    for container in _containers(workload):
        args = [str(a) for a in container["args"]]
        help_ = command_help(args[0])
        assert not set(flags_in(args[1:])) - help_.flags, f"unknown flags in {args}"
        env = _expanded_env(container)
        unknown = {k for k in env if k.startswith("CLASSMESH_")} - help_.env
        assert not unknown, f"classmesh {args[0]} does not read {sorted(unknown)}"
        assert int(env["CLASSMESH_PORT"]) in [p["containerPort"] for p in container["ports"]]
        done = run_cli([*args, "--help"], env)
        assert done.returncode == 0, f"classmesh refused {args}:\n{done.stderr}"
