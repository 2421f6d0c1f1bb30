"""`dsl-sweep validate`: every problem of a corpus (labels, paths, audio, class sizes) in one report."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dsl.data.audio import inspect_audio
from dsl.data.corpora import Corpus, CorpusError, load_corpus
from dsl.runtime.paths import WriteTarget, require_writable
from dsl.runtime.progress import progress


@dataclass
class ValidationReport:
    data: str
    corpus: str
    files: int = 0
    usable: int = 0
    problems: dict[str, str] = field(default_factory=dict)  # file -> why it cannot be used
    notes: dict[str, str] = field(default_factory=dict)  # file -> usable, but converted (stereo, ...)
    corpus_problems: list[str] = field(default_factory=list)  # e.g. a class smaller than the folds
    sample_rates: dict[int, int] = field(default_factory=dict)
    class_counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.corpus_problems

    def format(self, show: int = 3) -> str:
        """Summary, then problems and notes grouped by kind with a count and `show` example files each."""
        lines = [f"{self.data} ({self.corpus}): {self.files} file(s), {self.usable} usable, "
                 f"{len(self.problems)} with problems"]
        if self.sample_rates:
            lines.append("sample rates: " + ", ".join(f"{r} Hz x{n}" for r, n in sorted(self.sample_rates.items())))
        if self.class_counts:
            lines.append("classes: " + ", ".join(f"{k} {v}" for k, v in self.class_counts.items()))
        lines += _grouped("ERROR", self.problems, show)
        for msg in self.corpus_problems:
            lines.append(f"  ERROR {msg}")
        lines += _grouped("note ", self.notes, show)
        if any(len(v) > show for v in (_by_kind(self.problems), _by_kind(self.notes)) for v in v.values()):
            lines.append("  (every file is listed in the JSON report: --report FILE)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path


def _by_kind(items: dict[str, str]) -> dict[str, list[str]]:
    kinds: dict[str, list[str]] = {}
    for path, why in items.items():
        kinds.setdefault(why, []).append(path)
    return kinds


def _grouped(tag: str, items: dict[str, str], show: int) -> list[str]:
    """`  note  2 channels (averaged to mono): 588 file(s), e.g. a.wav, b.wav, c.wav`, most frequent first."""
    out = []
    for why, paths in sorted(_by_kind(items).items(), key=lambda kv: -len(kv[1])):
        if len(paths) == 1:
            out.append(f"  {tag} {paths[0]}: {why}")
        else:
            more = f", ... ({len(paths) - show} more)" if len(paths) > show else ""
            out.append(f"  {tag} {why}: {len(paths)} files, e.g. {', '.join(paths[:show])}{more}")
    return out


def parse_corpus_collecting(name: str, data: str | Path) -> tuple[Corpus | None, dict[str, str], list[str]]:
    """(corpus of parseable files, per-file problems, corpus-level problems) without raising."""
    try:
        return load_corpus(name, Path(data)), {}, []
    except CorpusError as exc:
        if exc.partial is not None:
            return exc.partial, exc.problems, []
        return None, {}, [str(exc)]


def validate_corpus(name: str, data: str | Path, folds: int = 0, min_seconds: float = 0.025,
                    show_progress: bool = True) -> ValidationReport:
    """Parse the corpus and decode every file; collect all problems instead of stopping at the first."""
    report = ValidationReport(str(data), name)
    corpus, problems, corpus_problems = parse_corpus_collecting(name, data)
    report.problems.update(problems)
    report.corpus_problems += corpus_problems
    if corpus is None:
        return report
    report.files = len(corpus) + len(problems)
    good: list[int] = []
    rates: Counter[int] = Counter()
    bar = progress(total=len(corpus), desc="validating audio", unit="file", disable=not show_progress)
    for i, path in enumerate(corpus.paths):
        check = inspect_audio(path, min_seconds)
        if check.problem:
            report.problems[str(path)] = check.problem
        else:
            good.append(i)
            rates[check.sample_rate] += 1
            if check.warning:
                report.notes[str(path)] = check.warning
        bar.update(1)
    bar.close()
    report.usable = len(good)
    report.sample_rates = dict(rates)
    if len(rates) > 1:
        report.notes[str(data)] = f"mixed sample rates {sorted(rates)}; all are resampled to 16000 Hz"
    counts = np.bincount(corpus.labels[good], minlength=corpus.n_classes) if good else np.zeros(corpus.n_classes, int)
    report.class_counts = {n: int(c) for n, c in zip(corpus.label_names, counts)}
    if folds:
        small = [f"{n} ({c})" for n, c in report.class_counts.items() if c < folds]
        if small:
            report.corpus_problems.append(f"class(es) with fewer usable utterances than the {folds} folds: "
                                          + ", ".join(small))
    return report


def validate_and_save(name: str, data: str | Path, folds: int = 0, report_path: str | Path | None = None,
                      show_progress: bool = True) -> ValidationReport:
    """`dsl-sweep validate`: `validate_corpus`, and its JSON report in `report_path` (checked before any file
    is decoded)."""
    if report_path:
        require_writable([WriteTarget.file(report_path, "--report")])
    report = validate_corpus(name, data, folds, show_progress=show_progress)
    if report_path:
        report.save(report_path)
    return report
