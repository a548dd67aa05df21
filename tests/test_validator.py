"""The shadow validator over a real transport, and its files checked against an independent replay.

The HTTP miner below is the project's miner service (issue 10) as a user runs it: `stage1-cascade
miner --port 0` in its own process, with the shipped Stage 1 and routing and stand-in VLM servers
(cpu mode), a bearer key, and its traces exported over OTLP to a small receiver on loopback (the
only simulated part: a collector that decodes the protobuf with OpenTelemetry's own classes), so
the test can check which images the service answered. The rewards in `rounds.jsonl` are replayed
with the project's scikit-learn reference of the validator's tracker (`tests/test_round_rewards.py`),
which shares no code with `scoring`."""
import hashlib, http.server, json, math, os, re, subprocess, sys, threading, time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stage1_cascade.cli import GATE_EXIT, app
from stage1_cascade.validator import (FunctionMiner, LocalMiner, challenge_stream, round_draw, run_validation,
                                      stream_digest)
from test_round_rewards import _reference_rewards

KEY = "s3cret-miner-key-0042"


class _Collector(http.server.BaseHTTPRequestHandler):
    "An OTLP/HTTP traces receiver: keeps each `miner.predict` span's image hash."
    seen: list = []
    def do_POST(self):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
        req = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    attrs = {a.key: a.value.string_value for a in sp.attributes}
                    if sp.name == "miner.predict": self.seen.append(attrs.get("image_b64_sha256"))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass


@pytest.fixture(scope="module")
def http_miner(tmp_path_factory):
    "(url, sha256 of each base64 image the miner answered, as its traces report them) of `stage1-cascade miner`."
    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True, name="otlp-receiver").start()
    log = tmp_path_factory.mktemp("miner")/"miner.log"
    env = {**os.environ, "S1C_MINER_KEY": KEY, "S1C_VLM_TIMEOUT_S": "8", "S1C_MODE": "cpu", "NO_COLOR": "1"}
    env.pop("S1C_REGISTRY", None)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", "from stage1_cascade.cli import main; main()", "miner", "--port", "0",
                                 "--otlp-endpoint", f"http://127.0.0.1:{collector.server_address[1]}/v1/traces"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        t0, url = time.monotonic(), None
        while url is None:   # generous: only catches a miner that never starts
            assert proc.poll() is None and time.monotonic() - t0 < 180, f"the miner did not start: {log.read_text()[-2000:]}"
            m = re.search(r"miner listening on (http://\S+)", log.read_text())
            url = m and m.group(1)
            time.sleep(0.1)
        yield url, _Collector.seen
    finally:
        proc.terminate()
        try: proc.wait(60)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait(30)
        collector.shutdown(); collector.server_close()


def _spans_for(seen: list, n: int, timeout_s: float = 60.0) -> list:
    "Wait until `n` request spans arrived (the exporter sends in batches, every few seconds)."
    t0 = time.monotonic()
    while len(seen) < n and time.monotonic() - t0 < timeout_s: time.sleep(0.2)
    return list(seen)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_http_miner_scores_as_the_cascade_in_process(http_miner, tmp_path):
    "`--compare local:cascade URL`: the miner service answers exactly the stream's JPEGs and scores like the cascade here."
    url, seen = http_miner
    seen.clear()
    out, n = tmp_path/"run", 30
    r = CliRunner().invoke(app, ["validate", "--compare", "local:cascade", url, "--rounds", str(n), "--seed", "3",
                                 "--out", str(out), "--no-progress"], env={"S1C_MINER_KEY": KEY, "S1C_VLM_TIMEOUT_S": "8"})
    assert r.exit_code == 0, r.output + repr(r.exception)
    want = [hashlib.sha256(c.image.encode()).hexdigest() for c in challenge_stream(n, seed=3)]
    assert _spans_for(seen, n) == want   # what a validator with seed 3 sends, in order, as the miner's own traces saw it
    local, remote = _rows(out/"local-cascade"/"rounds.jsonl"), _rows(out/f"http-127.0.0.1-{url.rsplit(':', 1)[1]}"/"rounds.jsonl")
    assert [x["status"] for x in remote] == ["ok"] * n
    # same models, same images: the same answers (the service batches Stage 1, which may move the last float digits)
    assert np.allclose([x["answer"] for x in remote], [x["answer"] for x in local], rtol=0, atol=1e-5)
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
