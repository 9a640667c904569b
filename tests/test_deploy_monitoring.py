"""The shipped monitoring works against real servers, not just on paper.

- promtool accepts deploy/prometheus/prometheus.yml and the rule files, and the alerts fire
  (and stay quiet) on synthetic series at the documented thresholds (`promtool test rules`).
- Every PromQL expression in the Grafana dashboards and the rule files is sent to a real
  Prometheus (Debian's `prometheus` binary) that scrapes the real pipeline
  (`gait-stream start --duration 60 --metrics-port <port>`) and the real Ray it runs on, and
  must parse and return data.

Rules for "returns data" (stated here because they are the contract of the dashboards):
- An expression returns data when the instant query yields at least one sample with a finite
  value (a quantile of an empty histogram is NaN: that is not data).
- Dashboard template variables are substituted as Grafana would with their saved selection:
  "All" becomes the variable's allValue (".*"), a saved list becomes "(a|b)";
  `$__rate_interval` becomes 20s (4 x the shipped 5 s scrape interval).
- Alert expressions are filters that are empty while the lab is healthy, so each one is sent
  twice: as written (must parse) and with `bool` after each comparison with a number (must
  return data: one 0/1 sample per watched series). Prometheus must also report every loaded
  rule with health "ok".
- Ray's metrics (`ray_...`): Ray's metrics agent runs without the dashboard (checked on Ray
  2.60: `include_dashboard=False` still serves ray_node_* on the metrics-export port; only the
  file_sd list /tmp/ray/prom_metrics_service_discovery.json needs the dashboard). This test
  starts the Ray head itself (`ray start --head --metrics-export-port ...`), runs the pipeline
  on it through RAY_ADDRESS and writes the file_sd list in Ray's format, so Ray metrics are
  always available here and every `ray_` expression must return data — except GPU ones
  (`ray_node_gpus_*`, `ray_node_gram_*`), which Ray only exports on nodes with a GPU: they
  must parse, and must return data only when `nvidia-smi -L` lists a GPU on this machine.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
PROM_DIR = DEPLOY / "prometheus"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
RULE_FILES = sorted((PROM_DIR / "rules").glob("*.yml"))
DASHBOARD_DIR = DEPLOY / "grafana" / "dashboards"
DASHBOARDS = sorted(DASHBOARD_DIR.glob("*.json"))
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"

INSTALL_HINT = (
    "is not installed: .ci/run installs Prometheus (server + promtool) with "
    "deploy/prometheus/install.sh (Debian package `prometheus`); run that script (as root)"
)
RATE_INTERVAL = "20s"  # Grafana's $__rate_interval for the shipped 5 s scrape interval.
GPU_METRIC = re.compile(r"\bray_node_(gpus?_|gram_)")
RAY_START_TIMEOUT_S = 45.0  # Ray head up, metrics agent answering (5 s idle, 20+ s loaded).
PIPELINE_START_TIMEOUT_S = 45.0  # `gait-stream start` serving its metrics endpoint.
DATA_TIMEOUT_S = 35.0  # every expression returning data once Prometheus scrapes (1 s).


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_binary(name: str) -> str:
    """The path of a Prometheus tool; a missing one is a failure that says how to install it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` {INSTALL_HINT}")
    return path


def venv_script(name: str) -> str:
    """A console script of this environment (`ray`, `gait-stream`) next to the interpreter."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` not found beside {sys.executable} or on PATH: run `make setup`")
    return found


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """GET returning (status, body) for 2xx and 4xx alike (Prometheus puts errors in 4xx bodies)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_for(
    what: str,
    check: Callable[[], bool],
    timeout: float,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
) -> None:
    """Poll `check` until true; fail after `timeout` s, or at once if `proc` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: process exited with {proc.returncode}\n{tail(log)}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.25)
    pytest.fail(f"{what}: not ready after {timeout:.0f} s\n{tail(log)}")


def tail(log: Path | None, n: int = 40) -> str:
    """The end of a subprocess log, for failure messages."""
    if log is None or not log.exists():
        return ""
    lines = log.read_text(errors="replace").splitlines()
    return f"--- last {n} lines of {log} ---\n" + "\n".join(lines[-n:])


