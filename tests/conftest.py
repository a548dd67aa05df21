"Shared pytest set-up: nothing downloads, everything runs on the CPU."
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("S1C_MODE", "cpu")


def pytest_collection_modifyitems(session, config, items):
    "Run the docs build last: it renders the notebooks the papermill suite executed."
    items.sort(key=lambda it: it.nodeid.startswith("tests/test_docs.py"))
