"""Monitoring against the real tools: promtool checks and unit-tests the alert rules, and a real
Prometheus server on loopback scrapes the miner, the stand-in vLLM servers and the fleet's control API.

Prometheus and promtool come from Debian's `prometheus` package, which `.ci/run` installs. Outside CI
the tests that need them skip and say so; in CI (`CI` set) their absence fails. The miner is the real
service (`serve.miner`, Stage 1 only, answering real requests); the fleet's control API is the real
`control_app`, over a stub supervisor that only reports rows (no process is supervised here)."""
import os, re, shutil, socket, subprocess, threading, time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from stage1_cascade.serve.monitor import (JOBS, MonitorError, PrometheusServer, alert_rules,
                                          check_monitoring, dashboard_queries, grafana_dashboard, promtool,
                                          scrape_targets, write_monitoring)
from stage1_cascade.serve.registry import ModelEntry, Registry

ROOT = Path(__file__).resolve().parents[1]
UNIT_TESTS = ROOT/"tests"/"promtool"/"stage1_alerts_test.yml"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@pytest.fixture(scope="module")
def prom_tools():
    "promtool and prometheus on PATH: skip outside CI when missing, fail in CI (which installs them)."
    missing = [t for t in ("promtool", "prometheus") if not shutil.which(t)]
    if missing:
        msg = f"{' and '.join(missing)} not installed: `apt-get install -y prometheus` (Debian) brings both; .ci/run installs it"
        if os.environ.get("CI"): pytest.fail(msg)
        pytest.skip(msg)


