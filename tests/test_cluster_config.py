"""The shipped cluster files define everything the sweep needs to reach its database and
its disk, and hold no credential (issue 17, sections 5 and 7).

Ray's own `validate_config` is run on cluster.yaml in test_cluster.py; these checks are the
ones Ray cannot make: that the host, port, path and environment variable the cluster spec
(search_spaces/cluster_gpu.yaml) relies on are defined by the file that starts the cluster.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml

from scaling.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ["cluster.yaml", "deploy/kuberay.yaml", "search_spaces/cluster_gpu.yaml", "search_spaces/optimize.yaml",
           "README.md"]
URL_VAR = "SCALING_OPTUNA_URL"
# user:password@ in a URL, where the password is a literal (not a ${VAR}, $(VAR), <...> or ***)
LITERAL_CREDENTIAL = re.compile(r"://[A-Za-z0-9_.\-]+:(?!\*\*\*@|\$|<|\")[^@\s/'\"]+@")


def _kuberay() -> list[dict]:
    return [d for d in yaml.safe_load_all((ROOT / "deploy" / "kuberay.yaml").read_text()) if d]


def _launcher() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def _cluster_spec():
    return load_spec(ROOT / "search_spaces" / "cluster_gpu.yaml")


# -- no credential in any shipped file ----------------------------------------------------
def literal_credentials(text: str) -> list[str]:
    found = [m.group(0) for m in LITERAL_CREDENTIAL.finditer(text)]
    found += re.findall(r"(?i)PASSWORD\s+'[^':]+'", text)  # SQL: CREATE USER x WITH PASSWORD 'literal'
    found += re.findall(r"(?m)^\s*POSTGRES_PASSWORD:\s*\S+", text)  # a Secret's stringData
    return found


@pytest.mark.parametrize("name", SHIPPED)
def test_no_shipped_file_holds_a_credential(name):
    assert literal_credentials((ROOT / name).read_text()) == []


@pytest.mark.parametrize("text", [
    "optuna: postgresql://optuna:optuna@ray-head:5432/optuna",
    "- sudo -u postgres psql -c \"CREATE USER optuna WITH PASSWORD 'optuna';\"",
    "stringData:\n  POSTGRES_PASSWORD: optuna\n",
])  # fmt: skip
def test_the_credential_check_catches_what_we_shipped_before(text):
    assert literal_credentials(text)


def test_the_cluster_spec_reads_its_storage_url_from_the_environment(monkeypatch, tmp_path):
    spec = _cluster_spec()
    assert spec.storage.optuna == f"${{{URL_VAR}}}"
    assert spec.storage.results_dir.startswith("/mnt/cluster_storage/")
    monkeypatch.delenv(URL_VAR, raising=False)
    with pytest.raises(SpecError, match=URL_VAR):
        spec.optuna_url(tmp_path)
    monkeypatch.setenv(URL_VAR, "postgresql://optuna:s3cret@10.0.0.5:5432/optuna")
    assert spec.optuna_url(tmp_path) == "postgresql://optuna:s3cret@10.0.0.5:5432/optuna"


# -- KubeRay: the head's URL names this file's Service, port and Secret ------------------------
def kuberay_problems(docs: list[dict]) -> list[str]:
    problems: list[str] = []
    rc = next(d for d in docs if d.get("kind") == "RayCluster")
    head = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = head.get("env", [])
    names = [e["name"] for e in env]
    if URL_VAR not in names:
        return [f"the head container defines no {URL_VAR} (the cluster spec's storage.optuna)"]
    url = next(e.get("value", "") for e in env if e["name"] == URL_VAR)
    m = re.match(r"^postgresql://(?P<user>[^:@]+):(?P<pw>[^@]*)@(?P<host>[^:/]+):(?P<port>\d+)/(?P<db>\w+)$", url)
    if not m:
        return [f"{URL_VAR} is not a postgresql://user:pw@host:port/db URL: {url!r}"]
    # $(VAR) is filled in by Kubernetes only from entries defined above it in the same list
    for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", url):
        if ref not in names[: names.index(URL_VAR)]:
            problems.append(f"{URL_VAR} uses $({ref}), which no env entry above it defines")
    secrets_used = {
        (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in env if "secretKeyRef" in e.get("valueFrom", {})
    }  # fmt: skip
    pw_ref = re.fullmatch(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", m["pw"])
    if not pw_ref:
        problems.append(f"the password in {URL_VAR} must come from a Secret, got a literal")
    else:
        entry = next((e for e in env if e["name"] == pw_ref.group(1)), {})
        if "secretKeyRef" not in entry.get("valueFrom", {}):
            problems.append(f"{pw_ref.group(1)} must be read from a Secret (valueFrom.secretKeyRef)")
    services = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "Service"}
    svc = services.get(m["host"])
    if svc is None:
        return problems + [f"{URL_VAR} names host {m['host']!r}, which no Service of this file defines"]
    ports = {p["port"]: p.get("targetPort", p["port"]) for p in svc["spec"].get("ports", [])}
    if int(m["port"]) not in ports:
        problems.append(f"Service {m['host']!r} exposes ports {sorted(ports)}, the URL uses {m['port']}")
    # the Service selects the database's pods, which listen on the target port and take the
    # user, database and password the URL uses
    sel = svc["spec"].get("selector", {})
    sts = [d for d in docs if d.get("kind") == "StatefulSet"
           and all(d["spec"]["template"]["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]  # fmt: skip
    if len(sts) != 1:
        return problems + [f"Service {m['host']!r} selects {len(sts)} StatefulSets, expected the database's one"]
    db = sts[0]["spec"]["template"]["spec"]["containers"][0]
    if ports.get(int(m["port"])) not in {p["containerPort"] for p in db.get("ports", [])}:
        problems.append(f"the database container does not listen on the Service's target port {ports.get(int(m['port']))}")
    db_env = {e["name"]: e for e in db.get("env", [])}
    if db_env.get("POSTGRES_USER", {}).get("value") != m["user"]:
        problems.append(f"the database's POSTGRES_USER is not the URL's user {m['user']!r}")
    if db_env.get("POSTGRES_DB", {}).get("value") != m["db"]:
        problems.append(f"the database's POSTGRES_DB is not the URL's database {m['db']!r}")
    db_pw = db_env.get("POSTGRES_PASSWORD", {}).get("valueFrom", {}).get("secretKeyRef")
    if not db_pw or (db_pw["name"], db_pw["key"]) not in secrets_used:
        problems.append("the database's POSTGRES_PASSWORD and the head's password must come from one Secret key")
    return problems


def test_kuberay_head_reaches_the_database_this_file_defines():
    docs = _kuberay()
    assert kuberay_problems(docs) == []
    # the Secret both sides read is the one the README tells the user to create
    rc = next(d for d in docs if d["kind"] == "RayCluster")
    env = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    ref = next(e["valueFrom"]["secretKeyRef"] for e in env if "secretKeyRef" in e.get("valueFrom", {}))
    readme = (ROOT / "README.md").read_text()
    assert f"kubectl create secret generic {ref['name']} --from-literal={ref['key']}=" in readme


@pytest.mark.parametrize("breakage", ["wrong_host", "wrong_port", "literal_password", "unordered_env", "db_user"])
def test_a_kuberay_file_that_cannot_reach_its_database_is_caught(breakage):
    docs = copy.deepcopy(_kuberay())
    rc = next(d for d in docs if d["kind"] == "RayCluster")
    env = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    url = next(e for e in env if e["name"] == URL_VAR)
    if breakage == "wrong_host":
        url["value"] = url["value"].replace("@optuna-postgres:", "@ray-head:")
    elif breakage == "wrong_port":
        url["value"] = url["value"].replace(":5432/", ":5433/")
    elif breakage == "literal_password":
        url["value"] = re.sub(r":\$\([A-Z_]+\)@", ":optuna@", url["value"])
    elif breakage == "unordered_env":
        env.remove(url)
        env.insert(0, url)
    elif breakage == "db_user":
        sts = next(d for d in docs if d["kind"] == "StatefulSet")
        for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]:
            if e["name"] == "POSTGRES_USER":
                e["value"] = "postgres"
    assert kuberay_problems(docs)


# -- the launcher: the head sets the URL, PostgreSQL listens on the network, the run dir exists ---
def launcher_problems(cfg: dict, results_dir: str) -> list[str]:
    problems: list[str] = []
    cmds = cfg.get("head_setup_commands", [])
    text = "\n".join(cmds)
    env_file = re.search(rf"export {URL_VAR}=(.+?)\"\s*>\s*(\S+)", text)
    if not env_file:
        return [f"no head setup command writes `export {URL_VAR}=...` to a file the sweep sources"]
    url, path = env_file.group(1).rstrip('"'), env_file.group(2).rstrip(")")
    m = re.match(r"^postgresql://(?P<user>\w+):(?P<pw>.+)@(?P<host>.+):(?P<port>\d+)/(?P<db>\w+)$", url)
    if not m:
        return [f"{URL_VAR} is not a postgresql URL: {url!r}"]
    if not m["pw"].startswith("$("):
        problems.append("the database password must be drawn on the head ($(...)), not written in the file")
    if not m["host"].startswith("$("):
        problems.append(f"the host {m['host']!r} is a literal: the head's address must be read on the head")
    if m["port"] != "5432":
        problems.append(f"the URL's port {m['port']} is not PostgreSQL's 5432, where the head's server listens")
    if not re.search(r"listen_addresses = '\*'", text):
        problems.append("PostgreSQL must listen on the cluster network, not localhost only (listen_addresses)")
    if not re.search(r"host\s+{}\s+{}\s+samenet\s+scram-sha-256".format(m["db"], m["user"]), text):
        problems.append("pg_hba.conf must let the URL's user reach its database from the cluster network")
    if not re.search(r"createdb -O {} {}".format(m["user"], m["db"]), text):
        problems.append(f"no command creates database {m['db']!r} owned by {m['user']!r}")
    if "umask 077" not in text:
        problems.append("the password and env files must be written with umask 077")
    if not any(shlex.split(c)[:3] == ["sudo", "mkdir", "-p"] and results_dir in c for c in cmds):
        problems.append(f"no head setup command creates the spec's results_dir {results_dir}")
    readme = (ROOT / "README.md").read_text()
    if f"source {path}" not in readme:
        problems.append(f"the README's sweep command does not source {path}")
    if any("--dashboard-host=0.0.0.0" in c for c in cfg.get("head_start_ray_commands", [])):
        problems.append("the Ray dashboard must keep Ray's default host (reach it with `ray dashboard`)")
    return problems


def test_the_launcher_head_defines_the_url_port_and_path_the_spec_needs():
    assert launcher_problems(_launcher(), _cluster_spec().storage.results_dir) == []


@pytest.mark.parametrize("breakage", ["no_env_file", "localhost_only", "literal_host", "no_results_dir", "open_dashboard"])
def test_a_launcher_file_that_cannot_reach_its_database_is_caught(breakage):
    cfg = copy.deepcopy(_launcher())
    cmds = cfg["head_setup_commands"]
    if breakage == "no_env_file":
        cfg["head_setup_commands"] = [c for c in cmds if URL_VAR not in c]
    elif breakage == "localhost_only":
        cfg["head_setup_commands"] = [c for c in cmds if "listen_addresses" not in c]
    elif breakage == "literal_host":
        cfg["head_setup_commands"] = [re.sub(r"@\$\(hostname[^)]*\)", "@ray-head", c) for c in cmds]
    elif breakage == "no_results_dir":
        cfg["head_setup_commands"] = [c for c in cmds if "/mnt/cluster_storage" not in c]
    elif breakage == "open_dashboard":
        cfg["head_start_ray_commands"] = [c + " --dashboard-host=0.0.0.0" for c in cfg["head_start_ray_commands"]]
    assert launcher_problems(cfg, _cluster_spec().storage.results_dir)
