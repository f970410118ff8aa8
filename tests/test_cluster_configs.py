"""The deployment files in cluster/: Ray launcher YAMLs, KubeRay manifests, the Serve config.

Offline and fast: nothing is launched and no Ray instance is started. The launcher configs are
checked against the JSON schema that ships in the installed Ray wheel (and Ray's own pre-launch
checks), the Serve config against Ray Serve's pydantic schema, and all of them against the
project's shipped run configs (a GPU worker must be able to host the actors a run asks for).
"""

from __future__ import annotations

import ast
import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from digzsl_ray.config import CONFIG_DIR, ServeConfig
from digzsl_ray.methods import load_run_config as load_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LAUNCHERS = ["aws.yaml", "gcp.yaml"]
SERVE_IMPORT_PATH = "digzsl_ray.serve:build_app"
SERVE_DEPLOYMENTS = {"Classifier", "Ingress"}
PIPELINE_ENTRYPOINT = "python -m jobs.run_pipeline --config digzsl_ray/configs/cub.yaml --out /mnt/shared/runs/cub"
SHARED = "/mnt/shared"

# Ray Serve's own pydantic models warn about their Field(...) usage on import; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")


def _load(name: str):
    return yaml.safe_load((CLUSTER / name).read_text())


def _ray_schema() -> dict:
    path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text())


def _node_types(cfg: dict) -> tuple[str, dict, dict]:
    """(head type name, head type, {worker type name: worker type})."""
    types = cfg["available_node_types"]
    head = cfg["head_node_type"]
    return head, types[head], {k: v for k, v in types.items() if k != head}


def _gpu_worker(cfg: dict) -> dict:
    _, _, workers = _node_types(cfg)
    gpu = [t for t in workers.values() if t["resources"].get("GPU", 0) >= 1]
    assert len(gpu) == 1, f"expected exactly one GPU worker node type, got {len(gpu)}"
    return gpu[0]


