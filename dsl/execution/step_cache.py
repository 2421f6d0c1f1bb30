"""Content-addressed cache of chain steps: a sweep pays once for the fold trainings its trials share.

Two kinds of entry, both named by a hash of everything that determines them:

- a **fold training** (`FoldOutput`: posteriors, epochs, timing): keyed by the data's content, the config
  minus what cannot change a fold's numbers (the label rule, alphas and chain length reach it only through
  its targets), the code and machine fingerprint, and the job itself: iteration, seed, training and
  predicted utterances and the targets of its training segments. So iteration 0 is shared by every rule,
  a chain of T=2 by the first iterations of T=3 with the same rule and alphas, and two trials sampled with
  the same configuration cost one, under any protocol (its scopes and folds are in the job);
- an iteration's **scores** (the utterance stage's predictions and, held out, each scope's validation UA):
  keyed by the keys of the iteration's fold trainings and the same config parts, with the utterance stage's
  settings (a fold training's key has only whether the stage needs its embeddings).

"What can change the numbers" is taken broadly: the versions of the libraries that compute (torch, numpy,
scikit-learn, timm), the CPU model and SIMD flags, and a hash of this package's source files (and of the
plugin modules), so a changed recipe, library or code is never served an old step. The thread count stays
in the key: oneDNN's reductions may round differently with another. The runner that executes the folds
(processes, Ray tasks) does not: a job's result does not depend on it.

Entries are files written to a temporary name and renamed into place, so a killed writer leaves no half
entry (only a `.tmp-*` file that nothing reads, removed by `prune_temporaries`). Two trials that need the
same missing fold training at once compute it once: the job runs under a claim (`dsl.execution.step_claims`) and the
other trial's job waits for the entry while its chain goes on with other folds. Should both compute a step
anyway (a claim taken over, scores), the first rename wins and `put_*` returns the stored winner, so every
later reader, and both writers, carry the same numbers.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import io
import json
import os
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dsl.config import ChainConfig, flatten
from dsl.execution.fold_output import FoldOutput
from dsl.runtime.environment import machine_info

STEP_CACHE_FORMAT = 1  # layout of an entry; part of every key, so a new layout never reads an old one

# Config keys that cannot change a step's numbers: a fold's targets carry the label rule and alphas (and an
# iteration's scores depend only on its folds' outputs), the data's content hash carries the corpus, paths,
# train.aux_data's frames and bad-file handling (a holdout's utterances are in each job's own part of the key); the
# rest are execution-only settings or the length of the chain. `eval.*` (test conditions) reaches a fold's key
# through the job's conditions, which carry their noisy frames and attacks
# (`dsl.robustness.conditions.JobConditions.key_parts`): a run without conditions keeps its keys.
_NOT_IN_KEY_PREFIXES = ("labels.", "eval.")
_NOT_IN_KEY = ("iterations", "seeds", "data", "cache_dir", "bad_files", "corpus", "train.workers",
               "protocol.test_data", "protocol.test_corpus", "train.aux_data", "protocol.holdout")


def _plain(obj: Any) -> Any:
    """JSON for numpy scalars and arrays (exact: `item()` gives the same value as a Python number)."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _hash(*parts: Any) -> str:
    h = hashlib.blake2b(digest_size=20)
    for p in parts:
        if isinstance(p, np.ndarray):
            a = np.ascontiguousarray(p)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.data)
        elif isinstance(p, bytes):
            h.update(p)
        else:
            h.update(json.dumps(p, sort_keys=True, default=_plain).encode())
        h.update(b"\x00")
    return h.hexdigest()


@functools.lru_cache(maxsize=8)
def _source_hash(modules: tuple[str, ...]) -> str:
    """Hash of the source files of this package and of the plugin modules (by content)."""
    files = sorted(Path(__file__).parents[1].rglob("*.py"))  # every module of the dsl package
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            files.append(Path(spec.origin))
    return _hash(*[f.name.encode() + b"\x00" + f.read_bytes() for f in files])


