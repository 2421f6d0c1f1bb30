"""Shared test fixtures; the plain helpers they use live in tests/support/."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.support.data import DEFAULT_EMODB, emodb_root, emodb_subset_files, write_tone


@pytest.fixture
def emodb_path() -> Path:
    """Path to the real EmoDB copy, or skip the test."""
    root = emodb_root()
    if root is None:
        pytest.skip(f"EmoDB not found at {DEFAULT_EMODB}; set DSL_EMODB")
    return root


@pytest.fixture(autouse=True, scope="session")
def _quiet_progress() -> None:
    os.environ.setdefault("DSL_PROGRESS", "0")


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One feature cache for the whole test session, so each corpus is extracted once."""
    return tmp_path_factory.mktemp("feature-cache")


@pytest.fixture(scope="session")
def emodb_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of symlinks to a tiny EmoDB subset (42 utterances, 6 speakers), or skip."""
    if emodb_root() is None:
        pytest.skip(f"EmoDB not found at {DEFAULT_EMODB}; set DSL_EMODB")
    folder = tmp_path_factory.mktemp("emodb-subset")
    for p in emodb_subset_files():
        (folder / p.name).symlink_to(p)
    return folder


@pytest.fixture(scope="session")
def tone_corpus(tmp_path_factory):
    """Three 'emotions' = three pitch ranges, 8 utterances each, 4 speakers, as a CSV manifest."""
    root = tmp_path_factory.mktemp("tones")
    rows = ["path,label,speaker"]
    rng = np.random.default_rng(0)
    for c, base in enumerate((200.0, 800.0, 2400.0)):
        for i in range(8):
            name = f"c{c}_{i}.wav"
            write_tone(root / name, seconds=0.6 + 0.05 * i, freq=base * (1 + 0.1 * rng.random()))
            rows.append(f"{name},class{c},spk{i % 4}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"
