"""The cluster: a worker node dies mid-sweep (a real multi-node Ray on this machine), and the
shipped cluster configs (Ray's cluster launcher, KubeRay) pass the checks their tools make.

Nothing lives only on a node: trials report to the driver, the driver writes the table and
Ray Tune's state under the run directory (storage_path), so losing a node loses no row.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from pathlib import Path

import optuna
import psutil
import pytest
import yaml
from conftest import live_trials

from scaling.records import read_results
from scaling.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "rayproject/ray:2.60.0-py311-cu128"


# -- 3. a worker node dies ---------------------------------------------------------------
def _descendants(pid: int) -> set[int]:
    if pid <= 0:
        return set()
    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return set()


def _raylet_pid(node) -> int:
    import ray._private.ray_constants as rc

    try:
        return node.all_processes[rc.PROCESS_TYPE_RAYLET][0].process.pid
    except (AttributeError, KeyError, IndexError):  # a node still starting or already gone
        return -1


def _runs_a_trial(node) -> bool:
    for pid in _descendants(_raylet_pid(node)):
        try:
            if " ".join(psutil.Process(pid).cmdline()).startswith("ray::ImplicitFunc"):
                return True
        except psutil.Error:
            pass
    return False


@pytest.fixture
def three_node_cluster(tiny_model_dir):
    """A head that runs no trials (0 CPUs) and two 1-CPU worker nodes, all on this machine."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
def test_a_worker_node_dies_mid_sweep_and_its_trial_reruns_elsewhere(three_node_cluster, tmp_path):
    import ray

    from scaling.sweep import run_sweep

    cluster = three_node_cluster
    assert ray.cluster_resources()["CPU"] == 2 and len([n for n in ray.nodes() if n["Alive"]]) == 3
    spec = parse_spec({
        "name": "nodeloss",
        "axes": {"dataset_size": [128], "epochs": [3]},
        "learning_rate": {"low": 1e-3, "high": 3e-2},
        "trials_per_cell": 4,
        "eval": {"validation_size": 64, "test_size": 64},
        "resources": {"cpus": 1, "max_failures": 2},  # a node loss is an infrastructure fault
        "sampler": {"extra_trials": 0},  # a fixed budget: the trial counts below are exact
    })  # fmt: skip
    run = tmp_path / "run"
    where: dict[int, str] = {}  # worker pid -> the node (raylet pid) it ran on
    event: dict = {}
    box: dict = {}

    def sweep() -> None:
        try:
            box["res"] = run_sweep(spec, out=run)
        except BaseException as err:  # surfaced below
            box["err"] = err

    # the sweep runs in a thread; this (main) thread watches and kills, as Ray's node
    # management wants the main thread
    sweeper = threading.Thread(target=sweep)
    sweeper.start()
    t0 = time.monotonic()
    while sweeper.is_alive() and time.monotonic() - t0 < 400:
        nodes = list(cluster.worker_nodes)
        for n in nodes:
            for pid in _descendants(_raylet_pid(n)):
                where.setdefault(pid, str(_raylet_pid(n)))
        if "removed" not in event and any(epochs >= 1 for *_, epochs in live_trials(run / "optuna.db")):
            # a trial is mid-training: take down a worker node that is running one
            victim = next((n for n in nodes if _runs_a_trial(n)), None)
            if victim is not None:
                event["dead_pids"] = _descendants(_raylet_pid(victim))
                event["dead_node"] = str(_raylet_pid(victim))
                event["removed"] = time.monotonic()
                cluster.remove_node(victim, allow_graceful=False)
                cluster.add_node(num_cpus=1)  # a replacement, as an autoscaler would add
        time.sleep(0.2)
    sweeper.join(timeout=60)
    assert "err" not in box, box.get("err")
    res = box["res"]

    assert "removed" in event, "no node was removed mid-trial"
    assert res.counts == {"ok": 4, "failed": 0, "pruned": 0}
    df = read_results(run)
    assert not df.duplicated(["trial_id", "epoch"]).any()
    assert df["trial_id"].nunique() == 4 and len(df) == 4 * 3 and set(df["status"]) == {"ok"}
    # no row comes from the dead node's processes: its half-finished attempt was dropped
    assert not set(df["worker_pid"]) & event["dead_pids"]
    # the trial(s) it was running were retried by Ray and finished on another node
    attempts = {}
    for f in (run / "ray").glob("*/experiment_state-*.json"):
        for trial_json, runtime_json in json.loads(f.read_text())["trial_data"]:
            cfg = json.loads(trial_json)["config"]
            attempts[f"{cfg['optuna_study']}#{cfg['optuna_trial']}"] = json.loads(runtime_json)["num_failures"]
    retried = [t for t, n in attempts.items() if n >= 1]
    assert retried, attempts
    for tid in retried:
        nodes_used = {where.get(int(p)) for p in df[df.trial_id == tid]["worker_pid"]}
        assert event["dead_node"] not in nodes_used and None not in nodes_used, (tid, nodes_used)
    storage = optuna.storages.RDBStorage(res.optuna_url)
    trials = optuna.load_study(study_name="nodeloss/D=128,E=3,r=8", storage=storage).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    print(f"\nnode lost mid-trial; retried {retried} on another node; {len(df)} rows, 0 lost, 0 duplicated")