def code_fingerprint(plugins: Sequence[str] = ()) -> dict[str, str]:
    """What besides the config and data can change a step's numbers: code, libraries, machine."""
    try:
        import timm

        timm_version = timm.__version__
    except ImportError:  # pragma: no cover - timm is a dependency
        timm_version = "none"
    info = machine_info()
    return {"format": str(STEP_CACHE_FORMAT), "machine": info["fingerprint"], "timm": timm_version,
            "source": _source_hash(tuple(plugins))}


def data_fingerprint(data: Any, with_aux: bool = True) -> str:
    """Hash of a `CorpusData`'s content: frames, offsets, labels, speakers, class names and file names, and
    (`with_aux`, when present) the frames and offsets of the `train.aux_data` corpus."""
    parts: list[Any] = [np.asarray(data.frames), np.asarray(data.frame_offsets), np.asarray(data.labels),
                        [str(s) for s in data.speakers], list(data.label_names), [Path(p).name for p in data.paths]]
    aux = getattr(data, "aux_frames", None)
    if with_aux and aux is not None:
        parts += ["aux", np.asarray(aux), np.asarray(data.aux_offsets)]
    return _hash(*parts)


def config_fingerprint(cfg: ChainConfig, *, for_folds: bool) -> dict[str, Any]:
    """The flat config that can change a fold training (`for_folds`) or an iteration's scores, with the
    device and precision as this machine resolves them. A fold training sees the utterance stage only
    through what it must output (embeddings or not), so trials that differ only in the stage's own
    settings share their fold trainings."""
    from dsl.method.stages import stage_input
    from dsl.training.train import resolve_device, resolve_precision

    flat = flatten(cfg.to_dict())
    out = {k: v for k, v in flat.items() if k not in _NOT_IN_KEY and not k.startswith(_NOT_IN_KEY_PREFIXES)
           and not (for_folds and k.startswith("stage."))}
    if for_folds:
        out["stage_input"] = stage_input(cfg.stage)
    out["train.device"] = resolve_device(cfg.train.device).type
    out["train.precision"] = resolve_precision(cfg.train.precision, cfg.backbone)
    return out


@dataclasses.dataclass(frozen=True)
class StepKeys:
    """Key parts fixed for one chain: computed once, combined with each job's own parts."""

    folds: str
    scores: str

    @classmethod
    def of(cls, cfg: ChainConfig, data: Any) -> StepKeys:
        common = (code_fingerprint(cfg.plugins), data_fingerprint(data, with_aux=cfg.train.aux == "mtl_aug"))
        return cls(_hash("folds", *common, config_fingerprint(cfg, for_folds=True)),
                   _hash("scores", *common, config_fingerprint(cfg, for_folds=False)))

    def fold(self, iteration: int, seed: int, train_utterances: np.ndarray, predict_utterances: np.ndarray,
             train_targets: np.ndarray, conditions: Sequence[Any] = ()) -> str:
        """Key of one fold training: the chain's parts and the job's (its targets' rows it trains on, and the test
        conditions it scores, if any: an output without them is never served to a job that asks for them)."""
        return _hash(self.folds, int(iteration), int(seed), np.asarray(train_utterances, dtype=np.int64),
                     np.asarray(predict_utterances, dtype=np.int64), np.asarray(train_targets, dtype=np.float32),
                     *conditions)

    def scores_of(self, fold_keys: Sequence[str]) -> str:
        """Key of an iteration's scores: the chain's parts and its fold trainings' keys, in plan order."""
        return _hash(self.scores, list(fold_keys))