def _all_commands(cfg: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    cmds = [c for k in keys for c in cfg.get(k, [])]
    for t in cfg["available_node_types"].values():
        cmds += t.get("initialization_commands", []) + t.get("worker_setup_commands", [])
    return cmds


def _gpu_requests(run_cfg) -> list[tuple[str, float, float]]:
    """(what, CPUs, GPUs) of every GPU actor/worker a run config asks Ray for: every section with
    ``num_gpus``/``num_cpus`` (an actor pool) and every ``workers`` block (Ray Train), any method."""
    reqs = []
    for name in type(run_cfg).model_fields:
        sec = getattr(run_cfg, name)
        if hasattr(sec, "num_gpus") and hasattr(sec, "num_cpus") and name != "serve":
            reqs.append((f"{name} actor", sec.num_cpus, sec.num_gpus))
        w = getattr(sec, "workers", None)
        if w is not None:
            reqs.append((f"{name} train worker", w.cpus_per_worker, 1.0 if w.use_gpu else 0.0))
    return [r for r in reqs if r[2] > 0]


def _shipped_gpu_configs() -> list[str]:
    names = [p.stem for p in sorted(CONFIG_DIR.glob("*.yaml"))]
    return [n for n in names if _gpu_requests(load_config(n))]


# 1. Cluster launcher configs -----------------------------------------------------------------------
@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_config_matches_ray_schema(name):
    jsonschema.validate(_load(name), _ray_schema())


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_config_passes_ray_up_checks(name):
    # What `ray up` runs before it talks to the cloud: merge with the provider's defaults.yaml, then
    # schema + consistency checks (head type exists, sum of min_workers <= max_workers, docker).
    util = pytest.importorskip("ray.autoscaler._private.util")
    if not (hasattr(util, "prepare_config") and hasattr(util, "validate_config")):
        pytest.skip("this Ray has no prepare_config/validate_config")
    util.validate_config(util.prepare_config(copy.deepcopy(_load(name))))


def _unknown_key(cfg):
    cfg["max_worker"] = 8


def _bad_max_workers(cfg):
    cfg["max_workers"] = "many"


def _fractional_gpu(cfg):
    _gpu_worker(cfg)["resources"]["GPU"] = 0.5


def _no_node_config(cfg):
    del _gpu_worker(cfg)["node_config"]


def _unknown_node_type_key(cfg):
    _gpu_worker(cfg)["min_worker"] = 0


@pytest.mark.parametrize("name", LAUNCHERS)
@pytest.mark.parametrize("breaks", [_unknown_key, _bad_max_workers, _fractional_gpu, _no_node_config,
                                    _unknown_node_type_key])
def test_ray_schema_rejects_broken_copies(name, breaks):
    cfg = copy.deepcopy(_load(name))
    breaks(cfg)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cfg, _ray_schema())


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_has_cpu_head_and_gpu_workers_from_zero(name):
    cfg = _load(name)
    assert cfg["cluster_name"] == "digzsl"
    assert cfg["max_workers"] >= 1 and cfg["idle_timeout_minutes"] > 0
    head_name, head, workers = _node_types(cfg)

    # Head: CPUs only, on a machine without accelerators.
    assert head["resources"].get("GPU", 0) == 0, head["resources"]
    assert head["resources"].get("CPU", 0) >= 1
    assert head.get("max_workers", 0) == 0
    node = head["node_config"]
    if cfg["provider"]["type"] == "aws":
        assert not re.match(r"^(g|p|inf|trn)\d", node["InstanceType"]), node["InstanceType"]
    else:
        assert "guestAccelerators" not in node
        assert not re.match(r"^(a2|a3|g2)-", node["machineType"]), node["machineType"]

    # Workers: one GPU type that scales from zero up to the cluster's max_workers.
    assert len(workers) == 1, f"expected one worker node type, got {sorted(workers)}"
    gpu = _gpu_worker(cfg)
    assert gpu["min_workers"] == 0
    assert 1 <= gpu.get("max_workers", cfg["max_workers"]) <= cfg["max_workers"]
    if cfg["provider"]["type"] == "gcp" and not gpu["node_config"]["machineType"].startswith(("a2-", "a3-", "g2-")):
        accel = gpu["node_config"]["guestAccelerators"]
        assert sum(a["acceleratorCount"] for a in accel) == gpu["resources"]["GPU"]
        assert gpu["node_config"]["scheduling"]["onHostMaintenance"] == "TERMINATE"


@pytest.mark.parametrize("name", LAUNCHERS)
@pytest.mark.parametrize("run", _shipped_gpu_configs())
def test_gpu_worker_fits_every_gpu_request_of_the_shipped_configs(name, run):
    # A request no node type can hold is infeasible: the autoscaler never launches a node for it and
    # the stage waits forever.
    res = _gpu_worker(_load(name))["resources"]
    for what, cpus, gpus in _gpu_requests(load_config(run)):
        assert cpus <= res["CPU"] and gpus <= res["GPU"], (
            f"{run}.yaml {what} asks for {cpus} CPU + {gpus} GPU; {name}'s GPU worker offers {res}")


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_installs_the_package_on_every_node(name):
    cfg = _load(name)
    assert cfg["file_mounts"].get("~/digzsl-ray") == "."
    assert "pip install -e ~/digzsl-ray" in cfg["setup_commands"]
    assert any("pip install -e" in c and "digzsl-ray[gpu]" in c for c in cfg["worker_setup_commands"])
    for cmd in _all_commands(cfg):
        # bash does not expand a tilde inside quotes: "~/digzsl-ray[gpu]" would be a relative path.
        assert not re.search(r"[\"']~/", cmd), f"quoted tilde is not expanded: {cmd}"


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_start_commands_are_the_standard_ones(name):
    cfg = _load(name)
    head, worker = cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]
    assert head[0] == "ray stop" and worker[0] == "ray stop"
    h = " ".join(head[1:])
    for flag in ("ray start --head", "--port=6379", "--autoscaling-config=~/ray_bootstrap_config.yaml",
                 "--dashboard-host=0.0.0.0"):
        assert flag in h, flag
    assert "ray start --address=$RAY_HEAD_IP:6379" in " ".join(worker[1:])


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_mounts_shared_storage_and_pins_ray(name):
    cfg = _load(name)
    init = " ".join(cfg["initialization_commands"])
    assert re.search(rf"mount -t nfs4? .* {SHARED}\)", init), init
    docker = cfg["docker"]
    assert f"-v {SHARED}:{SHARED}" in docker["run_options"]
    # The nodes run the Ray of the image; it must be the Ray this project is tested with.
    for key in ("image", "head_image", "worker_image"):
        if key in docker:
            assert f":{ray.__version__}-py311" in docker[key], (key, docker[key], ray.__version__)


