"""The shadow validator over a real transport, and its files checked against an independent replay.

The HTTP miner below is a real FastAPI app served by uvicorn on a loopback port. It implements the
miner contract that issue 10's miner service will ship (`POST /v1/predict` with
`{"image": "<base64 JPEG>"}` answers `{"prediction": p, ...}`, `Authorization: Bearer KEY`) around
the shipped cascade: it STANDS IN for the issue-10 miner until that service lands. The rewards in
`rounds.jsonl` are replayed with the project's scikit-learn reference of the validator's tracker
(`tests/test_round_rewards.py`), which shares no code with `scoring`."""
import asyncio, json, math, socket, threading, time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stage1_cascade.cli import GATE_EXIT, app
from stage1_cascade.core import get_settings
from stage1_cascade.validator import (FunctionMiner, LocalMiner, challenge_stream, round_draw, run_validation,
                                      stream_digest)
from test_round_rewards import _reference_rewards

KEY = "s3cret-miner-key-0042"


def miner_app(miner, key: str):
    "The issue-10 miner contract around `miner` (called as miner(image_b64, timeout_s)); records what it was sent."
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    app_, seen = FastAPI(), []

    @app_.post("/v1/predict")
    async def predict(request: Request):
        if request.headers.get("authorization") != f"Bearer {key}":
            return JSONResponse({"detail": "missing or wrong bearer key"}, status_code=401)
        image = (await request.json())["image"]
        seen.append(image)
        try: p = await asyncio.to_thread(miner, image, 9.0)  # the cascade blocks: off the event loop
        except Exception as e: return JSONResponse({"detail": f"{type(e).__name__}: {e}"}, status_code=400)
        return {"prediction": p}
    return app_, seen


@pytest.fixture(scope="module")
def http_miner():
    "(url, images received) of the stand-in miner service around the shipped cascade, on a free loopback port."
    import uvicorn
    cascade = LocalMiner("cascade", get_settings(vlm_timeout_s=8.0))   # VLM waits up to the cascade's own deadline
    app_, seen = miner_app(cascade, KEY)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); sock.bind(("127.0.0.1", 0)); sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app_, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="stand-in-miner")
    thread.start()
    t0 = time.monotonic()
    while not server.started:   # generous: only catches a server that never starts
        assert thread.is_alive() and time.monotonic() - t0 < 120, "the stand-in miner did not start"
        time.sleep(0.05)
    try: yield f"http://127.0.0.1:{sock.getsockname()[1]}", seen
    finally:
        server.should_exit = True; thread.join(30); sock.close(); cascade.close()


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_http_miner_scores_as_the_cascade_in_process(http_miner, tmp_path):
    "`--compare local:cascade URL`: the miner service receives exactly the stream's JPEGs and scores like the cascade here."
    url, seen = http_miner
    seen.clear()
    out, n = tmp_path/"run", 30
    r = CliRunner().invoke(app, ["validate", "--compare", "local:cascade", url, "--rounds", str(n), "--seed", "3",
                                 "--out", str(out), "--no-progress"], env={"S1C_MINER_KEY": KEY, "S1C_VLM_TIMEOUT_S": "8"})
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert seen == [c.image for c in challenge_stream(n, seed=3)]   # what a validator with seed 3 sends, byte for byte
    local, remote = _rows(out/"local-cascade"/"rounds.jsonl"), _rows(out/f"http-127.0.0.1-{url.rsplit(':', 1)[1]}"/"rounds.jsonl")
    assert [x["status"] for x in remote] == ["ok"] * n
    assert [x["answer"] for x in remote] == [x["answer"] for x in local]   # same models, same images: same answers
    assert [x["reward"] for x in remote] == [x["reward"] for x in local]
    cmp = json.loads((out/"compare.json").read_text())
    assert (cmp["compare"]["difference"], cmp["compare"]["low"], cmp["compare"]["high"]) == (0.0, 0.0, 0.0)
    assert len({s["challenge_sha256"] for s in cmp["summaries"].values()}) == 1
    assert "+0.000" in r.output
    assert all(KEY not in p.read_text(errors="replace") for p in out.rglob("*") if p.is_file() and p.suffix != ".png")
    assert KEY not in r.output


def test_a_wrong_key_scores_zero_and_is_counted(http_miner, tmp_path):
    "A miner that refuses the validator (401) gives -1 every round: errors counted, rewards 0, gate fails."
    url, _ = http_miner
    r = CliRunner().invoke(app, ["validate", "--miner", url, "--rounds", "8", "--out", str(tmp_path/"run"), "--min-score", "0.01",
                                 "--no-progress"], env={"S1C_MINER_KEY": "not-the-key"})
    assert r.exit_code == GATE_EXIT, r.output
    s = json.loads((tmp_path/"run"/"summary.json").read_text())
    assert (s["errors"], s["no_answer_rounds"], s["expected_score"], s["final_ema"]) == (8, 8, 0.0, 0.0)
    assert all(x["error"].startswith("MinerError: HTTP 401") for x in _rows(tmp_path/"run"/"rounds.jsonl"))


def _schedule(seed: int, gate: threading.Event):
    "A miner that knows the round (its n-th call): right, wrong, NaN, out of range, -1, an exception, a string, stuck."
    special = {30: float("nan"), 45: 1.6, 47: -0.7, 60: 1.2, 61: -1.0, 62: RuntimeError("weights missing"), 63: "0.9",
               64: "stuck", 70: -0.2, 71: 0.5, 90: "stuck", 105: float("inf")}
    n = [0]
    def miner(image):
        n[0] += 1; t = n[0]; y = round_draw(seed, t).label
        v = special.get(t, (0.8 if y else 0.3) if t % 7 else (0.3 if y else 0.8))   # every 7th answer wrong
        if isinstance(v, Exception): raise v
        if v == "stuck": gate.wait(120); return 1.0
        return v
    return miner


def test_rounds_jsonl_rewards_match_an_independent_replay(tmp_path):
    "Rewards and EMA in rounds.jsonl equal the scikit-learn replay of the tracker; the summary counts what happened."
    gate, n, seed = threading.Event(), 120, 11
    try:
        res = run_validation({"scheduled": FunctionMiner(_schedule(seed, gate))}, n, seed, out=tmp_path/"run",
                             timeout_s=2.0, progress=False)
    finally: gate.set()
    rows = _rows(tmp_path/"run"/"rounds.jsonl")
    y = np.array([x["label"] for x in rows]); p = np.array([float(x["answer"]) for x in rows])
    want = _reference_rewards(y, p)
    assert np.allclose([x["reward"] for x in rows], want, atol=1e-12)
    ema, s = [], 0.0
    for v in want: s = 0.05 * v + 0.95 * s; ema.append(s)
    assert np.allclose([x["ema"] for x in rows], ema, atol=1e-12)
    assert [x["status"] for x in rows if x["status"] != "ok"] == ["error", "error", "timeout", "timeout"]
    assert (rows[29]["answer"], rows[104]["answer"]) == ("nan", "inf")   # strict JSON, read back by float()
    summ = json.loads((tmp_path/"run"/"summary.json").read_text())
    assert summ == json.loads(json.dumps(res["miners"]["scheduled"]))
    assert (summ["timeouts"], summ["errors"], summ["invalid_answers"], summ["no_answer_rounds"]) == (2, 2, 6, 5)
    assert summ["expected_score_rounds"] == [1, n] and math.isclose(summ["expected_score"], float(np.mean(want)))
    assert summ["final_ema"] == ema[-1]
    # the stream does not depend on the miner: the same seed gives the same challenges
    assert summ["challenge_sha256"] == stream_digest(challenge_stream(n, seed))