class StepCache:
    """A directory of entries: `folds/<ab>/<key>.npz` and `scores/<ab>/<key>.npz`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"StepCache({str(self.root)!r})"

    def _path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.npz"

    def _read(self, kind: str, key: str) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        path = self._path(kind, key)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files if k != "__meta__"}
                meta = json.loads(str(z["__meta__"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # not written by `_write`: say which file, then recompute
            import warnings

            warnings.warn(f"step cache: removing unreadable entry {path} ({exc}); the step is computed again",
                          stacklevel=3)
            path.unlink(missing_ok=True)  # entries appear whole (by link/rename): this one was damaged later
            return None
        if meta.get("format") != STEP_CACHE_FORMAT:
            return None
        return meta, arrays

    def _write(self, kind: str, key: str, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Atomically create the entry unless it exists (the first writer wins; a loser's copy is dropped)."""
        path = self._path(kind, key)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, __meta__=np.asarray(json.dumps({**meta, "format": STEP_CACHE_FORMAT}, default=_plain)), **arrays)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(buf.getbuffer())
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)  # fails if the entry appeared meanwhile: the first writer wins
            except FileExistsError:
                pass
            except OSError:  # a filesystem without hard links: rename (an equal entry may be replaced)
                os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)

    # fold trainings -------------------------------------------------------------------------------------
    def get_fold(self, key: str):
        """The cached `FoldOutput` of a fold training, or None."""
        entry = self._read("folds", key)
        if entry is None:
            return None
        meta, arrays = entry
        names = {f.name for f in dataclasses.fields(FoldOutput)}
        values = {k: v for k, v in meta["scalars"].items() if k in names}
        values.update({k: v for k, v in arrays.items() if k in names})
        try:
            return FoldOutput(**values)
        except TypeError:  # a field this code needs is missing from the entry
            return None

    def has_fold(self, key: str) -> bool:
        """Whether the fold training is stored (entries appear whole, so an existing file is complete)."""
        return self._path("folds", key).exists()

    def put_fold(self, key: str, output):
        """Store a computed `FoldOutput`; returns the stored one (another writer's if it was first)."""
        arrays = {f.name: getattr(output, f.name) for f in dataclasses.fields(output)
                  if isinstance(getattr(output, f.name), np.ndarray)}
        scalars = {f.name: getattr(output, f.name) for f in dataclasses.fields(output) if f.name not in arrays}
        self._write("folds", key, {"scalars": scalars, "written": time.time()}, arrays)
        return self.get_fold(key) or output

    # iteration scores -----------------------------------------------------------------------------------
    def get_scores(self, key: str):
        """The cached (UtteranceScores, per-scope validation UA or None, {condition: UtteranceScores}) of an
        iteration, or None."""
        from dsl.method.evaluate import UtteranceScores

        entry = self._read("scores", key)
        if entry is None:
            return None
        meta, arrays = entry

        def scores_of(plain: dict, prefix: str) -> UtteranceScores:
            return UtteranceScores(**plain, predictions=arrays[f"{prefix}predictions"],
                                   probabilities=arrays[f"{prefix}probabilities"])

        conditions = {name: scores_of(plain, f"condition.{name}.") for name, plain in meta.get("conditions", {}).items()}
        return scores_of(meta["scores"], ""), meta["val_ua"], conditions

    def put_scores(self, key: str, sc, val_ua: list[float] | None, conditions: dict | None = None):
        """Store an iteration's scores (and those under its test conditions); returns the stored ones (another
        writer's if it was first)."""
        conditions = dict(conditions or {})
        arrays: dict[str, np.ndarray] = {}

        def plain(scores, prefix: str) -> dict:
            arrays[f"{prefix}predictions"] = np.asarray(scores.predictions)
            arrays[f"{prefix}probabilities"] = np.asarray(scores.probabilities)
            return {k: v for k, v in dataclasses.asdict(scores).items() if k not in ("predictions", "probabilities")}

        meta = {"scores": plain(sc, ""), "val_ua": val_ua, "written": time.time()}
        if conditions:
            meta["conditions"] = {name: plain(c, f"condition.{name}.") for name, c in conditions.items()}
        self._write("scores", key, meta, arrays)
        return self.get_scores(key) or (sc, val_ua, conditions)

    def prune_temporaries(self, older_than_s: float = 3600.0) -> int:
        """Remove `.tmp-*` files of writers killed more than `older_than_s` ago; returns how many."""
        n, cutoff = 0, time.time() - older_than_s
        for tmp in self.root.glob("*/*/.tmp-*"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    n += 1
            except FileNotFoundError:
                pass
        return n

    def entries(self) -> dict[str, int]:
        """Number of entries per kind (for reports)."""
        return {kind: sum(1 for _ in (self.root / kind).glob("*/*.npz")) for kind in ("folds", "scores")}
