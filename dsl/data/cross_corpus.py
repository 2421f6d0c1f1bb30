"""Cross-corpus evaluation: train the chain on one corpus, test on another, over the classes they share.

The two corpora's label names are mapped to one vocabulary (`SYNONYMS`, then the config's
`protocol.label_map`, e.g. `gio=happiness,rab=anger`); utterances of classes the other corpus lacks are
left out. The combined corpus keeps the training corpus's class order; speakers are prefixed with their
corpus's name. The `cross_corpus` protocol (`dsl.protocols.plans`) makes one scope whose training set is the
training corpus (the label updates, normalisation, early stopping and forest see only it) and whose test
set is every utterance under `protocol.test_data`.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dsl.config import ConfigError
from dsl.data.corpora import Corpus

# Label names of the registered corpora mapped to one vocabulary (EmoDB's English names).
SYNONYMS = {"angry": "anger", "happy": "happiness", "joy": "happiness", "sad": "sadness", "fearful": "fear",
            "disgusted": "disgust", "surprised": "surprise", "pleasant_surprise": "surprise"}


def parse_label_map(text: str) -> dict[str, str]:
    """`a=b,c=d` -> {a: b, c: d}; an entry without `=` is named."""
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item:
            raise ConfigError(f"protocol.label_map: {item!r} is not NAME=SHARED_NAME")
        k, v = (s.strip() for s in item.split("=", 1))
        out[k] = v
    return out


def canonical(name: str, label_map: dict[str, str]) -> str:
    return label_map.get(name) or SYNONYMS.get(name, name)


def shared_corpus(source: Corpus, target: Corpus, label_map: str = "") -> Corpus:
    """One corpus of both, restricted to their shared classes (at least two), training corpus first."""
    lm = parse_label_map(label_map)
    src = [canonical(n, lm) for n in source.label_names]
    tgt = [canonical(n, lm) for n in target.label_names]
    shared = [n for n in dict.fromkeys(src) if n in tgt]
    if len(shared) < 2:
        raise ConfigError(f"cross-corpus: {source.name} ({', '.join(src)}) and {target.name} ({', '.join(tgt)}) "
                          "share fewer than two classes; map names with protocol.label_map (NAME=SHARED,...)")
    index = {n: i for i, n in enumerate(shared)}
    paths: list[Path] = []
    labels: list[int] = []
    speakers: list[str] = []
    for corpus, names in ((source, src), (target, tgt)):
        for p, y, s in zip(corpus.paths, corpus.labels, corpus.speakers):
            if names[int(y)] in index:
                paths.append(p)
                labels.append(index[names[int(y)]])
                speakers.append(f"{corpus.name}:{s}")
    return Corpus(f"{source.name}->{target.name}", tuple(paths), np.asarray(labels, dtype=np.int64), tuple(shared),
                  tuple(speakers))


def test_utterances(paths: Sequence[str | Path], test_data: str) -> np.ndarray:
    """Indices of the utterances under `test_data` (the test corpus's folder, or the folder of its manifest)."""
    root = Path(test_data).resolve()
    root = root.parent if root.is_file() else root
    idx = [i for i, p in enumerate(paths) if Path(p).resolve().is_relative_to(root)]
    if not idx:
        raise ConfigError(f"protocol.test_data {test_data}: no utterance of the corpus lies under it")
    return np.asarray(idx, dtype=np.int64)