def stop_process(
    proc: subprocess.Popen,
    first: int = signal.SIGINT,
    grace: float = 15.0,
    *,
    leader_only: bool = False,
) -> None:
    """Stop a process we started in its own session: `first`, then SIGTERM, then SIGKILL.

    `first` goes to the whole process group, or only to the leader with `leader_only` (a
    blocking `ray start` shuts its own children down on SIGINT within seconds, while SIGTERM
    makes its raylet drain for 30 s). The escalations always go to the group.
    """
    steps = (
        (first, grace, leader_only),
        (signal.SIGTERM, 5.0, False),
        (signal.SIGKILL, 5.0, False),
    )
    for sig, wait, leader in steps:
        if proc.poll() is not None:
            return
        try:
            if leader:
                proc.send_signal(sig)
            else:
                os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


# --------------------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Expression:
    """One PromQL expression and where it was found (for failure messages)."""

    source: str
    expr: str
    alert: bool = False


def dashboard_expressions(path: Path) -> list[Expression]:
    """Every "expr" of every panel target (rows and nested panels included)."""
    found: list[Expression] = []

    def walk(node: Any, title: str) -> None:
        if isinstance(node, dict):
            title = node.get("title", title) if "targets" in node or "panels" in node else title
            expr = node.get("expr")
            if isinstance(expr, str) and expr.strip():
                found.append(Expression(f"{path.name}: {title!r} {node.get('refId', '')}", expr))
            for value in node.values():
                walk(value, title)
        elif isinstance(node, list):
            for value in node:
                walk(value, title)

    walk(json.loads(path.read_text())["panels"], "")
    return found


def rule_expressions(path: Path) -> list[Expression]:
    """Every recording and alerting rule expression of a rule file."""
    doc = yaml.safe_load(path.read_text())
    return [
        Expression(
            f"{path.name}: {rule.get('alert') or rule.get('record')}", rule["expr"], "alert" in rule
        )
        for group in doc["groups"]
        for rule in group["rules"]
    ]


LABEL_VALUES = re.compile(r"^\s*label_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*(\w+)\s*\)\s*$")


@dataclass(frozen=True)
class Variable:
    """A dashboard template variable of the form label_values(metric, label)."""

    dashboard: str
    name: str
    metric: str
    label: str
    value: str  # what Grafana substitutes for the saved selection


def dashboard_variables(path: Path) -> list[Variable]:
    """The template variables, with the value Grafana substitutes for their saved selection."""
    out = []
    for var in json.loads(path.read_text()).get("templating", {}).get("list", []):
        query = var.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        match = LABEL_VALUES.match(query or "")
        assert match, f"{path.name}: variable ${var['name']} is not label_values(metric, label)"
        current = var.get("current", {}).get("value", "$__all")
        values = current if isinstance(current, list) else [current]
        if "$__all" in values:
            value = var.get("allValue") or ".*"
        else:
            value = values[0] if len(values) == 1 else "(" + "|".join(values) + ")"
        out.append(Variable(path.name, var["name"], match[1], match[2], value))
    return out


VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Grafana's substitution of template and built-in variables; an unknown one is an error."""

    def one(match: re.Match) -> str:
        name = match[1] or match[2]
        if name == "__rate_interval":
            return RATE_INTERVAL
        if name not in variables:
            raise AssertionError(f"unknown dashboard variable ${name} in {expr!r}")
        return variables[name]

    return VARIABLE.sub(one, expr)


COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)(?!\s*bool\b)\s*(?=[-+]?\.?\d)")


def as_bool_comparison(expr: str) -> str:
    """`x > 0.02` -> `x > bool 0.02`: a sample per watched series, healthy or not."""
    return COMPARISON.sub(r"\1 bool ", expr)


# --------------------------------------------------------------------------- Prometheus


@dataclass
class PrometheusServer:
    """A running Prometheus on loopback and the bits of its HTTP API the tests use."""

    url: str
    config: Path
    log: Path

    def api(self, path: str, **params: str) -> tuple[int, dict]:
        query = urllib.parse.urlencode(params)
        status, body = http_get(f"{self.url}/api/v1/{path}?{query}", timeout=5.0)
        return status, json.loads(body)

    def query(self, expr: str) -> tuple[bool, str, list]:
        """(ok, error, samples) of an instant query; samples as (labels, float value)."""
        status, doc = self.api("query", query=expr)
        if status != 200 or doc.get("status") != "success":
            return False, f"HTTP {status}: {doc.get('errorType')}: {doc.get('error')}", []
        data = doc["data"]
        if data["resultType"] == "scalar":
            return True, "", [({}, float(data["result"][1]))]
        if data["resultType"] == "vector":
            return True, "", [(s["metric"], float(s["value"][1])) for s in data["result"]]
        return True, "", [(s["metric"], float(s["values"][-1][1])) for s in data["result"]]


