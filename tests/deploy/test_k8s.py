"""deploy/k8s: every kustomization renders, every manifest validates against the Kubernetes OpenAPI schemas
(kubernetes-validate ships them: no network), and the manifests agree with the Dockerfile and app/settings.py
on probe paths and port, shutdown timing, the image's user and the DIALOG_* names. Also the small
kustomize renderer these checks use (tests/deploy/kustomize.py), against output of the real kustomize."""
from __future__ import annotations

import posixpath
import re
import shlex
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.deploy.kustomize import KustomizeError, build, split_image, strategic_merge

kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is a dev dependency (make install-dev)")

K8S = REPO / "deploy" / "k8s"
KUSTOMIZATIONS = ["base", "overlays/gpu", "overlays/bundle-volume", "overlays/training", "overlays/training-multinode"]
API_KUSTOMIZATIONS = ["base", "overlays/gpu", "overlays/bundle-volume"]
# Manifests applied on their own (kubectl apply -f), outside any kustomization.
STANDALONE = ["overlays/training/shell.yaml"]
# The oldest Kubernetes the manifests are meant for, and the newest whose schemas the package ships.
K8S_VERSIONS = ["1.29", kv.latest_version()]


# ----- reading the Dockerfile and the manifests ---------------------------------------------------

def dockerfile_stages() -> dict[str, dict[str, Any]]:
    """Per build stage: its parent, and the ENV, ARG defaults, USER, WORKDIR, EXPOSE, HEALTHCHECK and RUN lines
    in effect (inherited from a parent stage of this Dockerfile)."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, dict[str, Any]] = {}
    cur: dict[str, Any] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        instr, rest = instr.upper(), rest.strip()
        if instr == "FROM":
            m = re.match(r"(\S+)\s+AS\s+(\S+)", rest, re.I)
            assert m, f"unnamed stage: {line}"
            parent = stages.get(m.group(1))
            cur = {"env": dict(parent["env"]) if parent else {}, "run": list(parent["run"]) if parent else [],
                   "user": parent["user"] if parent else "root", "workdir": parent["workdir"] if parent else "/",
                   "expose": [], "healthcheck": None, "arg": dict(parent["arg"]) if parent else {}}
            stages[m.group(2)] = cur
        elif cur is None:
            continue  # global ARGs before the first FROM
        elif instr == "ENV":
            cur["env"].update(dict(kv_.split("=", 1) for kv_ in shlex.split(rest)))
        elif instr == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            cur["arg"][name] = value
        elif instr == "USER":
            cur["user"] = rest
        elif instr == "WORKDIR":
            cur["workdir"] = rest
        elif instr == "EXPOSE":
            cur["expose"] += [int(p.split("/")[0]) for p in rest.split()]
        elif instr == "HEALTHCHECK":
            cur["healthcheck"] = rest
        elif instr == "RUN":
            cur["run"].append(rest)
    return stages


def image_user_id() -> int:
    """The uid of the images' user `app`: base's APP_UID default, used by its useradd."""
    base = dockerfile_stages()["base"]
    uid = int(base["arg"]["APP_UID"])
    assert any(re.search(r'useradd\b[^&;]*--uid "?\$\{APP_UID\}"?[^&;]*\sapp\b', r) for r in base["run"]), \
        "the Dockerfile no longer creates the user app with --uid ${APP_UID}"
    assert any(re.search(r'groupadd\b[^&;]*--gid "?\$\{APP_UID\}"?[^&;]*\sapp\b', r) for r in base["run"])
    return uid


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"] if workload["kind"] == "Pod" else workload["spec"]["template"]["spec"]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in pod_spec(workload)["containers"] if c["name"] == name]
    assert len(found) == 1
    return found[0]


def container_env(docs: list[dict[str, Any]], c: dict[str, Any]) -> dict[str, Any]:
    """The variables Kubernetes gives the container: its envFrom ConfigMaps, then env (later wins). A value
    from a Secret is kept as the secretKeyRef."""
    env: dict[str, Any] = {}
    for src in c.get("envFrom", []):
        assert set(src) == {"configMapRef"}, f"unexpected envFrom {src}"
        env.update(one(docs, "ConfigMap", src["configMapRef"]["name"])["data"])
    for e in c.get("env", []):
        env[e["name"]] = e["value"] if "value" in e else e["valueFrom"]
    return env


def resolve_port(c: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    found = [p["containerPort"] for p in c["ports"] if p.get("name") == port]
    assert found, f"port {port!r} is not a named port of container {c['name']}"
    return found[0]


def cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def settings_from(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch):
    """app.settings.Settings as the server builds it from these variables (only them)."""
    import os

    from app.settings import Settings

    for name in list(os.environ):
        if name.startswith("DIALOG_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("DIALOG_") and isinstance(value, str):
            monkeypatch.setenv(name, value)
    return Settings()


def prestop_sleep_s(c: dict[str, Any]) -> float:
    hook = c["lifecycle"]["preStop"]
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    cmd = hook["exec"]["command"]
    assert cmd[0] == "sleep" and len(cmd) == 2, f"preStop is not a plain sleep: {cmd}"
    return float(cmd[1])


def worst_case_stop_s(drain_timeout_s: float, drain_grace_s: float) -> float:
    """Longest the server can take from SIGTERM to exit (app/__main__.py and app/main.py): the drain thread
    waits max(grace, timeout while requests run); uvicorn's graceful shutdown then gets what is left of the
    timeout, at least 1 s; the lifespan's engine.close waits up to the timeout for admitted requests and as
    long again to join the batching thread."""
    return max(drain_timeout_s, drain_grace_s) + 1 + 2 * max(drain_timeout_s, 1)


# ----- rendering and schema validation ------------------------------------------------------------

@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_kustomization_renders_and_validates_against_the_kubernetes_schemas(kustomization: str, version: str):
    docs = build(K8S / kustomization)
    assert docs
    for doc in docs:
        _validate(doc, version, f"{kustomization}: {doc['kind']}/{doc['metadata']['name']}")


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("manifest", STANDALONE)
def test_standalone_manifest_validates(manifest: str, version: str):
    docs = [d for d in yaml.safe_load_all((K8S / manifest).read_text()) if d]
    assert docs
    for doc in docs:
        _validate(doc, version, manifest)


def _validate(doc: dict[str, Any], version: str, what: str) -> None:
    # strict: an unknown field (a typo such as `livenesProbe`) fails instead of being dropped by the server.
    # No custom resources are used, so a kind without a schema fails too rather than being skipped.
    try:
        kv.validate(doc, version, strict=True)
    except kv.ValidationError as e:
        pytest.fail(f"{what} against Kubernetes {version}: {'.'.join(map(str, e.path))}: {e.message}")
    except kv.SchemaNotFoundError as e:
        pytest.fail(f"{what}: {e.message} (a custom resource needs its CRD schema beside it)")


def test_validation_catches_a_typo_and_a_wrong_type():
    """The schema check is not vacuous: a misspelt field and a string port fail it."""
    dep = one(build(K8S / "base"), "Deployment")
    c = container(dep, "api")
    c["livenesProbe"] = c.pop("livenessProbe")
    with pytest.raises(kv.ValidationError, match="livenesProbe"):
        kv.validate(dep, K8S_VERSIONS[-1], strict=True)
    dep = one(build(K8S / "base"), "Deployment")
    container(dep, "api")["ports"][0]["containerPort"] = "8000"
    with pytest.raises(kv.ValidationError, match="not of type 'integer'"):
        kv.validate(dep, K8S_VERSIONS[-1], strict=True)


def test_every_yaml_file_is_checked():
    """Each YAML file under deploy/k8s is a kustomization, something one of them uses, or a standalone
    manifest validated above: none escapes validation."""
    used: set[Path] = set()
    for k in KUSTOMIZATIONS:
        folder = K8S / k
        kfile = folder / "kustomization.yaml"
        spec = yaml.safe_load(kfile.read_text())
        used.add(kfile)
        used.update((folder / r).resolve() for r in spec.get("resources", []) if (folder / r).is_file())
        used.update((folder / p["path"]).resolve() for p in spec.get("patches", []))
    used.update((K8S / s).resolve() for s in STANDALONE)
    files = {p.resolve() for p in K8S.rglob("*.y*ml")}
    assert files - used == set(), f"YAML files no check reads: {sorted(map(str, files - used))}"
    # Every folder holding a kustomization is in KUSTOMIZATIONS.
    folders = {str(p.parent.relative_to(K8S)) for p in K8S.rglob("kustomization.yaml")}
    assert folders == set(KUSTOMIZATIONS)


# ----- agreement with the app and the Dockerfile ---------------------------------------------------

@pytest.mark.parametrize("kustomization", API_KUSTOMIZATIONS)
def test_probes_and_ports_match_the_app(kustomization: str, monkeypatch: pytest.MonkeyPatch):
    from app.routes.ops import router

    docs = build(K8S / kustomization)
    dep = one(docs, "Deployment", "cvae-dialog")
    c = container(dep, "api")
    runtime = dockerfile_stages()["runtime"]
    env = {**runtime["env"], **container_env(docs, c)}
    s = settings_from(env, monkeypatch)

    gets = {r.path for r in router.routes if "GET" in getattr(r, "methods", set())}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"  # liveness: the process answers
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"  # readiness: 503 while loading or draining
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] in gets, f"{probe} asks {get['path']}, which the app does not serve"
        assert resolve_port(c, get["port"]) == s.port, f"{probe} asks a port the server does not listen on"

    assert s.host == "0.0.0.0", "the server must listen on all interfaces in a pod"
    assert s.port in runtime["expose"]
    svc = one(docs, "Service", "cvae-dialog")
    assert all(resolve_port(c, p["targetPort"]) == s.port for p in svc["spec"]["ports"])

    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    assert one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "cvae-dialog"}
    assert "replicas" not in dep["spec"], "the HorizontalPodAutoscaler owns the replica count"
    assert hpa["spec"]["minReplicas"] >= 2, "with one replica the PodDisruptionBudget would block every drain"


@pytest.mark.parametrize("kustomization", API_KUSTOMIZATIONS)
def test_shutdown_fits_the_grace_period(kustomization: str, monkeypatch: pytest.MonkeyPatch):
    docs = build(K8S / kustomization)
    dep = one(docs, "Deployment", "cvae-dialog")
    c = container(dep, "api")
    s = settings_from({**dockerfile_stages()["runtime"]["env"], **container_env(docs, c)}, monkeypatch)
    grace = pod_spec(dep)["terminationGracePeriodSeconds"]
    pre = prestop_sleep_s(c)
    assert pre > 0, "without a preStop pause the pod stops before the Service stops sending it requests"
    assert grace >= pre + s.drain_timeout_s, "the kubelet would kill requests the server is still draining"
    assert grace >= pre + worst_case_stop_s(s.drain_timeout_s, s.drain_grace_s)
    # The figures the Deployment's comment states.
    assert (pre, s.drain_timeout_s, s.drain_grace_s, grace) == (5, 10, 1, 45)
    assert worst_case_stop_s(10, 1) == 31


def test_worst_case_stop_bound():
    assert worst_case_stop_s(10, 1) == 10 + 1 + 20
    assert worst_case_stop_s(2, 5) == 5 + 1 + 4  # grace longer than the timeout: the socket stays open for it
    assert worst_case_stop_s(0, 0) == 0 + 1 + 2  # the join waits at least 1 s


def test_startup_probe_allows_the_images_start_period():
    c = container(one(build(K8S / "base"), "Deployment"), "api")
    m = re.search(r"--start-period=(\d+)s", dockerfile_stages()["runtime"]["healthcheck"])
    assert m
    p = c["startupProbe"]
    assert p["periodSeconds"] * p["failureThreshold"] >= int(m.group(1))


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_pods_run_as_the_images_user(kustomization: str):
    uid = image_user_id()
    stages = dockerfile_stages()
    assert stages["runtime"]["user"] == "app" and stages["train"]["user"] == "app"
    docs = build(K8S / kustomization)
    standalone = [d for s in STANDALONE if kustomization in s for d in yaml.safe_load_all((K8S / s).read_text())]
    workloads = [d for d in docs + standalone if d["kind"] in ("Deployment", "Job", "Pod")]
    assert workloads
    for w in workloads:
        sc = pod_spec(w)["securityContext"]
        assert sc["runAsNonRoot"] is True
        # runAsNonRoot alone cannot check an image whose USER is a name: the uid must be given.
        assert (sc["runAsUser"], sc["runAsGroup"], sc["fsGroup"]) == (uid, uid, uid), w["metadata"]["name"]
        for c in pod_spec(w)["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert "runAsUser" not in c["securityContext"]


@pytest.mark.parametrize("kustomization", API_KUSTOMIZATIONS)
def test_env_names_are_server_settings(kustomization: str, monkeypatch: pytest.MonkeyPatch):
    from app.settings import Settings

    docs = build(K8S / kustomization)
    dep = one(docs, "Deployment", "cvae-dialog")
    c = container(dep, "api")
    env = container_env(docs, c)
    fields = {f"DIALOG_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, f"not settings of the server (ignored by it): {sorted(set(env) - fields)}"
    # The API key comes from a Secret, never from the ConfigMap.
    assert env["DIALOG_API_KEY"] == {"secretKeyRef": {"name": "cvae-dialog-api-key", "key": "api-key"}}
    assert pod_spec(dep)["enableServiceLinks"] is False  # no injected variables beside these

    s = settings_from(env, monkeypatch)  # every value parses as the server parses it
    cores = cpu_cores(c["resources"]["requests"]["cpu"])
    assert s.torch_threads >= 1, "0 would size torch's threads by the node's cores, not the pod's request"
    assert s.torch_threads + 1 <= cores, "the event loop needs a core beside torch's threads"
    assert "cpu" not in c["resources"].get("limits", {})


def test_image_tags_match_compose():
    def compose_image(path: Path, service: str) -> str:
        raw = yaml.safe_load(path.read_text())["services"][service]["image"]
        m = re.fullmatch(r"\$\{\w+:-(.+)\}", raw)
        return m.group(1) if m else raw

    def image(kustomization: str, kind: str) -> str:
        w = one(build(K8S / kustomization), kind)
        return pod_spec(w)["containers"][0]["image"]

    assert image("base", "Deployment") == compose_image(REPO / "compose.yaml", "api")
    assert image("overlays/gpu", "Deployment") == compose_image(REPO / "docker" / "compose.gpu.yaml", "api")
    assert image("overlays/training", "Job") == compose_image(REPO / "compose.yaml", "train")


def test_gpu_overlay(monkeypatch: pytest.MonkeyPatch):
    docs = build(K8S / "overlays/gpu")
    c = container(one(docs, "Deployment"), "api")
    s = settings_from(container_env(docs, c), monkeypatch)
    assert s.device == "cuda" and s.quantize == "none"  # int8 is a CPU path
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in pod_spec(one(docs, "Deployment"))["tolerations"])
    base = container(one(build(K8S / "base"), "Deployment"), "api")
    assert base["resources"]["requests"]["cpu"] == c["resources"]["requests"]["cpu"]
    assert "nvidia.com/gpu" not in base["resources"].get("limits", {})


def _job_argv(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    job = one(docs, "Job", "cvae-dialog-train")
    c = container(job, "train")
    env = container_env(docs, c)

    def expand(arg: str) -> str:
        def var(m: re.Match) -> str:
            assert m.group(1) in env, f"$({m.group(1)}) is not a variable of the container (left unexpanded)"
            return str(env[m.group(1)])
        return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", var, arg)

    return c, [expand(a) for a in c["command"] + c["args"]]


def test_training_job_runs_the_training_cli_and_resumes_from_its_volume():
    from training.__main__ import build_parser
    from training.config import load_config

    docs = build(K8S / "overlays/training")
    job = one(docs, "Job", "cvae-dialog-train")
    c, argv = _job_argv(docs)
    train = dockerfile_stages()["train"]

    # torchrun (torch's launcher, on the image's PATH with torch) in one pod, running the module that the
    # image's entrypoint runs, `python -m training`, with arguments that its parser takes.
    assert argv[0] == "torchrun" and argv[1] == "--standalone"
    nproc = re.fullmatch(r"--nproc-per-node=(\d+)", argv[2])
    assert nproc and int(nproc.group(1)) >= 1
    assert argv[3:5] == ["-m", "training"]
    assert train["env"]["PATH"].startswith(train["env"]["VIRTUAL_ENV"] + "/bin:")
    args = build_parser().parse_args(argv[5:])
    assert args.command == "train"
    cfg = load_config(args.config, args.set)  # a shipped config, valid as the CLI reads it

    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod_spec(job)["volumes"]
              if "persistentVolumeClaim" in v}
    pvcs = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert set(claims.values()) <= pvcs
    # The run folder is on a claim, so a new pod finds the checkpoint and resumes.
    out = PurePosixPath(args.out)
    runs = mounts["/runs"]
    assert out.parent == PurePosixPath("/runs") and claims[runs["name"]] == "cvae-dialog-runs"
    assert not runs.get("readOnly")
    # The corpora: the config's relative folders, read from the image's working directory.
    assert train["workdir"] == "/runs"
    for source in cfg.data.sources:
        where = PurePosixPath(posixpath.normpath(posixpath.join(train["workdir"], source.dir)))
        assert any(where.is_relative_to(m) and mounts[m].get("readOnly") for m in mounts if m != "/runs"), \
            f"{source.dir} (from {train['workdir']}) is on no read-only data mount"

    spec = job["spec"]
    assert pod_spec(job)["restartPolicy"] == "Never" and spec["backoffLimit"] >= 1
    # An evicted or preempted pod does not count against backoffLimit: the next one resumes.
    ignore = {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert ignore in spec["podFailurePolicy"]["rules"]


def multinode_torchrun_argv() -> tuple[list[str], dict[str, str]]:
    """The multi-node overlay's torchrun command line with its variables expanded, and the container's env."""
    docs = build(K8S / "overlays/training-multinode")
    c, argv = _job_argv(docs)
    return argv, {k: str(v) for k, v in container_env(docs, c).items()}


def test_multinode_training_overlay_meets_at_pod_zero_through_a_headless_service():
    from training.__main__ import build_parser

    docs = build(K8S / "overlays/training-multinode")
    job = one(docs, "Job", "cvae-dialog-train")
    argv, env = multinode_torchrun_argv()
    flags = dict(a[2:].split("=", 1) for a in argv[1:argv.index("-m")])
    assert argv[0] == "torchrun" and "standalone" not in flags
    nnodes = int(flags["nnodes"])
    # One pod per node, all at once (the agents wait for each other), each named by its index.
    spec = job["spec"]
    assert nnodes >= 2 and spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == nnodes
    # The endpoint is pod 0 under the headless Service, which publishes it before it is ready.
    host, port = flags["rdzv-endpoint"].rsplit(":", 1)
    svc = one(docs, "Service", "cvae-dialog-train-rdzv")
    assert host == f"{job['metadata']['name']}-0.{svc['metadata']['name']}"
    assert pod_spec(job)["subdomain"] == svc["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    c = container(job, "train")
    assert {"name": "rdzv", "containerPort": int(port), "protocol": "TCP"} in c["ports"]
    assert svc["spec"]["ports"][0]["port"] == int(port) and svc["spec"]["ports"][0]["targetPort"] == "rdzv"
    # Restarts that can work (training.loop.check_elastic_env refuses the shared store with restarts).
    assert flags["rdzv-backend"] == "c10d" and int(flags["max-restarts"]) >= 1
    assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"
    assert build_parser().parse_args(argv[argv.index("-m") + 2:]).command == "train"
    # Every pod mounts the same run folder and corpora: claims that mount on several nodes.
    for claim in ("cvae-dialog-runs", "cvae-dialog-data"):
        assert one(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteMany"]
    # No other pod is selected by the rendezvous Service, and the API's Service does not select these pods.
    api = one(build(K8S / "base"), "Service", "cvae-dialog")
    assert not api["spec"]["selector"].items() <= labels.items()


def test_bundle_volume_serves_what_the_training_job_exported(monkeypatch: pytest.MonkeyPatch):
    _, argv = _job_argv(build(K8S / "overlays/training"))
    out = argv[argv.index("--out") + 1]
    docs = build(K8S / "overlays/bundle-volume")
    dep = one(docs, "Deployment")
    c = container(dep, "api")
    s = settings_from(container_env(docs, c), monkeypatch)
    assert str(s.bundle) == f"{out}/bundle"  # the training loop exports the bundle to <out>/bundle
    mount = next(m for m in c["volumeMounts"] if PurePosixPath(str(s.bundle)).is_relative_to(m["mountPath"]))
    assert mount["readOnly"] is True
    vol = next(v for v in pod_spec(dep)["volumes"] if v["name"] == mount["name"])
    assert vol["persistentVolumeClaim"] == {"claimName": "cvae-dialog-runs", "readOnly": True}
    training_pvcs = {d["metadata"]["name"] for d in build(K8S / "overlays/training")
                     if d["kind"] == "PersistentVolumeClaim"}
    assert "cvae-dialog-runs" in training_pvcs


# ----- the renderer --------------------------------------------------------------------------------

BASE_DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: d, labels: {x: "1", y: "2"}}
spec:
  selector: {matchLabels: {x: "1"}}
  template:
    metadata: {labels: {x: "1"}}
    spec:
      tolerations: [{key: a, operator: Exists}]
      initContainers:
        - {name: init, image: "localhost:5000/tool:1"}
      containers:
        - name: a
          image: img-a:1
          args: ["--one", "--two"]
          env: [{name: E1, value: "1"}, {name: E2, value: "2"}]
          ports: [{containerPort: 80, name: http}, {containerPort: 90, name: m}]
          volumeMounts: [{name: v1, mountPath: /v1}, {name: v2, mountPath: /v2}]
        - name: b
          image: img-b@sha256:abc
          resources: {requests: {cpu: "1", memory: 1Gi}}
      volumes: [{name: v1, emptyDir: {}}, {name: v2, emptyDir: {}}, {name: v3, emptyDir: {}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: c}
data: {A: "1", B: "2"}
"""