# 2. KubeRay manifests --------------------------------------------------------------------------------
def _ray_pod_specs(cluster_spec: dict) -> list[dict]:
    specs = [cluster_spec["headGroupSpec"]["template"]["spec"]]
    specs += [g["template"]["spec"] for g in cluster_spec.get("workerGroupSpecs", [])]
    return specs


def _check_cluster_spec(cluster_spec: dict) -> None:
    assert cluster_spec["rayVersion"] == ray.__version__
    assert cluster_spec["enableInTreeAutoscaling"] is True
    head = cluster_spec["headGroupSpec"]
    head_container = head["template"]["spec"]["containers"][0]
    assert head_container["image"]
    assert "nvidia.com/gpu" not in head_container.get("resources", {}).get("limits", {})
    groups = [head] + cluster_spec.get("workerGroupSpecs", [])
    for g in groups:
        # KubeRay's CRD types rayStartParams as map[string]string: `num-cpus: 8` is rejected.
        for k, v in g.get("rayStartParams", {}).items():
            assert isinstance(v, str), f"rayStartParams.{k} must be a string, got {v!r}"
    for g in cluster_spec.get("workerGroupSpecs", []):
        assert g["groupName"] and 0 <= g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"]
    for spec in _ray_pod_specs(cluster_spec):
        image = spec["containers"][0]["image"]
        assert f":{ray.__version__}-py311" in image, image
        # Every Ray pod sees the run directory on the same ReadWriteMany claim.
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0].get("volumeMounts", [])}
        assert SHARED in mounts, f"{SHARED} is not mounted in {spec['containers'][0]['name']}"
        assert volumes[mounts[SHARED]]["persistentVolumeClaim"]["claimName"]


def _serve_app(serve_cfg: dict) -> dict:
    (app,) = serve_cfg["applications"]
    return app


def test_rayjob_manifest():
    job = _load("kuberay-rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["metadata"]["name"]
    spec = job["spec"]
    entry = " ".join(spec["entrypoint"].split())
    assert entry.startswith(PIPELINE_ENTRYPOINT), entry
    module = entry.split()[2]
    assert (REPO / (module.replace(".", "/") + ".py")).is_file(), f"entrypoint module {module} missing"
    assert spec["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"]
    cluster = spec["rayClusterSpec"]
    _check_cluster_spec(cluster)

    gpu_groups = [g for g in cluster["workerGroupSpecs"]
                  if int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1]
    assert len(gpu_groups) == 1
    (gpu,) = gpu_groups
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] == 8
    # The pod's logical CPUs (num-cpus, else the CPU limit) must hold cub.yaml's GPU actors.
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    cpus = float(gpu.get("rayStartParams", {}).get("num-cpus", limits["cpu"]))
    for what, need_cpus, need_gpus in _gpu_requests(load_config("cub")):
        assert need_cpus <= cpus and need_gpus <= int(limits["nvidia.com/gpu"]), what