def write_test_config(directory: Path, gait_targets: list[str], ray_targets: list[str]) -> Path:
    """A copy of the shipped config: 1 s intervals (3 s for Ray), absolute rule paths, the targets.

    The "ray" job keeps its file_sd shape; its file is written here in Ray's own format
    (what Ray's dashboard writes to /tmp/ray/prom_metrics_service_discovery.json).
    """
    config = yaml.safe_load(PROM_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str((PROM_DIR / p).resolve()) for p in config["rule_files"]]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) >= {"gait-stream", "ray"}, f"shipped scrape jobs: {sorted(jobs)}"
    jobs["gait-stream"]["static_configs"] = [{"targets": gait_targets}]
    sd_file = directory / "prom_metrics_service_discovery.json"
    sd_file.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": ray_targets}]))
    jobs["ray"]["file_sd_configs"] = [{"files": [str(sd_file)], "refresh_interval": "1s"}]
    # Ray's endpoint is large and slow under load (2 s measured on a busy 2-CPU machine): a
    # 1 s timeout would lose whole scrapes of it.
    jobs["ray"].update(scrape_interval="3s", scrape_timeout="3s")
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def prometheus_server() -> Iterator[Callable[[list[str], list[str]], PrometheusServer]]:
    """Factory: start a real Prometheus (shipped config, 1 s scrapes) on given targets.

    Each server gets a loopback port, a temporary TSDB and config folder; all are stopped and
    removed at teardown.
    """
    binary = require_binary("prometheus")
    started: list[tuple[subprocess.Popen, Path]] = []

    def start(gait_targets: list[str], ray_targets: list[str]) -> PrometheusServer:
        workdir = Path(tempfile.mkdtemp(prefix="gs-prom-"))
        config = write_test_config(workdir, gait_targets, ray_targets)
        port = free_port()
        log = workdir / "prometheus.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append((proc, workdir))
        server = PrometheusServer(f"http://127.0.0.1:{port}", config, log)
        wait_for(
            "prometheus /-/ready",
            lambda: http_get(f"{server.url}/-/ready")[0] == 200,
            15.0,
            proc,
            log,
        )
        return server

    yield start
    for proc, workdir in started:
        stop_process(proc, signal.SIGTERM)
        shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------- Ray + pipeline


@dataclass
class RayHead:
    address: str
    metrics_port: int


def metrics_text(port: int) -> str:
    """The Prometheus text a /metrics endpoint on loopback serves now ('' when it does not)."""
    try:
        status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    except OSError:
        return ""
    return body.decode(errors="replace") if status == 200 else ""


@pytest.fixture
def ray_head() -> Iterator[RayHead]:
    """A Ray head of its own (ray start --block) with a known metrics-export port.

    Own temp dir (so `ray.init()` elsewhere never finds it), own ports; stopped with SIGINT to
    the blocking `ray start`, which takes its processes down with it (never `ray stop`, which
    would stop every Ray on the machine).
    """
    temp_dir = Path(tempfile.mkdtemp(prefix="gs-ray-", dir="/tmp"))  # short: socket paths
    gcs_port, metrics_port = free_port(), free_port()
    log = temp_dir / "ray-start.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                venv_script("ray"),
                "start",
                "--head",
                "--block",
                "--disable-usage-stats",
                "--include-dashboard=false",
                f"--port={gcs_port}",
                f"--metrics-export-port={metrics_port}",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}",
                "--num-cpus=8",
                "--object-store-memory=536870912",
                f"--temp-dir={temp_dir}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        )
    try:
        wait_for(
            "ray head metrics agent",
            lambda: "ray_node_cpu_count" in metrics_text(metrics_port),
            RAY_START_TIMEOUT_S,
            proc,
            log,
        )
        yield RayHead(f"127.0.0.1:{gcs_port}", metrics_port)
    finally:
        stop_process(proc, signal.SIGINT, grace=20.0, leader_only=True)
        shutil.rmtree(temp_dir, ignore_errors=True)


