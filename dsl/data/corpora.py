"""Corpora: a typed `Corpus` and a registry of parsers for published naming schemes.

A parser turns a directory (or a CSV manifest) into a `Corpus`. Each registered format knows its
label names and how to read (label, speaker) from one file's path, so parsers are tested on file
names alone, without audio.
"""
from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsl.registry import Registry

AUDIO_SUFFIXES = (".wav", ".flac")


class CorpusError(ValueError):
    """A corpus could not be parsed; the message lists every offending file at once.

    `problems` maps each offending file (or manifest row) to what is wrong; `partial` is the corpus
    of the files that were fine, so a caller may skip the bad ones and report them.
    """

    def __init__(self, message: str, problems: dict[str, str] | None = None, partial: Corpus | None = None):
        super().__init__(message)
        self.problems = dict(problems or {})
        self.partial = partial


@dataclass(frozen=True)
class Corpus:
    """Utterance paths with integer labels, the label names and the speaker of each utterance."""

    name: str
    paths: tuple[Path, ...]
    labels: np.ndarray  # int64, shape (n,)
    label_names: tuple[str, ...]
    speakers: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.paths)
        if len(self.labels) != n or len(self.speakers) != n:
            raise CorpusError(
                f"corpus {self.name!r}: {n} paths, {len(self.labels)} labels, {len(self.speakers)} speakers"
            )
        object.__setattr__(self, "labels", np.asarray(self.labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def n_classes(self) -> int:
        return len(self.label_names)

    def speaker_ids(self) -> np.ndarray:
        """Integer speaker index per utterance (for grouped splits)."""
        _, inverse = np.unique(np.asarray(self.speakers, dtype=object).astype(str), return_inverse=True)
        return inverse.astype(np.int64)

    def subset(self, indices: Sequence[int] | np.ndarray) -> Corpus:
        idx = np.asarray(indices, dtype=np.int64)
        return Corpus(
            name=self.name,
            paths=tuple(self.paths[i] for i in idx),
            labels=self.labels[idx],
            label_names=self.label_names,
            speakers=tuple(self.speakers[i] for i in idx),
        )

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=self.n_classes)
        return {name: int(c) for name, c in zip(self.label_names, counts)}


@dataclass(frozen=True)
class CorpusFormat:
    """A published naming scheme: label names in a fixed order and a path -> (label, speaker) parser.

    `parse` returns None for files that belong to the corpus directory but are not utterances of
    interest (e.g. RAVDESS song files); it raises `ValueError` for names that look like utterances
    but carry an unknown code, so the loader can report them all at once.
    """

    name: str
    label_names: tuple[str, ...]
    parse: Callable[[Path], tuple[str, str] | None]
    description: str = ""


CORPUS_FORMATS: Registry[CorpusFormat] = Registry("corpus format")  # and `csv`, a manifest of any corpus


def register_corpus(fmt: CorpusFormat) -> CorpusFormat:
    if fmt.name == "csv":
        raise ValueError("corpus format 'csv' is the manifest format (dsl.data.corpora.load_manifest); choose another name")
    return CORPUS_FORMATS.register(fmt)


def list_corpora() -> list[str]:
    return sorted([*CORPUS_FORMATS, "csv"])


def audio_files(root: Path) -> list[Path]:
    """All wav/flac files below `root`, sorted for a stable order."""
    return sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def corpus_from_files(fmt: CorpusFormat, files: Iterable[Path]) -> Corpus:
    """Parse every file with `fmt`; collect all unknown codes before raising."""
    paths: list[Path] = []
    labels: list[int] = []
    speakers: list[str] = []
    problems: dict[str, str] = {}
    index = {name: i for i, name in enumerate(fmt.label_names)}
    for path in files:
        try:
            parsed = fmt.parse(Path(path))
        except ValueError as exc:
            problems[str(path)] = str(exc)
            continue
        if parsed is None:
            continue
        label, speaker = parsed
        if label not in index:
            problems[str(path)] = f"unknown label {label!r} (known: {', '.join(fmt.label_names)})"
            continue
        paths.append(Path(path))
        labels.append(index[label])
        speakers.append(speaker)
    corpus = Corpus(fmt.name, tuple(paths), np.asarray(labels, dtype=np.int64), fmt.label_names, tuple(speakers))
    if problems:
        lines = "\n  ".join(f"{p}: {why}" for p, why in problems.items())
        raise CorpusError(f"{fmt.name}: {len(problems)} file(s) could not be labelled:\n  {lines}", problems, corpus)
    return corpus


def sniff_file(path: Path) -> str | None:
    """What a file is by its first bytes: "an audio file (WAV)", "a CSV manifest", ...; None if unknown."""
    try:
        with path.open("rb") as fh:
            head = fh.read(12)
    except OSError:
        return None
    if head[:4] in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
        return "an audio file (WAV)"
    if head[:4] == b"fLaC":
        return "an audio file (FLAC)"
    if head[:4] == b"OggS" or head[:3] == b"ID3" or head[:2] in (b"\xff\xfb", b"\xff\xf3"):
        return "an audio file"
    if path.suffix.lower() in AUDIO_SUFFIXES:
        return "an audio file"
    if path.suffix.lower() == ".csv":
        return "a CSV manifest"
    return None


def _not_a_folder(name: str, root: Path) -> CorpusError:
    """`--corpus NAME` expects a folder; `root` is a file: say what it is and what to give instead."""
    found = sniff_file(root) or "a file"
    if found == "a CSV manifest":
        todo = "use --corpus csv for a manifest"
    elif found.startswith("an audio file"):
        todo = f"give the folder that holds the corpus (e.g. {root.parent})"
    else:
        todo = "give the corpus folder (or a CSV manifest with --corpus csv)"
    return CorpusError(f"{root}: is {found}, but --corpus {name} expects a corpus folder: {todo}")


def load_corpus(name: str, root: str | Path) -> Corpus:
    """Load a registered corpus from a directory, or a CSV manifest (`name='csv'`, root = the .csv)."""
    root = Path(root)
    if name == "csv":
        return load_manifest(root)
    if name not in CORPUS_FORMATS:
        raise CorpusError(f"unknown corpus {name!r}; known: {', '.join(list_corpora())}")
    if not root.exists():
        raise CorpusError(f"{root}: data path does not exist")
    if not root.is_dir():
        raise _not_a_folder(name, root)
    files = audio_files(root)
    if not files:
        csvs = sorted(root.glob("*.csv"))
        hint = f": it holds {csvs[0].name}; for a manifest use --corpus csv --data {csvs[0]}" if csvs else ""
        raise CorpusError(f"{root}: no .wav or .flac files found for corpus {name!r}{hint}")
    corpus = corpus_from_files(CORPUS_FORMATS[name], files)
    if len(corpus) == 0:
        raise CorpusError(f"{root}: none of {len(files)} audio files matches the {name!r} naming scheme")
    return corpus


def load_manifest(path: Path) -> Corpus:
    """Generic manifest: CSV with header `path,label,speaker`; relative paths are resolved against its folder.

    `speaker` is optional ("unknown" when absent or empty); label names are the sorted unique labels.
    Every bad row (missing file, empty label) is reported at once, by its line number in the CSV.
    """
    path = Path(path)
    check_manifest_path(path)
    try:
        return _read_manifest(path)
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: is not a UTF-8 text file (undecodable byte at offset {exc.start}), but "
                          "--corpus csv expects a CSV manifest with the header path,label[,speaker]") from None