def test_rayservice_manifest_serves_the_serve_config_app():
    from ray.serve.schema import ServeDeploySchema

    svc = _load("kuberay-rayservice.yaml")
    assert svc["apiVersion"] == "ray.io/v1" and svc["kind"] == "RayService"
    assert svc["metadata"]["name"]
    spec = svc["spec"]
    # A RayService's cluster is `rayClusterConfig` (`rayClusterSpec` belongs to RayJob).
    assert "rayClusterSpec" not in spec
    cluster = spec["rayClusterConfig"]
    _check_cluster_spec(cluster)
    for g in cluster["workerGroupSpecs"]:  # CPU replicas
        assert "nvidia.com/gpu" not in g["template"]["spec"]["containers"][0]["resources"].get("limits", {})

    serve_v2 = yaml.safe_load(spec["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_v2)
    app = _serve_app(serve_v2)
    assert app["import_path"] == SERVE_IMPORT_PATH
    # Same application as cluster/serve_config.yaml, plus a runtime_env that installs the package.
    reference = _load("serve_config.yaml")
    for key in ("proxy_location", "http_options"):
        assert serve_v2[key] == reference[key], key
    app = dict(app)
    runtime_env = app.pop("runtime_env")
    assert runtime_env["working_dir"] and runtime_env["pip"]
    assert app == _serve_app(reference)


# 3. Serve config -----------------------------------------------------------------------------------
def test_serve_config_matches_ray_serve_schema():
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import DeploymentSchema, ServeDeploySchema

    cfg = _load("serve_config.yaml")
    parsed = ServeDeploySchema.model_validate(cfg)
    assert parsed.proxy_location.value == "EveryNode"
    assert parsed.http_options.host == "0.0.0.0" and parsed.http_options.port == 8000
    app = _serve_app(cfg)
    assert app["name"] == "digzsl" and app["route_prefix"] == "/"
    assert app["import_path"] == SERVE_IMPORT_PATH
    assert app["args"]["run_dir"].startswith(SHARED + "/")

    deployments = {d["name"]: d for d in app["deployments"]}
    assert set(deployments) == SERVE_DEPLOYMENTS
    for name, dep in deployments.items():
        # DeploymentSchema ignores unknown keys, so a typo (or the removed max_concurrent_queries)
        # would pass silently: require known field names.
        unknown = set(dep) - set(DeploymentSchema.model_fields)
        assert not unknown, f"{name}: unknown deployment options {sorted(unknown)}"
        auto = AutoscalingConfig(**dep["autoscaling_config"])
        assert 1 <= auto.min_replicas <= auto.max_replicas
        assert auto.target_ongoing_requests <= dep["max_ongoing_requests"]
    classifier = deployments["Classifier"]
    assert classifier["max_ongoing_requests"] == 32
    assert classifier["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}
    assert classifier["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 0}
    # @serve.batch can only fill a batch if a replica accepts that many requests at once.
    assert classifier["max_ongoing_requests"] >= ServeConfig().max_batch_size


def test_serve_schema_rejects_broken_copies():
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    for path, value in ((("import_path",), "digzsl_ray.serve:build:app"),
                        (("deployments", 0, "max_ongoing_requests"), 0),
                        (("deployments", 0, "num_replicas"), 2)):  # fixed count + autoscaling
        cfg = copy.deepcopy(_load("serve_config.yaml"))
        node = _serve_app(cfg)
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value
        with pytest.raises(ValidationError):
            ServeDeploySchema.model_validate(cfg)


def test_serve_import_path_is_consistent_with_the_package():
    # Every file in cluster/ names the same app builder ...
    mentions = set()
    for f in sorted(CLUSTER.iterdir()):
        mentions |= set(re.findall(r"digzsl_ray[\w.]*:\w+", f.read_text()))
    assert mentions == {SERVE_IMPORT_PATH}, mentions
    # ... which the package digzsl_ray/serve/ exports. Read it without importing it.
    module, attr = SERVE_IMPORT_PATH.split(":")
    package = REPO / module.replace(".", "/")
    assert (package / "__init__.py").is_file(), f"{module} is not a package"
    trees = {p.name: ast.parse(p.read_text()) for p in sorted(package.glob("*.py"))}
    init = trees["__init__.py"]
    exported = {a.asname or a.name for n in init.body if isinstance(n, ast.ImportFrom) for a in n.names}
    defined = {n.name for t in trees.values() for n in t.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assert attr in exported and attr in defined, f"{module} exports no top-level {attr}()"
    names = {n.name for t in trees.values() for n in ast.walk(t) if isinstance(n, ast.ClassDef)}
    names |= {n.value for t in trees.values() for n in ast.walk(t) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    missing = SERVE_DEPLOYMENTS - names
    assert not missing, f"serve_config.yaml configures deployments {sorted(missing)} that {module} does not define"