@dataclass
class Pipeline:
    """A running `gait-stream start`: its metrics port, process and log (for failure messages)."""

    metrics_port: int
    proc: subprocess.Popen
    log: Path


@pytest.fixture
def gait_stream_pipeline(
    ray_head: RayHead, tmp_path: Path, fusionnet_onnx: dict
) -> Iterator[Pipeline]:
    """The real pipeline on the embedded default config (FusionNet: its ONNX graph already in
    the session's cache, tests/conftest.py), running on `ray_head`."""
    port = free_port()
    log = tmp_path / "gait-stream.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [venv_script("gait-stream"), "start", "--duration", "60", "--metrics-port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            start_new_session=True,
            env={**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ray_head.address},
        )
    try:
        wait_for(
            "gait-stream start: metrics endpoint",
            lambda: "gait_stream_" in metrics_text(port),
            PIPELINE_START_TIMEOUT_S,
            proc,
            log,
        )
        yield Pipeline(port, proc, log)
    finally:
        stop_process(proc, signal.SIGINT)


def has_gpu() -> bool:
    """Whether this machine has an NVIDIA GPU (then Ray exports its GPU metrics)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    return out.returncode == 0 and "GPU" in out.stdout


# --------------------------------------------------------------------------- tests


def test_promtool_accepts_config_and_rules() -> None:
    promtool = require_binary("promtool")
    assert RULE_FILES, "no rule files in deploy/prometheus/rules"
    for args in (
        ["check", "config", str(PROM_CONFIG)],
        ["check", "rules", *map(str, RULE_FILES)],
    ):
        run = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, f"promtool {' '.join(args)}:\n{run.stdout}\n{run.stderr}"
        assert "FAILED" not in run.stdout + run.stderr


# Synthetic series for `promtool test rules` (5 s samples, 200 s):
# - s01 publishes angles at 60 Hz, s02 at 30 Hz;
# - s01's latency is all <= 10 ms; 5 % of s02's lies in (25, 50] ms (p99 45 ms);
# - from 100 s s01's shank_l is down and its foot_l delivers nothing (sample age > 1 s);
# - from 100 s the sync stage drops one message per 5 s; ingest never drops.
ALERT_SERIES = {
    'gait_stream_output_samples_total{subject="s01",output="angles"}': "0+300x40",
    'gait_stream_output_samples_total{subject="s02",output="angles"}': "0+150x40",
    **{
        f'gait_stream_end_to_end_latency_seconds_bucket{{subject="s01",le="{le}"}}': "0+300x40"
        for le in ("0.01", "0.025", "0.05", "+Inf")
    },
    **{
        f'gait_stream_end_to_end_latency_seconds_bucket{{subject="s02",le="{le}"}}': f"0+{n}x40"
        for le, n in (("0.01", 285), ("0.025", 285), ("0.05", 300), ("+Inf", 300))
    },
    'gait_stream_stream_up{subject="s01",stream="shank_l"}': "1x19 0x20",
    'gait_stream_stream_up{subject="s01",stream="foot_l"}': "1x40",
    'gait_stream_last_sample_age_seconds{subject="s01",stream="foot_l"}': "0.01x19 2+5x20",
    'gait_stream_last_sample_age_seconds{subject="s01",stream="pelvis"}': "0.01x40",
    'gait_stream_dropped_total{stage="sync",reason="queue_full"}': "0x19 1+1x20",
    'gait_stream_dropped_total{stage="ingest",reason="queue_full"}': "0x40",
}
# (eval time, alert, [(labels, rendered summary)]): what must fire, and nothing else.
ALERT_CASES = [
    (
        "90s",
        "GaitStreamOutputRateLow",
        [
            (
                {"subject": "s02", "output": "angles"},
                "Subject s02: joint angles at 30.0 Hz, target 60 Hz",
            )
        ],
    ),
    (
        "90s",
        "GaitStreamLatencyOverBudget",
        [({"subject": "s02"}, "Subject s02: p99 end-to-end latency 45ms over the 20 ms budget")],
    ),
    ("90s", "GaitStreamSensorSilent", []),
    ("90s", "GaitStreamDropsRising", []),
    (
        "190s",
        "GaitStreamSensorSilent",
        [
            ({"subject": "s01", "stream": "shank_l"}, "Subject s01: stream shank_l is silent"),
            ({"subject": "s01", "stream": "foot_l"}, "Subject s01: stream foot_l is silent"),
        ],
    ),
    (
        "190s",
        "GaitStreamDropsRising",
        [({"stage": "sync", "reason": "queue_full"}, "Stage sync drops data (queue_full): 0.20/s")],
    ),
]


def test_alerts_fire_at_their_thresholds(tmp_path: Path) -> None:
    """30 Hz, a 45 ms p99, a dead and a stale stream and rising drops alert; 60 Hz and 10 ms do not."""
    promtool = require_binary("promtool")
    alerts = {
        rule["alert"]: rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    cases = []
    for eval_time, name, expected in ALERT_CASES:
        rule = alerts[name]
        exp = []
        for labels, summary in expected:
            exp.append(
                {
                    "exp_labels": {**labels, **rule.get("labels", {})},
                    "exp_annotations": {
                        "summary": summary,
                        "description": rule["annotations"]["description"],
                    },
                }
            )
        cases.append({"eval_time": eval_time, "alertname": name, "exp_alerts": exp})
    spec = {
        "rule_files": [str(p) for p in RULE_FILES],
        "evaluation_interval": "5s",
        "tests": [
            {
                "interval": "5s",
                "input_series": [{"series": k, "values": v} for k, v in ALERT_SERIES.items()],
                "alert_rule_test": cases,
            }
        ],
    }
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    run = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, f"promtool test rules:\n{run.stdout}\n{run.stderr}"


def test_dashboards_are_consistent_with_provisioning_and_names() -> None:
    """Dashboards use the provisioned datasource uid and only joint-angle names the runtime has."""
    from fusion.skeleton import ANGLES

    assert {p.name for p in DASHBOARDS} >= {"live-lab.json", "cluster.json"}
    provisioned = {ds["uid"] for ds in yaml.safe_load(DATASOURCES.read_text())["datasources"]}
    for path in DASHBOARDS:
        text = path.read_text()
        uids = set(re.findall(r'"uid":\s*"([^"]+)"', text)) - {"-- Grafana --"}
        uids -= {json.loads(text)["uid"]}
        assert uids <= provisioned, f"{path.name}: datasource uids {uids - provisioned}"
        exprs = [e.expr for e in dashboard_expressions(path)]
        assert exprs, f"{path.name}: no expressions"
        for expr in exprs:
            for group in re.findall(r'angle=~"([^"$]+)"', expr):
                unknown = set(group.split("|")) - set(ANGLES)
                assert not unknown, f"{path.name}: unknown angles {unknown} in {expr}"
        for var in dashboard_variables(path):
            if var.label == "angle" and var.value != ".*":
                unknown = set(var.value.strip("()").split("|")) - set(ANGLES)
                assert not unknown, f"{path.name}: ${var.name} selects unknown angles {unknown}"


def test_kuberay_manifests_run_the_lab_config() -> None:
    """The ConfigMap's lab.yaml is a valid config and the RayJob reads it where pods mount it."""
    from services.config import parse_config

    docs = {
        d["kind"]: d
        for path in sorted((DEPLOY / "kuberay").glob("*.yaml"))
        for d in yaml.safe_load_all(path.read_text())
    }
    assert set(docs) >= {"RayCluster", "RayJob", "ConfigMap"}
    cmap = docs["ConfigMap"]
    config = parse_config(yaml.safe_load(cmap["data"]["lab.yaml"]), "lab-configmap.yaml")
    assert not config.simulate.enabled and config.subjects

    job, cluster = docs["RayJob"], docs["RayCluster"]
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    entry = job["spec"]["entrypoint"].split()
    assert entry[:4] == ["gait-stream", "start", "--address", "auto"]
    config_path = Path(entry[entry.index("--config") + 1])

    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v for v in head["volumes"]}
    mounts = head["containers"][0]["volumeMounts"]
    mount = next(m for m in mounts if Path(m["mountPath"]) == config_path.parent)
    assert volumes[mount["name"]]["configMap"]["name"] == cmap["metadata"]["name"]
    assert config_path.name in cmap["data"]

    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    gpu = groups["gpu"]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) == int(gpu["rayStartParams"]["num-gpus"]) >= 1
    assert "cpu" in groups


