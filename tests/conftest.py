import os

import pytest

from selfimprove.tiny.model import TinySpec, build_tiny

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def mini_model(tmp_path_factory):
    """A quickly built tiny-world model (same tokenizer and architecture, 40 warm-start steps)."""

    out = tmp_path_factory.mktemp("models") / "mini"
    build_tiny(out, TinySpec(warm_steps=40, warm_batch=64), log=lambda *a: None)
    return str(out)
