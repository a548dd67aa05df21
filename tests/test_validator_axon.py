"""The shadow validator over a real bittensor axon: `validate --miner axon://HOTKEY@HOST:PORT`.

Real parts: the axon script (notebook 13b) on 127.0.0.1 in the axon environment, local wallets, and
the validator side's real bittensor `Dendrite` in `scripts/dendrite_worker.py`, one worker process
per run. Simulated, and only these: the allow-list file stands in for the chain's metagraph, the
dendrite's internet lookup of the external IP is replaced by 127.0.0.1 (in the worker), and the
miner service behind the axon is `test_axon.MinerStandIn`, a real loopback HTTP server speaking the
miner contract with a deterministic answer per image (it stands in for `stage1-cascade miner`).
Rewards in `rounds.jsonl` are replayed with the scikit-learn reference of the validator's tracker
(`tests/test_round_rewards.py`), which shares no code with `scoring`.

Needs the axon environment: with S1C_RUN_AXON_ENV=1 (.ci/run sets it) it is created if absent;
otherwise the tests skip, saying how to make it."""
import json, socket

import numpy as np
import pytest
from typer.testing import CliRunner

from stage1_cascade.cli import app
from stage1_cascade.serve.axon import AxonConfig, launch_axon, make_test_wallets, write_allowlist
from stage1_cascade.validator import AxonMiner, challenge_stream, run_validation
from test_axon import MinerStandIn, env  # noqa: F401  (env: the axon-environment fixture, skip reason included)
from test_round_rewards import _reference_rewards

KEY = "s1c-validator-axon-key-77"


@pytest.fixture(scope="module")
def loop(env, tmp_path_factory):  # noqa: F811
    "Wallets (miner, validator, stranger), an allow-list with the validator, the stand-in miner service, the axon."
    d = tmp_path_factory.mktemp("vaxon")
    w = make_test_wallets(d/"wallets", ["miner", "validator", "stranger"], env)
    write_allowlist(d/"allow.json", [{"hotkey": w["validator"]["hotkey"], "validator_permit": True, "stake": 50_000}])
    (d/"key").write_text(KEY + "\n")
    miner = MinerStandIn(key=KEY)
    ax = launch_axon(AxonConfig(str(d/"wallets"), "miner", str(d/"allow.json"), miner_url=miner.url,
                                miner_key_file=str(d/"key")), env, d/"run")
    yield dict(d=d, w=w, miner=miner, ax=ax, env=env, spec=f"axon://{ax.hotkey}@127.0.0.1:{ax.port}")
    code = ax.stop()
    miner.close()
    assert code == 0, ax.log_text()[-2000:]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_validate_over_the_axon_scores_as_over_http(loop, tmp_path):
    """`validate --compare URL axon://...`: the miner service receives every challenge twice (directly and
    through the axon), the two transports get the same answers and rewards, and the rewards equal the replay."""
    miner, n, out = loop["miner"], 20, tmp_path/"run"
    miner.behaviour = "ok"; miner.seen.clear()
    r = CliRunner().invoke(app, ["validate", "--compare", miner.url, loop["spec"], "--rounds", str(n), "--seed", "5",
                                 "--out", str(out), "--no-progress", "--wallet-name", "validator",
                                 "--wallet-path", str(loop["d"]/"wallets")], env={"S1C_MINER_KEY": KEY})
    assert r.exit_code == 0, r.output + repr(r.exception)
    # each round asks the HTTP miner, then the axon: the service sees each challenge twice, byte for byte
    assert [s["body"]["image"] for s in miner.seen] == [c.image for c in challenge_stream(n, seed=5) for _ in (0, 1)]
    assert all(s["auth"] == f"Bearer {KEY}" for s in miner.seen)
    http = _rows(out/f"http-127.0.0.1-{miner.server.server_port}"/"rounds.jsonl")
    axon = _rows(out/f"axon-127.0.0.1-{loop['ax'].port}"/"rounds.jsonl")
    assert [x["status"] for x in axon] == ["ok"] * n, [x.get("error") for x in axon]
    assert [x["answer"] for x in axon] == [x["answer"] for x in http]
    assert [x["answer"] for x in axon] == [MinerStandIn.p_of(c.image) for c in challenge_stream(n, seed=5)]
    y = np.array([x["label"] for x in axon]); p = np.array([float(x["answer"]) for x in axon])
    want = _reference_rewards(y, p)
    assert np.allclose([x["reward"] for x in axon], want, atol=1e-12)
    assert [x["reward"] for x in axon] == [x["reward"] for x in http] and [x["ema"] for x in axon] == [x["ema"] for x in http]
    ema, s = [], 0.0
    for v in want: s = 0.05 * v + 0.95 * s; ema.append(s)
    assert np.allclose([x["ema"] for x in axon], ema, atol=1e-12)
    cmp = json.loads((out/"compare.json").read_text())
    assert (cmp["compare"]["difference"], cmp["compare"]["low"], cmp["compare"]["high"]) == (0.0, 0.0, 0.0)
    cfg = json.loads((out/"config.json").read_text())["config"]
    assert cfg["wallet"]["name"] == "validator" and cfg["key"] == "***"
    assert all(KEY not in q.read_text(errors="replace") for q in out.rglob("*") if q.is_file() and q.suffix != ".png")


