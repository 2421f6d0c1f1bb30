"""A final exam the search never sees: a speaker-disjoint part of the corpus reserved before a sweep starts.

Why: re-evaluating the sweep's top configurations on fresh seeds re-draws folds and initialisation over the same
utterances the search ranked on, so the corpus-specific part of the selection bias stays, and the winner's
re-evaluated mean is itself the maximum of several noisy means. Scoring the winner once on utterances that no
trial, scheduler rung, sampler update or re-evaluation ranking has read measures what the selection is worth.

A holdout is chosen by speakers named (`speakers`), a seeded fraction of the speakers (`speaker_fraction`), or,
for corpora without speakers, a seeded stratified fraction of the utterances (`fraction`). It is written once to a
stored *assignment* (JSON: the held-out files, by path relative to the corpus folder, no label), and every later
use reads that file, so the split never depends on the labels: change a held-out utterance's label and the
split, and everything the search computes, stays the same (`tests/test_holdout.py`). Files are matched by path
suffix (`03a01Fa.wav`, or `<speaker>/<emotion>/<file>.wav` where base names repeat), never by label.

`split(data, assignment)` gives (search data, holdout data); the sweep hands only the search data to Ray's object
store and the step cache. `protocol.holdout` (an assignment file) makes a chain train on the search part with
its protocol's own inner structure and score the holdout only (`dsl.protocols.plans.holdout_plan`).
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dsl.config import ConfigError
from dsl.formats import check_format

HOLDOUT_FORMAT = 1
KEYS = ("speakers", "speaker_fraction", "fraction", "seed", "assignment")


@dataclass(frozen=True)
class HoldoutSpec:
    """Which utterances the search never sees: exactly one of `speakers`, `speaker_fraction`, `fraction`."""

    speakers: tuple[str, ...] = ()  # speakers named (EmoDB: "03", "08")
    speaker_fraction: float = 0.0  # a seeded share of the speakers (at least one)
    fraction: float = 0.0  # a seeded stratified share of the utterances (corpora without speakers)
    seed: int = 0
    assignment: str = ""  # where the assignment is stored (read if it exists, else written once)

    def __post_init__(self) -> None:
        chosen = [k for k in ("speakers", "speaker_fraction", "fraction") if getattr(self, k)]
        if len(chosen) != 1:
            raise ConfigError("holdout: give exactly one of speakers (a list), speaker_fraction or fraction; got "
                              f"{', '.join(chosen) or 'none'}")
        for k in ("speaker_fraction", "fraction"):
            v = getattr(self, k)
            if v and not 0.0 < v < 1.0:
                raise ConfigError(f"holdout.{k} = {v}; must be in (0, 1)")

    @property
    def how(self) -> str:
        """The rule in words, e.g. `speakers 03, 08` or `20 % of the speakers (seed 0)`."""
        if self.speakers:
            return f"speakers {', '.join(self.speakers)}"
        if self.speaker_fraction:
            return f"{100 * self.speaker_fraction:g} % of the speakers (seed {self.seed})"
        return f"{100 * self.fraction:g} % of the utterances, stratified by class (seed {self.seed})"

    def rule(self) -> dict[str, Any]:
        """What decides the split (the assignment's path left out): compared when a stored file is read back."""
        d = asdict(self)
        d.pop("assignment")
        d["speakers"] = list(self.speakers)
        return d


def parse_holdout(raw: Any, where: str = "holdout") -> HoldoutSpec:
    """A `holdout:` mapping of a sweep file (or the YAML text of `--holdout`); one ConfigError naming `where`."""
    if isinstance(raw, str):
        import yaml

        try:
            raw = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where}: not a YAML mapping: {exc}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping such as {{speakers: ['03', '08']}}, {{speaker_fraction: 0.2}} "
                          f"or {{fraction: 0.2, seed: 0}}; got {raw!r}")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(KEYS)}")
    speakers = raw.get("speakers") or ()
    if isinstance(speakers, (str, int)):
        speakers = [speakers]
    try:
        return HoldoutSpec(speakers=tuple(str(s) for s in speakers),
                           speaker_fraction=float(raw.get("speaker_fraction") or 0.0),
                           fraction=float(raw.get("fraction") or 0.0), seed=int(raw.get("seed", 0)),
                           assignment=str(raw.get("assignment") or ""))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _speaker_matches(name: str, wanted: str) -> bool:
    """`03` matches `3` too: YAML reads an unquoted 03 as the number 3."""
    return name == wanted or (name.isdigit() and wanted.isdigit() and int(name) == int(wanted))