PATCH = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: d, labels: {y: null, z: "3"}}
spec:
  template:
    spec:
      tolerations: [{key: b, operator: Exists}]
      containers:
        - name: c
          image: img-c
        - name: a
          args: ["--three"]
          env: [{name: E3, value: "3"}, {name: E1, value: "one"}]
          ports: [{containerPort: 90, name: metrics}, {containerPort: 100}]
          volumeMounts: [{name: v0, mountPath: /v0}, {name: v2, mountPath: /v2, readOnly: true}]
      volumes: [{name: v2, emptyDir: {medium: Memory}}, {name: v0, emptyDir: {}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: c}
data: {A: null, C: "3"}
"""

# What `kubectl kustomize` (kubectl 1.37.1, kustomize 5.8.1) printed for BASE_DEPLOYMENT + PATCH + IMAGES.
EXPECTED = """
apiVersion: v1
kind: ConfigMap
metadata: {name: c}
data: {B: "2", C: "3"}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d, labels: {x: "1", z: "3"}}
spec:
  selector: {matchLabels: {x: "1"}}
  template:
    metadata: {labels: {x: "1"}}
    spec:
      tolerations: [{key: b, operator: Exists}]
      initContainers:
        - {name: init, image: "localhost:5000/tool@sha256:def"}
      containers:
        - {name: c, image: img-c}
        - name: a
          image: reg.example/img-a:2
          args: ["--three"]
          env: [{name: E3, value: "3"}, {name: E1, value: one}, {name: E2, value: "2"}]
          ports: [{containerPort: 90, name: metrics}, {containerPort: 100}, {containerPort: 80, name: http}]
          volumeMounts: [{name: v0, mountPath: /v0}, {name: v2, mountPath: /v2, readOnly: true},
                         {name: v1, mountPath: /v1}]
        - name: b
          image: img-b:3
          resources: {requests: {cpu: "1", memory: 1Gi}}
      volumes: [{name: v2, emptyDir: {medium: Memory}}, {name: v0, emptyDir: {}}, {name: v1, emptyDir: {}},
                {name: v3, emptyDir: {}}]
