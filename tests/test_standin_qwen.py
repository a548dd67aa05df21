"The tiny-twin Qwen2-VL backend: real processor, chat template, image tokens, generate, logprobs, served over HTTP."
import json, math

import httpx
import openai
import pytest
from PIL import Image, ImageDraw

torch = pytest.importorskip("torch")
from transformers.utils import logging as hf_logging

from stage1_cascade.data import load_image
from stage1_cascade.standin.backends import QwenVLBackend, build_tiny_qwen2vl
from stage1_cascade.standin.server import StandinServer, metric_total, parse_metrics
from stage1_cascade.vlm import ROADWORK_PROMPT, VLMBadResponse, image_data_url, image_jpeg_bytes, p_from_top_logprobs

hf_logging.disable_progress_bar(); hf_logging.set_verbosity_error()


def img(color, box=None):
    im = Image.new("RGB", (224, 224), (120, 120, 120))
    if box: ImageDraw.Draw(im).rectangle(box, fill=color)
    return im


CONE, GREY = img((250, 120, 10), (90, 120, 140, 200)), img(None)


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    path = build_tiny_qwen2vl(tmp_path_factory.mktemp("tiny") / "tiny-qwen2vl", seed=0)
    return path, QwenVLBackend(path)


def test_saved_in_the_real_format(twin):
    path, qb = twin
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "chat_template.jinja"} <= names
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "qwen2_vl" and cfg["architectures"] == ["Qwen2VLForConditionalGeneration"]
    assert type(qb.model).__name__ == "Qwen2VLForConditionalGeneration"
    assert type(qb.processor).__name__ == "Qwen2VLProcessor"
    assert "random weights" in qb.name
    tok = qb.processor.tokenizer
    for t in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"):
        assert tok.convert_tokens_to_ids(t) != tok.unk_token_id and len(tok.tokenize(t)) == 1
    assert qb.model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")


def test_chat_template_and_image_tokens(twin):
    _, qb = twin
    text = qb.processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}],
                                            add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Q?<|im_end|>\n<|im_start|>assistant\n"
    for size in [(224, 224), (336, 224)]:
        b = qb.inputs(Image.new("RGB", size), "Q?")
        t, h, w = b["image_grid_thw"][0].tolist()
        assert (h, w) == (size[1] // 14, size[0] // 14)                  # default processor: 14-px patches
        n_pad = int((b["input_ids"] == qb.model.config.image_token_id).sum())
        assert n_pad == t * h * w // 4                                   # 2x2 merge: one token per 28x28 pixels
        assert b["pixel_values"].shape[0] == t * h * w


def test_generate_logprobs_match_forward_pass(twin):
    _, qb = twin
    ans = qb.answer(CONE, ROADWORK_PROMPT, 5)
    b = qb.inputs(CONE, ROADWORK_PROMPT)
    with torch.inference_mode():
        lps = torch.log_softmax(qb.model(**b).logits[0, -1].float(), -1)
    top = torch.topk(lps, 5)
    tok = qb.processor.tokenizer
    assert [t for t, _ in ans.top] == [tok.decode([int(i)]) for i in top.indices]
    assert [lp for _, lp in ans.top] == pytest.approx(top.values.tolist(), abs=1e-4)
    assert ans.prompt_tokens == b["input_ids"].shape[1]
    other = qb.answer(GREY, ROADWORK_PROMPT, 5)
    assert other.top != ans.top                                          # the image reaches the logits


def test_served_twin_with_openai_client(twin):
    _, qb = twin
    with StandinServer(qb, "tiny-qwen2vl") as s:
        oc = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
        r = oc.chat.completions.create(model="tiny-qwen2vl", max_completion_tokens=1, temperature=0, logprobs=True, top_logprobs=5,
                                       messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_data_url(CONE)}},
                                                                              {"type": "text", "text": ROADWORK_PROMPT}]}])
        want = qb.answer(load_image(image_jpeg_bytes(CONE)), ROADWORK_PROMPT, 5)   # what the server saw
        got = r.choices[0].logprobs.content[0]
        assert [t.token for t in got.top_logprobs] == [t for t, _ in want.top] and got.token == want.top[0][0]
        assert [t.logprob for t in got.top_logprobs] == pytest.approx([lp for _, lp in want.top], abs=1e-4)
        assert r.usage.prompt_tokens == want.prompt_tokens
        # the cascade's client: p from the Yes/No mass if the random model has any among its top-20, else a typed error
        with s.client(top_logprobs=20) as c:
            raw, _ = c.chat(CONE)
            top20 = raw["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            expected = p_from_top_logprobs(top20)
            try:
                a = c.p_roadwork(CONE)
                assert (a.source == "logprobs" and a.p == pytest.approx(expected)) or (expected is None and a.source == "text")
            except VLMBadResponse:
                assert expected is None
        # text-only completions run through the same model
        cr = httpx.post(s.url + "/v1/completions", json={"model": "tiny-qwen2vl", "prompt": "Is there roadwork?", "max_tokens": 1, "logprobs": 3}).json()
        assert len(cr["choices"][0]["logprobs"]["top_logprobs"][0]) == 3 and cr["usage"]["completion_tokens"] == 1
        m = parse_metrics(httpx.get(s.url + "/metrics").text)
        assert metric_total(m, "vllm:prompt_tokens_total") == r.usage.prompt_tokens + raw["usage"]["prompt_tokens"] * 2 + cr["usage"]["prompt_tokens"]