def file_keys(paths: Sequence[str | Path]) -> list[str]:
    """Each file by its path relative to the corpus folder (the paths' common folder), in POSIX form."""
    if not paths:
        return []
    parts = [Path(p).resolve() for p in paths]
    root = Path(os.path.commonpath([str(p.parent) for p in parts]))
    return [p.relative_to(root).as_posix() for p in parts]


@dataclass(frozen=True)
class HoldoutAssignment:
    """The stored split: the held-out files (by relative path) and the rule that chose them; no labels."""

    files: tuple[str, ...]
    spec: HoldoutSpec
    speakers: tuple[str, ...] = ()  # the held-out speakers (speaker rules)
    n_corpus: int = 0  # utterances of the corpus it was made for
    path: str = field(default="", compare=False)

    def mask(self, paths: Sequence[str | Path]) -> np.ndarray:
        """True for each of `paths` that is held out, matched by path suffix (not by label or position)."""
        by_name: dict[str, list[str]] = {}
        for f in self.files:
            by_name.setdefault(f.rsplit("/", 1)[-1], []).append(f)
        out = np.zeros(len(paths), dtype=bool)
        for i, p in enumerate(paths):
            posix = Path(p).as_posix()
            for f in by_name.get(Path(p).name, ()):
                if posix == f or posix.endswith("/" + f):
                    out[i] = True
                    break
        return out

    def indices(self, paths: Sequence[str | Path]) -> np.ndarray:
        """Positions of the held-out utterances among `paths` (an error if none is found)."""
        idx = np.flatnonzero(self.mask(paths))
        if not len(idx):
            raise ConfigError(f"{self.path or 'holdout assignment'}: none of its {len(self.files)} files is in this "
                              f"corpus of {len(paths)} utterances (another corpus?)")
        return idx

    def to_dict(self) -> dict[str, Any]:
        return {"format": HOLDOUT_FORMAT, "kind": "holdout", "rule": self.spec.rule(), "how": self.spec.how,
                "speakers": list(self.speakers), "n_corpus": self.n_corpus, "n_holdout": len(self.files),
                "files": list(self.files)}

    def save(self, path: str | Path) -> Path:
        """Written atomically (a reader never sees half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)
        return path


def load_holdout(path: str | Path) -> HoldoutAssignment:
    """A stored assignment; one ConfigError naming the file if it is not one."""
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{p}: cannot read the holdout assignment: {exc}") from None
    if not isinstance(d, dict) or d.get("kind") != "holdout" or not isinstance(d.get("files"), list) or not d["files"]:
        raise ConfigError(f"{p}: not a holdout assignment (a JSON with kind: holdout and a non-empty list of files)")
    try:
        check_format(p, int(d.get("format", 0)), HOLDOUT_FORMAT, "holdout assignment", "read it")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    rule = dict(d.get("rule") or {})
    spec = parse_holdout({**rule, "assignment": str(p)}, where=str(p))
    return HoldoutAssignment(tuple(map(str, d["files"])), spec, tuple(map(str, d.get("speakers", ()))),
                             int(d.get("n_corpus", 0)), str(p))


def choose(spec: HoldoutSpec, paths: Sequence[str | Path], speakers: Sequence[str],
           labels: np.ndarray | None = None) -> HoldoutAssignment:
    """Apply the rule to a corpus. Speaker rules read no label; `fraction` stratifies by class, which is why
    its result is stored and read back rather than recomputed."""
    keys = file_keys(paths)
    spk = np.asarray([str(s) for s in speakers])
    known = sorted(set(spk.tolist()))
    if spec.speakers or spec.speaker_fraction:
        if len(known) < 2:
            raise ConfigError(f"holdout by speaker: the corpus has {len(known)} speaker(s) ({', '.join(known)}); "
                              "use holdout.fraction for a corpus without speakers")
        if spec.speakers:
            chosen = sorted({k for k in known for w in spec.speakers if _speaker_matches(k, w)})
            missing = [w for w in spec.speakers if not any(_speaker_matches(k, w) for k in known)]
            if missing:
                raise ConfigError(f"holdout.speakers: no utterance of speaker(s) {', '.join(missing)}; the corpus has "
                                  f"{', '.join(known)}")
        else:
            n = max(1, int(round(spec.speaker_fraction * len(known))))
            rng = np.random.default_rng(spec.seed)
            chosen = sorted(rng.choice(np.asarray(known), size=n, replace=False).tolist())
        if len(chosen) >= len(known):
            raise ConfigError(f"holdout: speakers {', '.join(chosen)} are every speaker of the corpus; the search "
                              "needs some")
        held = np.isin(spk, chosen)
    else:
        if labels is None:
            raise ConfigError("holdout.fraction stratifies by class: it needs the corpus labels")
        from sklearn.model_selection import StratifiedShuffleSplit

        splitter = StratifiedShuffleSplit(n_splits=1, test_size=spec.fraction, random_state=spec.seed)
        try:
            _, test = next(splitter.split(np.zeros(len(keys)), np.asarray(labels)))
        except ValueError as exc:
            raise ConfigError(f"holdout.fraction = {spec.fraction}: {exc}") from None
        held = np.zeros(len(keys), dtype=bool)
        held[test] = True
        chosen = []
    return HoldoutAssignment(tuple(k for k, h in zip(keys, held) if h), spec, tuple(chosen), len(keys))


def make_holdout(spec: HoldoutSpec, paths: Sequence[str | Path], speakers: Sequence[str],
                 labels: np.ndarray | None, path: str | Path) -> HoldoutAssignment:
    """The assignment stored at `path` if there is one (it must have been made by the same rule), else the rule
    applied to this corpus and written there, once."""
    p = Path(path)
    if p.is_file():
        stored = load_holdout(p)
        if stored.spec.rule() != spec.rule():
            raise ConfigError(f"{p}: this holdout assignment was made by another rule ({stored.spec.how}, not "
                              f"{spec.how}); delete it, or give holdout.assignment another path")
        stored.indices(paths)
        return stored
    made = choose(spec, paths, speakers, labels)
    made = HoldoutAssignment(made.files, made.spec, made.speakers, made.n_corpus, str(p))
    made.save(p)
    return made


def split(data: Any, assignment: HoldoutAssignment) -> tuple[Any, Any]:
    """(search data, holdout data) of a `CorpusData`, by file identity; the search part must keep utterances."""
    held = assignment.mask(data.paths)
    if not held.any():
        raise ConfigError(f"{assignment.path or 'holdout'}: none of its files is in this corpus")
    if held.all():
        raise ConfigError(f"{assignment.path or 'holdout'}: every utterance of the corpus is held out")
    return data.subset(np.flatnonzero(~held)), data.subset(np.flatnonzero(held))


def describe_split(assignment: HoldoutAssignment, data: Any | None = None) -> str:
    """One line: how the holdout was chosen and its size; with `data` (the full corpus: the final exam, never the
    search) also how many held-out utterances each class has."""
    spk = f" (speakers {', '.join(assignment.speakers)})" if assignment.speakers and not assignment.spec.speakers else ""
    per_class = ""
    if data is not None:
        held = assignment.mask(data.paths)
        counts = np.bincount(np.asarray(data.labels)[held], minlength=data.n_classes)
        per_class = f": {', '.join(f'{c} {n}' for n, c in zip(data.label_names, counts))}"
    return (f"holdout: {assignment.spec.how}{spk}, {len(assignment.files)} of {assignment.n_corpus} utterances"
            f"{per_class} | assignment {assignment.path}")