# -- 8. cluster.yaml: Ray's own config validation -----------------------------------------
def _ray_validate(cfg: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cfg)))


def test_cluster_yaml_passes_rays_validation():
    import ray

    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    _ray_validate(cfg)
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # the head runs no trials
    gpu = cfg["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1  # autoscales from 0
    assert cfg["docker"]["image"] == IMAGE
    assert IMAGE.split(":")[1].startswith(ray.__version__ + "-"), "the image's Ray must be the tested Ray"


@pytest.mark.parametrize(
    "broken",
    [
        {"max_workers": "eight"},  # wrong type
        {"head_node_type": "head_typo"},  # not a node type
        {"worker_nodes_typo": {}},  # unknown key
        {"available_node_types.gpu_worker.min_workers": 100},  # more than max_workers
        {"provider": None},  # required section missing
    ],
)
def test_a_broken_cluster_yaml_fails_rays_validation(broken):
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    for key, value in broken.items():
        *parents, last = key.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        if value is None:
            del node[last]
        else:
            node[last] = value
    import jsonschema  # Ray's schema validator

    with pytest.raises((jsonschema.ValidationError, ValueError, KeyError)):
        _ray_validate(cfg)


def test_cluster_spec_writes_to_shared_storage():
    spec = load_spec(ROOT / "search_spaces" / "cluster_gpu.yaml")
    assert spec.storage.optuna == "${SCALING_OPTUNA_URL}"  # one PostgreSQL, set by the cluster (test_cluster_config)
    assert spec.storage.results_dir.startswith("/mnt/cluster_storage/")  # the shared volume
    assert spec.resources.gpus == 1 and spec.resources.max_failures >= 1
    assert spec.packing.adapters_per_worker == 8  # one pack of 8 trials per GPU (measured to win there)


# -- 8. deploy/kuberay.yaml: a RayCluster whose head runs no trials, GPU workers from 0 ---------
def raycluster_problems(docs: list[dict]) -> list[str]:
    """What is wrong with a KubeRay deployment, as KubeRay and Kubernetes would see it."""
    problems: list[str] = []
    kinds = {d.get("kind") for d in docs}
    rcs = [d for d in docs if d.get("kind") == "RayCluster"]
    if len(rcs) != 1:
        return [f"expected one RayCluster, found {len(rcs)} (kinds: {sorted(map(str, kinds))})"]
    rc = rcs[0]
    if rc.get("apiVersion") != "ray.io/v1":
        problems.append(f"apiVersion must be ray.io/v1, got {rc.get('apiVersion')!r}")
    spec = rc.get("spec", {})
    if not spec.get("enableInTreeAutoscaling"):
        problems.append("spec.enableInTreeAutoscaling must be true (GPU workers scale from 0)")
    head = spec.get("headGroupSpec", {})
    groups = [("headGroupSpec", head)] + [(f"workerGroupSpecs[{i}]", g) for i, g in enumerate(spec.get("workerGroupSpecs", []))]
    pvcs = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "PersistentVolumeClaim"}
    for where, g in groups:
        params = g.get("rayStartParams")
        if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
            problems.append(f"{where}.rayStartParams must map names to strings, got {params!r}")
        pod = g.get("template", {}).get("spec", {})
        containers = pod.get("containers", [])
        if not containers or containers[0].get("image") != IMAGE:
            problems.append(f"{where}: the first container must run {IMAGE}")
            continue
        c = containers[0]
        claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod.get("volumes", [])}
        mounts = {m["mountPath"]: claims.get(m["name"]) for m in c.get("volumeMounts", [])}
        claim = mounts.get("/mnt/cluster_storage")
        if claim not in pvcs:
            problems.append(f"{where}: /mnt/cluster_storage must mount a PersistentVolumeClaim of this file")
        elif "ReadWriteMany" not in pvcs[claim]["spec"].get("accessModes", []):
            problems.append(f"{where}: claim {claim!r} must be ReadWriteMany (every pod shares it)")
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        if not str(env.get("SCALING_CACHE", "")).startswith("/mnt/cluster_storage/"):
            problems.append(f"{where}: SCALING_CACHE must be on the shared volume (the base model is built once)")
    if head.get("rayStartParams", {}).get("num-cpus") != "0":
        problems.append("headGroupSpec.rayStartParams.num-cpus must be \"0\": the head runs no trials")
    gpu_groups = [
        g for g in spec.get("workerGroupSpecs", [])
        if int(g.get("template", {}).get("spec", {}).get("containers", [{}])[0].get("resources", {})
               .get("limits", {}).get("nvidia.com/gpu", 0)) >= 1
    ]  # fmt: skip
    if not gpu_groups:
        problems.append("no worker group asks for nvidia.com/gpu")
    for g in gpu_groups:
        if g.get("minReplicas") != 0 or g.get("replicas", 0) != 0 or not g.get("maxReplicas", 0) >= 1:
            problems.append(f"GPU group {g.get('groupName')!r} must autoscale from 0 (minReplicas 0, replicas 0, maxReplicas >= 1)")
    for d in docs:
        name = d.get("metadata", {}).get("name", "")
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 63:
            problems.append(f"{d.get('kind')} name {name!r} is not a valid Kubernetes name")
    services = [d for d in docs if d.get("kind") == "Service"]
    if not any(p.get("port") == 5432 for s in services for p in s["spec"].get("ports", [])):
        problems.append("no Service on port 5432: the Optuna storage (PostgreSQL) is missing")
    return problems


