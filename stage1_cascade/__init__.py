"""A roadwork detector for street images: a confidence-routed cascade of image models and vision-language models, for the NATIX StreetVision subnet.

Modules:

- `stage1_cascade.bench`: Runs the whole cascade (Stage 1, then the VLM tiers over HTTP) on a labelled image set, writes one line per image and the metrics the subnet scores, beside two baselines measured in the same run; the `eval` and `demo` commands are thin wrappers over `evaluate`.
- `stage1_cascade.cascade`: The router that sends an image from Stage 1 to the VLM tiers only when the cheaper tier is unsure, answers before the deadline whatever happens, and whose thresholds are searched on a calibration split to maximise the NATIX reward under a budget of VLM calls per image.
- `stage1_cascade.cli`: `stage1-cascade <verb>`: a thin layer over the package. Each verb parses its arguments, calls one function of a module and prints a short summary; the work lives in the modules.
- `stage1_cascade.compression.evicpress`: A labelled simulation of a compress-or-evict policy for KV caches across GPU, CPU and disk: every parameter is an input, and no output is a measurement.
- `stage1_cascade.compression.kv`: kvpress presses, KV quantization and a SparK-style channel press applied to tiny twins of Qwen3 and Llama: the KV bytes each one really holds, its prefill time, and how far its next-token distributions drift from the uncompressed model's.
- `stage1_cascade.compression.quant`: Two ways to hold a model in fewer bytes, each measured rather than assumed: a KV cache that stores 4-bit codes plus a low-rank and a sparse correction of their error (GEAR), and weight checkpoints (W4A16 with AWQ, FP8) written by llm-compressor in its own environment in the compressed-tensors format that vLLM loads without flags.
- `stage1_cascade.compression.report`: One row per compression technique, measured on tiny twins, replayed from a recorded run, computed or labelled as not measured, beside the seed plan's claimed constant.
- `stage1_cascade.core`: The ground every other notebook stands on: one settings object, logging configured once, and run folders whose files are written atomically.
- `stage1_cascade.data`: Every image the cascade sees passes through here: decoded and validated (or refused with a reason), augmented the way a NATIX validator augments it, and, when no real data is at hand, drawn by a procedural street-scene generator.
- `stage1_cascade.detect`: Three candidate image models with their real loaders (an ultralytics YOLO, an HF transformers RT-DETRv2, a small CNN), each turned into P(roadwork); the ones that earn their place on a calibration split are fused by logistic stacking. Checkpoints load only if their sha256 is the one recorded when the project wrote them.
- `stage1_cascade.plan.facts`: What each model is made of and what it costs in bytes: weights at a precision, KV cache per token, image tokens at 224 px; and the GPU cards there are to hold them.
- `stage1_cascade.plan.placement`: The models placed on a GPU inventory from their computed footprints, with vLLM's sleep mode for the ones that do not fit beside the others, and a bar chart per card.
- `stage1_cascade.scripts.autoawq_compare`: AutoAWQ 4-bit on the same twin, for comparison only (AutoAWQ is deprecated; llm-compressor is the maintained path): quantize, save, and try to load the checkpoint back through transformers.
- `stage1_cascade.scripts.package_versions`: The installed versions of some distributions, as the interpreter that runs this sees them.
- `stage1_cascade.scripts.quantize_worker`: Quantize a checkpoint with llm-compressor and check that the saved checkpoint loads and runs.
- `stage1_cascade.scripts.vllm_serve_args`: Parse `vllm serve` argument lists with vLLM's own parser, then vLLM's CacheConfig (the parser takes any string for the KV dtype; CacheConfig is what rejects an unknown one).
- `stage1_cascade.serve.args`: How each planned model is served: the `vllm serve` arguments its stack config renders, checked against a schema and vLLM's own parser, and a start script for a whole plan.
- `stage1_cascade.standin.backends`: The models behind a stand-in VLM server, each turning (image, prompt) into the first token's top logprobs: a CPU classifier per tier (trained, measured and shipped with its manifest), a transparent colour heuristic, and a tiny random-weight Qwen2-VL run through transformers' real loaders.
- `stage1_cascade.standin.protocol`: The request types, body reading and checks of vLLM's OpenAI-compatible server, and its answer to each kind of bad request, so that a client probing a stand-in server gets what a vLLM server would send.
- `stage1_cascade.standin.server`: A FastAPI app that serves vLLM's routes, JSON shapes and metrics from a stand-in backend, injects faults on request, and runs on loopback in a thread or as a killable process; a fleet of them stands in for the cascade's VLM tiers.
- `stage1_cascade.vlm`: The cascade's VLM tiers are servers, not imports: this client asks each one yes/no question per image over vLLM's OpenAI-compatible HTTP API, reads P(roadwork) from the first token's logprobs, keeps to the caller's time budget and fails with typed errors."""

__version__ = "0.1.0"
