"""A roadwork detector for street images: a confidence-routed cascade of image models and vision-language models, for the NATIX StreetVision subnet.

Modules:

- `stage1_cascade.cascade`: The router that sends an image from Stage 1 to the VLM tiers only when the cheaper tier is unsure, answers before the deadline whatever happens, and whose thresholds are searched on a calibration split to maximise the NATIX reward under a budget of VLM calls per image.
- `stage1_cascade.cli`: `stage1-cascade <verb>`: a thin layer over the package. Each verb parses its arguments, calls one function of a module and prints a short summary; the work lives in the modules.
- `stage1_cascade.core`: The ground every other notebook stands on: one settings object, logging configured once, and run folders whose files are written atomically.
- `stage1_cascade.data`: Every image the cascade sees passes through here: decoded and validated (or refused with a reason), augmented the way a NATIX validator augments it, and, when no real data is at hand, drawn by a procedural street-scene generator."""

__version__ = "0.1.0"
