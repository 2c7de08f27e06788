"""Fixtures of the Space tests: the app module (loaded from ``space/app.py``) served on a free local port."""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path

import pytest

SPACE_DIR = Path(__file__).resolve().parents[2] / "space"


def load_app():
    """``space/app.py`` as a module (the Space is an application folder, not an installed package)."""
    pytest.importorskip("gradio", reason="the Space needs gradio (pip install -e '.[test]')")
    if "pasta_space_app" in sys.modules:
        return sys.modules["pasta_space_app"]
    spec = importlib.util.spec_from_file_location("pasta_space_app", SPACE_DIR / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def space_app():
    return load_app()


@pytest.fixture(scope="session")
def served_space(space_app, tiny_pipeline_dir):
    """The Space with the tiny pipeline, on 127.0.0.1 with a 1 MB upload limit; yields its URL."""
    demo = space_app.launch(tiny_pipeline_dir, port=free_port(), max_upload_mb=1, block=False)
    yield demo.local_url
    demo.close()
