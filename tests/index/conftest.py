"""Fixtures: the small real encoder (session-wide: loading its models takes a few seconds)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest


def helpers() -> Any:
    spec = importlib.util.spec_from_file_location(
        "_real_encoder_loader", Path(__file__).with_name("real_encoder.py")
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.load_helper_module()


@pytest.fixture(scope="session")
def real_encoder() -> Any:
    return helpers().SmallRealEncoder()


@pytest.fixture(scope="session")
def search_helpers() -> Any:
    return helpers()


@pytest.fixture(scope="session")
def real_index(
    tmp_path_factory: pytest.TempPathFactory, real_encoder: Any, search_helpers: Any
) -> Path:
    """The test index (8 images, 8 captions) embedded once by the real encoder; do not modify."""
    return search_helpers.build_test_index(tmp_path_factory.mktemp("real-index"), real_encoder)