"""

IMAGES = """
  - {name: img-a, newName: reg.example/img-a, newTag: "2"}
  - {name: img-b, newTag: "3"}
  - {name: "localhost:5000/tool", digest: "sha256:def"}
"""


def _write_case(tmp: Path, patch: str = PATCH, extra: str = "") -> Path:
    (tmp / "base").mkdir()
    (tmp / "base" / "kustomization.yaml").write_text("resources: [d.yaml]\n")
    (tmp / "base" / "d.yaml").write_text(BASE_DEPLOYMENT)
    (tmp / "over").mkdir()
    (tmp / "over" / "p.yaml").write_text(patch)
    (tmp / "over" / "kustomization.yaml").write_text(
        f"resources: [../base]\npatches:\n  - path: p.yaml\nimages:{IMAGES}{extra}")
    return tmp / "over"


def test_renderer_matches_kustomize_on_merges_deletions_and_images(tmp_path: Path):
    assert build(_write_case(tmp_path)) == list(yaml.safe_load_all(EXPECTED))


def test_renderer_reorders_a_merged_list_as_kustomize_does():
    # kubectl kustomize 1.37.1: a patch naming existing items b then a puts them first, in that order.
    original = {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}, {"name": "c"}]}
    patch = {"containers": [{"name": "b", "image": "9"}, {"name": "a", "env": [{"name": "E", "value": "x"}]}]}
    assert strategic_merge(original, patch) == {"containers": [
        {"name": "b", "image": "9"}, {"name": "a", "image": "1", "env": [{"name": "E", "value": "x"}]}, {"name": "c"}]}


@pytest.mark.parametrize("extra, patch, message", [
    ("\nnamePrefix: x-\n", PATCH, "not supported by this renderer: namePrefix"),
    ("", PATCH.replace("name: d,", "name: e,"), "matches 0 resources"),
    ("", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata:\n  $patch: replace\n", "patch directives"),
    ("", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {template: {spec: {containers: "
         "[{image: x}]}}}\n", "lacks its merge key 'name'"),
])
def test_renderer_refuses_what_it_does_not_support(tmp_path: Path, extra: str, patch: str, message: str):
    with pytest.raises(KustomizeError, match=re.escape(message)):
        build(_write_case(tmp_path, patch, extra))


def test_renderer_refuses_a_resource_given_twice(tmp_path: Path):
    (tmp_path / "kustomization.yaml").write_text("resources: [a.yaml, b.yaml]\n")
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: same}\n")
    with pytest.raises(KustomizeError, match="comes from both"):
        build(tmp_path)


@pytest.mark.parametrize("image, parts", [
    ("cvae-dialog", ("cvae-dialog", "", "")),
    ("cvae-dialog:latest-cuda", ("cvae-dialog", "latest-cuda", "")),
    ("localhost:5000/team/cvae-dialog", ("localhost:5000/team/cvae-dialog", "", "")),
    ("localhost:5000/cvae-dialog:1@sha256:ab", ("localhost:5000/cvae-dialog", "1", "sha256:ab")),
])
def test_split_image(image: str, parts: tuple[str, str, str]):
    assert split_image(image) == parts


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed: the renderer is checked "
                    "against kustomize output recorded in this file instead")
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_renderer_matches_kubectl_kustomize(kustomization: str):
    out = subprocess.run(["kubectl", "kustomize", str(K8S / kustomization)], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert build(K8S / kustomization) == list(yaml.safe_load_all(out))


# ----- docs/deploy.md -----------------------------------------------------------------------------

def test_deploy_doc_commands_name_what_exists():
    """The paths the doc applies exist, and its Secret is the one the Deployment reads."""
    doc = (REPO / "docs" / "deploy.md").read_text()
    for path in re.findall(r"kubectl apply -k ([\w./-]+)", doc):
        assert (REPO / path / "kustomization.yaml").is_file(), path
    for path in re.findall(r"kubectl apply -f ([\w./-]+)", doc):
        if not path.startswith("..."):
            assert (REPO / path).is_file(), path
    secret = re.search(r"kubectl create secret generic (\S+) --from-literal=([\w-]+)=", doc)
    assert secret
    env = container(one(build(K8S / "base"), "Deployment"), "api")["env"]
    ref = next(e["valueFrom"]["secretKeyRef"] for e in env if e["name"] == "DIALOG_API_KEY")
    assert (ref["name"], ref["key"]) == secret.groups()


def test_renderer_command_prints_the_rendered_stream(capsys: pytest.CaptureFixture[str]):
    from tests.deploy.kustomize import main

    assert main([str(K8S / "overlays/gpu")]) == 0
    assert list(yaml.safe_load_all(capsys.readouterr().out)) == build(K8S / "overlays/gpu")
    assert main([str(K8S)]) == 1  # no kustomization.yaml there
    assert "no kustomization.yaml" in capsys.readouterr().err
