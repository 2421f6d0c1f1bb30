"""Test data: the real EmoDB copy and small subsets of it, synthetic tones, and a tiny chain config."""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_EMODB = REPO.parent / "shared" / "data" / "emodb"


def emodb_root() -> Path | None:
    """The real EmoDB copy: ../shared/data/emodb next to the checkout, else $DSL_EMODB; None if absent."""
    for candidate in (DEFAULT_EMODB, os.environ.get("DSL_EMODB")):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


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


def tiny_emodb(src: str | Path, dst: str | Path, per_class: int = 5, speakers: int = 5) -> Path:
    """Symlink `per_class` utterances of each emotion, from the first `speakers` speakers, into `dst`."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(src.rglob("*.wav"))
    keep_spk = sorted({f.name[:2] for f in files})[:speakers]
    by_class: dict[str, list[Path]] = defaultdict(list)
    for f in files:
        if f.name[:2] in keep_spk and len(f.stem) == 7:
            by_class[f.stem[5]].append(f)
    for _, fs in sorted(by_class.items()):
        # spread over speakers: round-robin by speaker
        by_spk: dict[str, list[Path]] = defaultdict(list)
        for f in fs:
            by_spk[f.name[:2]].append(f)
        picked: list[Path] = []
        while len(picked) < per_class and any(by_spk.values()):
            for spk in sorted(by_spk):
                if by_spk[spk] and len(picked) < per_class:
                    picked.append(by_spk[spk].pop(0))
        for f in picked:
            link = dst / f.name
            if not link.exists():
                link.symlink_to(f.resolve())
    return dst


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
