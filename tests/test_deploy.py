"""deploy/: static checks of the Dockerfile, compose and Kubernetes files, promtool on the alert
rules, and a real Prometheus scraping the live server under a short load, evaluating every
PromQL expression of the Grafana dashboard and of the alert rules."""

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from procs import free_port, start, stop

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent
NODE_BIN = REPO / ".tools" / "node_modules" / ".bin"  # dclint (scripts/tools.sh)


def _tool(name: str) -> str:
    path = shutil.which(name) or next((str(d / name) for d in (BIN, NODE_BIN) if (d / name).exists()), None)
    if path is None:
        pytest.fail(f"{name} is not installed: run `bash scripts/tools.sh` (make test does)")
    return path


def test_dockerfile_passes_hadolint():
    r = subprocess.run([_tool("hadolint"), str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM .* AS gpu$", text, re.M) and re.search(r"^FROM .* AS cpu$", text, re.M)
    assert ":latest" not in text and "HEALTHCHECK" in text and re.search(r"^USER \d+$", text, re.M)


def test_k8s_manifests_validate_against_the_schema():
    files = sorted(str(p) for p in (DEPLOY / "k8s").glob("*.yaml"))
    assert files
    r = subprocess.run([_tool("kubernetes-validate"), "--strict", *files], capture_output=True, text=True)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "ERROR" not in out, out
    kinds = {d["kind"] for f in files for d in yaml.safe_load_all(open(f)) if d}
    assert {"Deployment", "Service"} <= kinds
    dep = next(d for f in files for d in yaml.safe_load_all(open(f)) if d and d["kind"] == "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/health" and c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["resources"]["limits"]["nvidia.com/gpu"]


def _dclint(*files) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            _tool("dclint"),
            "-c",
            str(DEPLOY / ".dclintrc"),
            "--max-warnings",
            "0",
            "--color",
            "false",
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        cwd=DEPLOY,
    )


def test_compose_files_pass_dclint():
    """The compose-spec schema (what `docker compose config` validates) and dclint's rules:
    explicit interfaces on published ports, pinned tags, no duplicate ports, key order."""
    r = _dclint(DEPLOY / "compose.yaml", DEPLOY / "compose.gpu.yaml")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(
    "change,rule",
    [
        (lambda d: d["services"]["grafana"].update(imag="x"), "invalid-schema"),  # a typo in a key
        (lambda d: d["services"]["grafana"].update(ports=["3000:3000"]), "no-unbound-port-interfaces"),
        (
            lambda d: d["services"]["grafana"].update(image="grafana/grafana:latest"),
            "service-image-require-explicit-tag",
        ),
    ],
)
def test_dclint_rejects_a_broken_compose_file(tmp_path, change, rule):
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    change(doc)
    bad = tmp_path / "compose.yaml"
    bad.write_text(yaml.safe_dump(doc, sort_keys=False, default_style=None))
    r = _dclint(bad)
    assert r.returncode != 0 and rule in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("name", ["compose.yaml", "compose.gpu.yaml"])
def test_compose_files_are_consistent(name):
    """Structure a `docker compose config` would reject: unknown top-level keys, services without
    image or build, bind mounts of missing files, dangling depends_on, unpinned images."""
    doc = yaml.safe_load((DEPLOY / name).read_text())
    assert set(doc) <= {"name", "services", "volumes", "networks", "configs", "secrets"}
    base = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for svc, spec in doc["services"].items():
        assert set(spec) <= {
            "build",
            "image",
            "command",
            "ports",
            "volumes",
            "environment",
            "healthcheck",
            "depends_on",
            "restart",
            "deploy",
        }, svc
        if name == "compose.yaml":
            assert "image" in spec or "build" in spec, svc
            assert not spec.get("image", "x:1").endswith(":latest") and ":" in spec.get("image", "x:1"), svc
        for dep in spec.get("depends_on", []):
            assert dep in base["services"], dep
        for vol in spec.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{svc} mounts missing {src}"
            else:
                assert src in base.get("volumes", {}), f"{svc}: undeclared volume {src}"
    if name == "compose.yaml":
        assert doc["services"]["effort-server"]["healthcheck"]["test"]


def test_alert_rules_pass_promtool():
    r = subprocess.run(
        [_tool("promtool"), "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def dashboard_exprs() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "effort.json").read_text())
    return [t["expr"].replace("$__rate_interval", "1m") for p in dash["panels"] for t in p["targets"]]


def alert_exprs() -> list[str]:
    """Each alert's expression left of its threshold (the condition itself is empty when all is well)."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    out = []
    for g in rules["groups"]:
        for r in g["rules"]:
            lhs = re.split(r"\s(?:>|<|==|!=|>=|<=)\s[\d.]+\s*$", r["expr"].strip())[0]
            assert lhs != r["expr"].strip(), f"{r['alert']}: no threshold found"
            out.append(lhs)
    return out


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory):
    port = free_port()
    d = tmp_path_factory.mktemp("prometheus")
    target = server.split("//")[1]
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", d / "alerts.yml")
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    cfg["rule_files"] = [str(d / "alerts.yml")]
    cfg["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
    (d / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    url = f"http://127.0.0.1:{port}"
    proc = start(
        [
            _tool("prometheus"),
            f"--config.file={d / 'prometheus.yml'}",
            f"--storage.tsdb.path={d / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        d / "prometheus.log",
        url,
        ready_path="/-/ready",
        timeout=60,
    )
    yield url
    stop(proc, 20)


def _load(server: str, seconds: float) -> int:
    """A short, bounded mixed load: efforts, auto, budgets, streaming, an error now and then."""
    from effort_server.training.tasks import DigitsTask

    qs = [p.question for p in DigitsTask().problems("test", 40, seed=31)]
    bodies = [
        {"effort": "low"},
        {"effort": "medium"},
        {"effort": 1.0},
        {"reasoning_effort": "none"},
        {"effort": "auto"},
        {"thinking_token_budget": 2},
        {"effort": "auto", "stream": True, "stream_options": {"include_usage": True}},
        {"effort": 1.5},
    ]
    sent, stop = [0], time.time() + seconds

    def worker(k: int):
        with httpx.Client(timeout=60) as c:
            i = k
            while time.time() < stop:
                body = {
                    "model": "effort-tiny",
                    "temperature": 0,
                    "max_tokens": 256,
                    "messages": [{"role": "user", "content": qs[i % len(qs)]}],
                    **bodies[i % len(bodies)],
                }
                c.post(f"{server}/v1/chat/completions", json=body)
                sent[0] += 1
                i += 3

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sent[0]


@pytest.mark.slow
def test_prometheus_evaluates_every_dashboard_and_alert_expression(server, prometheus):
    sent = _load(server, 12)
    assert sent >= 16
    time.sleep(3)  # the last scrapes
    with httpx.Client(base_url=prometheus, timeout=10) as c:
        targets = c.get("/api/v1/targets").json()["data"]["activeTargets"]
        assert targets and all(t["health"] == "up" for t in targets), targets
        groups = c.get("/api/v1/rules").json()["data"]["groups"]
        assert sum(len(g["rules"]) for g in groups) == len(alert_exprs())
        empty = []
        for expr in dashboard_exprs() + alert_exprs():
            r = c.get("/api/v1/query", params={"query": expr}).json()
            assert r["status"] == "success", (expr, r)
            if not r["data"]["result"]:
                empty.append(expr)
        assert not empty, "expressions without data (typo or missing metric):\n" + "\n".join(empty)