def _unit_test(tmp_path, **rule_kw) -> subprocess.CompletedProcess:
    "Write the rules (with `rule_kw`) next to a copy of the hand-written unit tests and run `promtool test rules`."
    write_monitoring(tmp_path, scrape_targets("http://127.0.0.1:9"), **rule_kw)
    shutil.copy(UNIT_TESTS, tmp_path/UNIT_TESTS.name)
    r = subprocess.run(["promtool", "test", "rules", UNIT_TESTS.name], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    r.stdout = _ANSI.sub("", r.stdout + r.stderr)
    return r


def test_every_alert_is_unit_tested_firing_and_silent():
    "The unit-test file checks each rule both ways (a rule added without tests fails here)."
    cases = [c for t in yaml.safe_load(UNIT_TESTS.read_text())["tests"] for c in t["alert_rule_test"]]
    names = [r["alert"] for r in alert_rules()["groups"][0]["rules"]]
    assert {c["alertname"] for c in cases} == set(names)
    assert [n for n in names if not any(c["alertname"] == n and c["exp_alerts"] for c in cases)] == []
    assert [n for n in names if not any(c["alertname"] == n and not c["exp_alerts"] for c in cases)] == []


def test_promtool_accepts_and_unit_tests_the_rules(tmp_path, prom_tools):
    r = _unit_test(tmp_path)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout
    files = {k: tmp_path/v for k, v in (("config", "prometheus.yml"), ("rules", "stage1_alerts.yml"))}
    verdict = check_monitoring(files)
    assert "SUCCESS: 9 rules found" in verdict["rules"] and "is valid prometheus config file syntax" in verdict["config"]


@pytest.mark.parametrize("kw, alert", [({"error_rate": 0.5}, "Stage1ErrorRate"), ({"fallback_rate": 0.5}, "Stage1FallbackRate"),
                                       ({"deadline_hit_rate": 0.3}, "Stage1DeadlineHits"), ({"vllm_p95_s": 5}, "Stage1VLLMSlow"),
                                       ({"deadline_s": 10}, "Stage1DeadlineMisses")])
def test_the_unit_tests_catch_a_rule_that_fires_at_the_wrong_line(tmp_path, prom_tools, kw, alert):
    "Moving a threshold makes `promtool test rules` fail on that alert: the unit tests can fail."
    r = _unit_test(tmp_path, **kw)
    assert r.returncode != 0 and f"alertname: {alert}" in r.stdout, r.stdout


def test_a_bad_config_is_refused_and_nothing_is_left_running(tmp_path, prom_tools):
    bad = tmp_path/"prometheus.yml"
    bad.write_text("scrape_configs: [{job_name: x, static_configs: [{targets: ['127.0.0.1:1']}], scrape_interval: nonsense}]\n")
    with pytest.raises(MonitorError, match="failed"): promtool("check", "config", bad)
    server = PrometheusServer(bad)
    with pytest.raises(MonitorError, match="exited"): server.start()
    assert server.proc.poll() is not None and server._tmp is None


def test_the_server_stops_and_its_storage_goes_when_the_block_fails(tmp_path, prom_tools):
    files = write_monitoring(tmp_path, scrape_targets("http://127.0.0.1:9"), scrape_interval="1s")
    with pytest.raises(ZeroDivisionError):
        with PrometheusServer(files["config"]) as prom:
            proc, storage = prom.proc, Path(prom._tmp.name)
            assert prom.query("vector(1)")[0]["value"][1] == "1"
            1 / 0
    assert proc.poll() is not None and not storage.exists()


def test_a_port_taken_before_prometheus_binds_it_is_replaced(tmp_path, prom_tools):
    files = write_monitoring(tmp_path, scrape_targets("http://127.0.0.1:9"), scrape_interval="1s")
    server = PrometheusServer(files["config"])
    taken = server.port
    with socket.socket() as s:
        s.bind(("127.0.0.1", taken)); s.listen()
        with server as prom:
            assert prom.port != taken and prom.query("vector(1)")[0]["value"][1] == "1"


class _ControlAPI:
    "The fleet's real control API (`serve.fleet.control_app`) on loopback, over a stub supervisor that only reports rows."
    def __init__(self, rows):
        import uvicorn
        from stage1_cascade.serve.fleet import control_app
        sup = SimpleNamespace(key="test-key", phase="up", rows=lambda: rows)
        self.sock = socket.socket(); self.sock.bind(("127.0.0.1", 0))
        self.server = uvicorn.Server(uvicorn.Config(control_app(sup), log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True, name="control-api")
    def __enter__(self) -> str:
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if time.monotonic() - t0 > 60: raise RuntimeError("the control API did not start within 60 s")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"
    def __exit__(self, *exc):
        self.server.should_exit = True; self.thread.join(30); self.sock.close()


def _values(prom, expr) -> dict:
    return {tuple(sorted(s["metric"].items())): float(s["value"][1]) for s in prom.query(expr)}


def test_a_real_prometheus_scrapes_the_miner_the_standins_and_the_fleet(tmp_path, prom_tools):
    from PIL import Image
    from stage1_cascade.standin.server import StandinFleet
    import base64, httpx
    from stage1_cascade.detect import default_stage1
    from stage1_cascade.scenes import synthetic_samples
    from stage1_cascade.serve.miner import MinerServer, MinerService
    miner = MinerServer(MinerService(default_stage1())).start()   # the real miner service, Stage 1 only
    for smp in synthetic_samples(3, seed=4200):
        httpx.post(f"{miner.url}/v1/predict", json={"image": base64.b64encode(smp.image).decode()}, timeout=60).raise_for_status()
    with StandinFleet({"fast": "orange", "power": "orange"}) as fleet:
        reg = Registry([ModelEntry(f"standin-{t}", t, u, f"standin-{t}") for t, u in fleet.urls.items()])
        rows = [{"model": m.model, "tier": m.tier, "state": "healthy", "restarts": 0, "wakes_s": []} for m in reg.models]
        for c in fleet.clients().values(): c.p_roadwork(Image.new("RGB", (224, 224), (200, 120, 40)))  # one request each
        with _ControlAPI(rows) as control_url:
            reg.control_url = control_url
            try:
                targets = scrape_targets(miner.url, registry=reg)
                files = write_monitoring(tmp_path/"monitoring", targets, scrape_interval="1s")
                assert "SUCCESS" in check_monitoring(files)["config"]
                with PrometheusServer(files["config"]) as prom:
                    up = lambda p: (ts := p.targets()) and len(ts) == 4 and all(t["health"] == "up" for t in ts) and ts
                    seen = prom.wait_until(up, timeout_s=120, what="all four targets up")
                    assert sorted(t["labels"]["job"] for t in seen) == sorted([JOBS["miner"], JOBS["fleet"], JOBS["vllm"], JOBS["vllm"]])

                    # the miner's series, the stand-ins' vLLM series labelled by model and tier, the fleet's state
                    outcomes = {dict(k)["outcome"]: v for k, v in _values(prom, "stage1_miner_requests_total").items()}
                    assert sum(outcomes.values()) == 3.0 and outcomes.get("error", 0) == outcomes.get("invalid_input", 0) == 0, outcomes
                    e2e = {(dict(k)["tier"], dict(k)["model"]): v for k, v in _values(prom, "vllm:e2e_request_latency_seconds_count").items()}
                    assert e2e == {("fast", "standin-fast"): 1.0, ("power", "standin-power"): 1.0}
                    assert {dict(k).get("model") for k in _values(prom, f'{{job="{JOBS["fleet"]}", model!=""}}')} == {"standin-fast", "standin-power"}

                    # every dashboard query is valid PromQL and the miner's panels find data
                    for q in dashboard_queries(grafana_dashboard()): prom.query(q.replace("$__rate_interval", "1m"))
                    assert prom.query('sum(stage1_miner_invalid_answers_total)')[0]["value"][1] == "0"

                    # every rule loads and evaluates; a late answer makes Stage1DeadlineMisses fire
                    # a late answer, recorded in the miner's own histogram (making the miner take 9.7 s is the
                    # load test's job, with a slowed tier): Stage1DeadlineMisses fires
                    miner.service.metrics.request_latency.observe(9.7)
                    firing = lambda p: [a for a in p.api("alerts")["alerts"] if a["labels"]["alertname"] == "Stage1DeadlineMisses" and a["state"] == "firing"]
                    prom.wait_until(firing, timeout_s=120, what="Stage1DeadlineMisses firing")
                    rules = prom.api("rules")["groups"][0]["rules"]
                    assert {r["name"]: r["health"] for r in rules} == {r["alert"]: "ok" for r in alert_rules()["groups"][0]["rules"]}

                    # a tier whose only server stops: the tier-down rule's expression names it
                    fleet["power"].stop()
                    tier_down = next(r["expr"] for r in alert_rules()["groups"][0]["rules"] if r["alert"] == "Stage1TierDown")
                    down = prom.wait_until(lambda p: p.query(tier_down), timeout_s=120, what="the power tier seen down")
                    assert [s["metric"]["tier"] for s in down] == ["power"]
                proc = prom.proc
            finally:
                miner.stop()
    assert proc.poll() is not None   # the server is stopped when the block ends


def test_readme_names_the_files_monitor_writes():
    from stage1_cascade.serve.monitor import MONITOR_FILES
    para = next(p for p in (ROOT/"README.md").read_text().split("\n\n") if p.startswith("Monitoring:"))
    assert [f for f in MONITOR_FILES.values() if f"`{f}`" not in para] == []
    assert f"`{UNIT_TESTS.relative_to(ROOT)}`" in para