def check_manifest_path(path: Path) -> None:
    """A CorpusError naming what `path` is when it cannot be a CSV manifest (missing, a folder, audio)."""
    expected = "--corpus csv expects a CSV manifest with the header path,label[,speaker]"
    if not path.exists():
        raise CorpusError(f"{path}: manifest does not exist")
    if path.is_dir():
        csvs = sorted(p.name for p in path.glob("*.csv"))
        todo = (f"give one of its CSV files ({', '.join(csvs[:3])}{', ...' if len(csvs) > 3 else ''})" if csvs
                else "for a corpus folder give --corpus NAME (" + ", ".join(sorted(CORPUS_FORMATS)) + ")")
        raise CorpusError(f"{path}: is a folder, but {expected}: {todo}")
    found = sniff_file(path)
    if found and found.startswith("an audio file"):
        raise CorpusError(f"{path}: is {found}, but {expected}: give the manifest that lists it, or the corpus "
                          "folder with --corpus NAME")


def _read_manifest(path: Path) -> Corpus:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in ("path", "label") if c not in columns]
        if missing:
            raise CorpusError(f"{path}: missing column(s) {', '.join(missing)}; header must be path,label[,speaker]")
        reader.fieldnames = columns
        rows: list[tuple[Path, str, str]] = []
        problems: dict[str, str] = {}
        seen: dict[Path, int] = {}
        for row in reader:
            line = reader.line_num
            rel = (row.get("path") or "").strip()
            label = (row.get("label") or "").strip()
            speaker = (row.get("speaker") or "").strip() or "unknown"
            file = path.parent / rel if rel else None
            why = []
            if file is None:
                why.append("empty path")
            elif not file.is_file():
                why.append(f"file not found: {file}")
            elif file.resolve() in seen:
                why.append(f"duplicate path {file} (first on row {seen[file.resolve()]})")
            if not label:
                why.append("empty label")
            if why:
                problems[f"{file or path} (row {line})"] = "; ".join(why)
                continue
            seen[file.resolve()] = line
            rows.append((file, label, speaker))
    if not rows and not problems:
        raise CorpusError(f"{path}: manifest has no rows")
    names = tuple(sorted({label for _, label, _ in rows}))
    index = {name: i for i, name in enumerate(names)}
    corpus = Corpus(
        "csv",
        tuple(f for f, _, _ in rows),
        np.asarray([index[label] for _, label, _ in rows], dtype=np.int64),
        names,
        tuple(s for _, _, s in rows),
    )
    if problems:
        lines = "\n  ".join(f"row {k.rsplit('(row ', 1)[1][:-1]}: {k.rsplit(' (row', 1)[0]}: {v}" for k, v in problems.items())
        raise CorpusError(f"{path}: {len(problems)} bad row(s):\n  {lines}", problems, corpus)
    return corpus