def test_the_worker_is_one_process_per_run_and_stops(loop):
    "One worker answers every round of a run (its own counts say so) and exits 0 when the miner is closed."
    m = AxonMiner(loop["spec"], "validator", loop["d"]/"wallets", env=loop["env"])
    try:
        assert m.caller == loop["w"]["validator"]["hotkey"]
        res = run_validation({m.name: m}, 6, seed=2, progress=False)
    finally: m.close()
    assert [x["status"] for x in res["runs"][m.name]] == ["ok"] * 6
    assert m.proc.returncode == 0 and m.result == {"caller": loop["w"]["validator"]["hotkey"], "requests": 6, "answered_200": 6}


def test_a_refused_validator_gets_minus_one_each_round(loop, tmp_path):
    "A hotkey the axon refuses (not on the allow-list: 403) leaves the prediction at -1: an error, reward 0."
    r = CliRunner().invoke(app, ["validate", "--miner", loop["spec"], "--rounds", "4", "--out", str(tmp_path/"run"),
                                 "--no-progress", "--wallet-name", "stranger", "--wallet-path", str(loop["d"]/"wallets")])
    assert r.exit_code == 0, r.output + repr(r.exception)
    rows = _rows(tmp_path/"run"/"rounds.jsonl")
    assert [(x["status"], x["answer"], x["reward"]) for x in rows] == [("error", -1.0, 0.0)] * 4
    assert all("the axon answered 403" in x["error"] and "unregistered hotkey" in x["error"] for x in rows), rows[0]
    s = json.loads((tmp_path/"run"/"summary.json").read_text())
    assert (s["errors"], s["no_answer_rounds"], s["expected_score"]) == (4, 4, 0.0)


def test_an_axon_that_never_answers_is_a_timeout(loop):
    """A port that accepts connections and never replies: the dendrite gives up after the wait (its 408), the
    round is a timeout with -1, and the worker keeps serving the next round."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0)); hole.listen(16)   # the kernel accepts; nobody reads or answers
        m = AxonMiner(f"axon://{loop['ax'].hotkey}@127.0.0.1:{hole.getsockname()[1]}", "validator", loop["d"]/"wallets",
                      env=loop["env"])
        try:
            img = next(challenge_stream(1, seed=1)).image
            with pytest.raises(TimeoutError, match="dendrite: 408"):
                m(img, 1.0)
            res = run_validation({m.name: m}, 2, seed=1, timeout_s=1.0, progress=False)
        finally: m.close()
    assert [(x["status"], x["answer"], x["reward"]) for x in res["runs"][m.name]] == [("timeout", -1.0, 0.0)] * 2
    assert m.proc.returncode == 0 and m.result["requests"] == 3 and m.result["answered_200"] == 0