@pytest.mark.slow
@pytest.mark.e2e
def test_every_dashboard_and_rule_expression_returns_data(
    prometheus_server: Callable[[list[str], list[str]], PrometheusServer],
    ray_head: RayHead,
    gait_stream_pipeline: Pipeline,
) -> None:
    """All dashboard and rule PromQL parses and returns data from the real pipeline and Ray."""
    server = prometheus_server(
        [f"127.0.0.1:{gait_stream_pipeline.metrics_port}"], [f"127.0.0.1:{ray_head.metrics_port}"]
    )
    gpu = has_gpu()

    expressions = [e for p in RULE_FILES for e in rule_expressions(p)]
    variables = {p.name: dashboard_variables(p) for p in DASHBOARDS}
    for path in DASHBOARDS:
        values = {v.name: v.value for v in variables[path.name]}
        expressions += [
            Expression(e.source, substitute(e.expr, values)) for e in dashboard_expressions(path)
        ]
    assert len(expressions) > 20, f"only {len(expressions)} expressions found"

    # Parse first: an expression Prometheus rejects fails at once, data or not.
    errors = []
    for e in expressions:
        ok, error, _ = server.query(e.expr)
        if not ok:
            errors.append(f"{e.source}: {error}\n    {e.expr}")
    assert not errors, "expressions Prometheus rejects:\n" + "\n".join(errors)

    checks: dict[str, str] = {}  # query -> where it comes from
    for e in expressions:
        if GPU_METRIC.search(e.expr) and not gpu:
            continue  # parsed above; no GPU here, so Ray exports no GPU series
        checks[as_bool_comparison(e.expr) if e.alert else e.expr] = e.source
    pending = dict(checks)
    empty_vars = {(v.metric, v.label) for vs in variables.values() for v in vs}

    seen: dict[str, str] = {}  # why a pending expression has no data yet
    deadline = time.monotonic() + DATA_TIMEOUT_S
    while (pending or empty_vars) and time.monotonic() < deadline:
        for expr in list(pending):
            ok, error, samples = server.query(expr)
            assert ok, f"{pending[expr]}: {error}\n    {expr}"
            if any(math.isfinite(value) for _, value in samples):
                del pending[expr]
            else:
                seen[expr] = f"{len(samples)} series, all NaN/Inf" if samples else "no series"
        for metric, label in list(empty_vars):
            status, doc = server.api(f"label/{label}/values", **{"match[]": metric})
            if status == 200 and doc["data"]:
                empty_vars.discard((metric, label))
        if not (pending or empty_vars):
            break
        if gait_stream_pipeline.proc.poll() is not None:
            pytest.fail(
                f"gait-stream exited ({gait_stream_pipeline.proc.returncode}) before every "
                f"expression had data; still empty: {sorted(pending.values())}\n"
                + tail(gait_stream_pipeline.log)
            )
        time.sleep(1.0)

    _, targets = server.api("targets")
    target_state = [
        f"{t['labels'].get('job')} {t['scrapeUrl']}: {t['health']} {t.get('lastError', '')}"
        for t in targets["data"]["activeTargets"]
    ]
    assert not pending and not empty_vars, (
        f"no data after {DATA_TIMEOUT_S:.0f} s (GPU present: {gpu}) for:\n"
        + "\n".join(f"{src} ({seen.get(expr)}):\n    {expr}" for expr, src in pending.items())
        + "".join(f"\nvariable label_values({m}, {lbl}): no values" for m, lbl in empty_vars)
        + "\nscrape targets:\n  "
        + "\n  ".join(target_state)
        + "\n"
        + tail(gait_stream_pipeline.log)
    )
    assert all(": up " in s for s in target_state), "targets down:\n" + "\n".join(target_state)

    _, rules = server.api("rules")
    loaded = [r for g in rules["data"]["groups"] for r in g["rules"]]
    assert len(loaded) == sum(len(rule_expressions(p)) for p in RULE_FILES)
    unhealthy = [f"{r['name']}: {r['health']} {r.get('lastError', '')}" for r in loaded]
    unhealthy = [s for s in unhealthy if ": ok " not in s]
    assert not unhealthy, "rules not healthy:\n" + "\n".join(unhealthy)