# --------------------------------------------------------------------------- published naming schemes


def _lookup(codes: dict[str, str], code: str, what: str = "emotion") -> str:
    """Map a code to its label, or raise `ValueError` naming the unknown code."""
    if code not in codes:
        raise ValueError(f"unknown {what} code {code!r} (known: {', '.join(codes)})")
    return codes[code]


def _match(pattern: re.Pattern[str], path: Path, scheme: str) -> re.Match[str]:
    """Match the file stem against the scheme's shape, or raise `ValueError`."""
    m = pattern.fullmatch(path.stem)
    if m is None:
        raise ValueError(f"name {path.name!r} does not match {scheme}")
    return m


_EMODB = {"W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "happiness", "T": "sadness", "N": "neutral"}
_EMODB_RE = re.compile(r"(\d{2})([a-z]\d{2})([A-Za-z])([a-z])")


def parse_emodb(path: Path) -> tuple[str, str]:
    """EmoDB `SSTTTEV.wav`: speaker, text code, emotion letter, version."""
    speaker, _, code, _ = _match(_EMODB_RE, path, "SSTTTEV").groups()
    return _lookup(_EMODB, code), speaker


_SAVEE = {"a": "anger", "d": "disgust", "f": "fear", "h": "happiness", "n": "neutral", "sa": "sadness", "su": "surprise"}
_SAVEE_SPEAKERS = ("DC", "JE", "JK", "KL")
_SAVEE_RE = re.compile(r"(?:([A-Za-z]{2})_)?([A-Za-z]+)(\d{2})")


def parse_savee(path: Path) -> tuple[str, str]:
    """SAVEE `DC/a01.wav` or flattened `DC_a01.wav`; a two-letter code (sa, su) precedes the digits."""
    prefix, code, _ = _match(_SAVEE_RE, path, "<speaker>/<code><nn> or <speaker>_<code><nn>").groups()
    speaker = (prefix or path.parent.name).upper()
    label = _lookup(_SAVEE, code.lower())
    if speaker not in _SAVEE_SPEAKERS:
        raise ValueError(f"unknown speaker {speaker!r} (known: {', '.join(_SAVEE_SPEAKERS)})")
    return label, speaker


_CASIA = ("angry", "fear", "happy", "neutral", "sad", "surprise")


def parse_casia(path: Path) -> tuple[str, str]:
    """CASIA `<speaker>/<emotion>/<file>.wav`: emotion is the parent folder, speaker the grandparent."""
    if len(path.parts) < 3:
        raise ValueError(f"path {str(path)!r} does not match <speaker>/<emotion>/<file>")
    return _lookup({e: e for e in _CASIA}, path.parent.name.lower()), path.parent.parent.name


_RAVDESS = {
    "01": "neutral", "02": "calm", "03": "happy", "04": "sad",
    "05": "angry", "06": "fearful", "07": "disgust", "08": "surprised",
}
_RAVDESS_RE = re.compile(r"(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})")


def parse_ravdess(path: Path) -> tuple[str, str] | None:
    """RAVDESS `MM-VV-EE-II-SS-RR-AA.wav`; song files (vocal channel 02) are skipped."""
    _, channel, code, _, _, _, actor = _match(_RAVDESS_RE, path, "MM-VV-EE-II-SS-RR-AA").groups()
    if channel == "02":
        return None
    _lookup({"01": "speech"}, channel, "vocal channel")
    return _lookup(_RAVDESS, code), f"Actor_{actor}"


_TESS = {
    "angry": "angry", "disgust": "disgust", "fear": "fear", "happy": "happy",
    "neutral": "neutral", "ps": "pleasant_surprise", "sad": "sad",
}
_TESS_SPEAKERS = ("OAF", "YAF")
_TESS_RE = re.compile(r"([A-Za-z]+)_(.+)_([A-Za-z]+)")


def parse_tess(path: Path) -> tuple[str, str]:
    """TESS `OAF_back_angry.wav`: speaker (OAF/YAF), word, emotion; case-insensitive."""
    speaker, _, code = _match(_TESS_RE, path, "<speaker>_<word>_<emotion>").groups()
    label = _lookup(_TESS, code.lower())
    speaker = speaker.upper()
    if speaker not in _TESS_SPEAKERS:
        raise ValueError(f"unknown speaker {speaker!r} (known: {', '.join(_TESS_SPEAKERS)})")
    return label, speaker


_CREMAD = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happiness", "NEU": "neutral", "SAD": "sadness"}
_CREMAD_LEVELS = ("LO", "MD", "HI", "XX")
_CREMAD_RE = re.compile(r"(\d{4})_([A-Za-z]{3})_([A-Za-z]{3})_([A-Za-z]{2})")


def parse_cremad(path: Path) -> tuple[str, str]:
    """CREMA-D `1001_DFA_ANG_XX.wav`: actor, sentence, emotion, level."""
    actor, _, code, level = _match(_CREMAD_RE, path, "actor_sentence_emotion_level").groups()
    label = _lookup(_CREMAD, code.upper())
    _lookup({c: c for c in _CREMAD_LEVELS}, level.upper(), "level")
    return label, actor


_EMOVO = {"dis": "disgust", "gio": "joy", "neu": "neutral", "pau": "fear", "rab": "anger", "sor": "surprise", "tri": "sadness"}
_EMOVO_SPEAKERS = ("f1", "f2", "f3", "m1", "m2", "m3")
_EMOVO_RE = re.compile(r"([A-Za-z]{3})-([A-Za-z]\d)-([A-Za-z]+\d*)")


def parse_emovo(path: Path) -> tuple[str, str]:
    """EMOVO `dis-f1-b1.wav`: emotion, speaker, sentence."""
    code, speaker, _ = _match(_EMOVO_RE, path, "emotion-speaker-sentence").groups()
    label = _lookup(_EMOVO, code.lower())
    speaker = speaker.lower()
    if speaker not in _EMOVO_SPEAKERS:
        raise ValueError(f"unknown speaker {speaker!r} (known: {', '.join(_EMOVO_SPEAKERS)})")
    return label, speaker


_URDU = {"A": "anger", "H": "happiness", "N": "neutral", "S": "sadness"}
_URDU_FOLDERS = {"angry": "A", "happy": "H", "neutral": "N", "sad": "S"}
_URDU_RE = re.compile(r"(S[MF]\d+)_F(\d+)_([A-Za-z])(\d+)")


def parse_urdu(path: Path) -> tuple[str, str]:
    """URDU `Angry/SM1_F10_A010.wav`: speaker (S, gender M/F, number), file number, emotion letter A H N S and
    its number; the emotion folder, when it is one of the four, must agree with the letter."""
    speaker, _, code, _ = _match(_URDU_RE, path, "S<G><N>_F<NN>_<E><NNN>").groups()
    label = _lookup(_URDU, code.upper())
    folder = _URDU_FOLDERS.get(path.parent.name.lower())
    if folder is not None and folder != code.upper():
        raise ValueError(f"emotion letter {code!r} disagrees with its folder {path.parent.name!r}")
    return label, speaker.upper()


for _fmt in (
    CorpusFormat("emodb", tuple(_EMODB.values()), parse_emodb,
                 "EmoDB: SSTTTEV.wav = speaker(2 digits), text code (a01), emotion letter WLEAFTN, version"),
    CorpusFormat("savee", tuple(_SAVEE.values()), parse_savee,
                 "SAVEE: DC/a01.wav or DC_a01.wav = speaker DC/JE/JK/KL, code a d f h n sa su, 2 digits"),
    CorpusFormat("casia", _CASIA, parse_casia,
                 "CASIA: <speaker>/<emotion>/<file>.wav, emotion folder angry fear happy neutral sad surprise"),
    CorpusFormat("ravdess", tuple(_RAVDESS.values()), parse_ravdess,
                 "RAVDESS: MM-VV-EE-II-SS-RR-AA.wav = modality-channel(01 speech)-emotion-intensity-statement-rep-actor"),
    CorpusFormat("tess", tuple(_TESS.values()), parse_tess,
                 "TESS: OAF_back_angry.wav = speaker OAF/YAF _ word _ emotion (ps = pleasant surprise)"),
    CorpusFormat("cremad", tuple(_CREMAD.values()), parse_cremad,
                 "CREMA-D: 1001_DFA_ANG_XX.wav = actor_sentence_emotion(ANG DIS FEA HAP NEU SAD)_level"),
    CorpusFormat("emovo", tuple(_EMOVO.values()), parse_emovo,
                 "EMOVO: dis-f1-b1.wav = emotion(dis gio neu pau rab sor tri)-speaker(f1..m3)-sentence"),
    CorpusFormat("urdu", tuple(_URDU.values()), parse_urdu,
                 "URDU: <Emotion>/SM1_F10_A010.wav = speaker(S, M/F, number)_F<file>_<emotion A H N S><number>"),
):
    register_corpus(_fmt)
del _fmt
