"""Shared test helpers and fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

_DEFAULT_EMODB = Path(__file__).resolve().parents[2] / "shared" / "data" / "emodb"


def emodb_root() -> Path | None:
    """The real EmoDB copy: ../shared/data/emodb next to the checkout, else $DSL_EMODB; None if absent."""
    for candidate in (_DEFAULT_EMODB, os.environ.get("DSL_EMODB")):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


@pytest.fixture
def emodb_path() -> Path:
    """Path to the real EmoDB copy, or skip the test."""
    root = emodb_root()
    if root is None:
        pytest.skip(f"EmoDB not found at {_DEFAULT_EMODB}; set DSL_EMODB")
    return root


@pytest.fixture(autouse=True, scope="session")
def _quiet_progress() -> None:
    os.environ.setdefault("DSL_PROGRESS", "0")


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One feature cache for the whole test session, so each corpus is extracted once."""
    return tmp_path_factory.mktemp("feature-cache")


def emodb_subset_files(per_class: int = 6, speakers: tuple[str, ...] = ("03", "08", "09", "10", "11", "16")) -> list[Path]:
    """A small, deterministic, class-balanced EmoDB subset (`per_class` utterances of each emotion)."""
    root = emodb_root()
    assert root is not None
    chosen: list[Path] = []
    by_class: dict[str, list[Path]] = {}
    for p in sorted(root.rglob("*.wav")):
        if p.name[:2] in speakers:
            by_class.setdefault(p.name[5], []).append(p)
    for files in by_class.values():
        # Round-robin over speakers so every speaker appears in every class where possible.
        by_spk: dict[str, list[Path]] = {}
        for p in files:
            by_spk.setdefault(p.name[:2], []).append(p)
        queue = [iter(v) for v in by_spk.values()]
        while len([p for p in chosen if p in files]) < per_class and queue:
            for it in list(queue):
                nxt = next(it, None)
                if nxt is None:
                    queue.remove(it)
                elif len([p for p in chosen if p in files]) < per_class:
                    chosen.append(nxt)
    return chosen


@pytest.fixture(scope="session")
def emodb_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of symlinks to a tiny EmoDB subset (42 utterances, 6 speakers), or skip."""
    if emodb_root() is None:
        pytest.skip(f"EmoDB not found at {_DEFAULT_EMODB}; set DSL_EMODB")
    folder = tmp_path_factory.mktemp("emodb-subset")
    for p in emodb_subset_files():
        (folder / p.name).symlink_to(p)
    return folder


def write_tone(path: Path, seconds: float = 0.5, rate: int = 16000, freq: float = 440.0, channels: int = 1,
               amplitude: float = 0.3) -> Path:
    """A small sine-tone wav for tests that need audio but not emotion."""
    import numpy as np
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    x = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    data = np.stack([x] * channels, axis=1) if channels > 1 else x
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, rate)
    return path


# A tiny chain for synthetic tones: seconds per run, exact checks.
TINY = {"segments.hop": 4, "train.epochs": 8, "train.batch_size": 16, "train.lr": 3e-3, "protocol.folds": 2,
        "protocol.eval_folds": 2, "protocol.inner_folds": 2, "iterations": 2, "train.num_threads": 1}


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