def _kuberay_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all((ROOT / "deploy" / "kuberay.yaml").read_text()) if d]


def test_kuberay_yaml_has_the_cluster_we_document():
    import ray

    docs = _kuberay_docs()
    assert raycluster_problems(docs) == []
    rc = next(d for d in docs if d["kind"] == "RayCluster")
    assert rc["spec"]["rayVersion"] == ray.__version__
    # the Optuna storage URL documented in the README points at the Service of this file
    svc = next(d for d in docs if d["kind"] == "Service" and d["spec"]["ports"][0]["port"] == 5432)
    assert f"@{svc['metadata']['name']}:5432/" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize(
    "breakage",
    ["head_runs_trials", "gpu_group_starts_at_1", "wrong_image", "non_string_param", "no_shared_volume"],
)
def test_a_broken_kuberay_yaml_is_caught(breakage):
    docs = copy.deepcopy(_kuberay_docs())
    rc = next(d for d in docs if d["kind"] == "RayCluster")["spec"]
    gpu = rc["workerGroupSpecs"][0]
    if breakage == "head_runs_trials":
        del rc["headGroupSpec"]["rayStartParams"]["num-cpus"]
    elif breakage == "gpu_group_starts_at_1":
        gpu["minReplicas"] = 1
    elif breakage == "wrong_image":
        gpu["template"]["spec"]["containers"][0]["image"] = "rayproject/ray:latest"
    elif breakage == "non_string_param":
        rc["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    elif breakage == "no_shared_volume":
        gpu["template"]["spec"]["volumes"] = []
    assert raycluster_problems(docs)
