"""Trial plots (matplotlib, Agg backend): confusion matrix, WA/UA per iteration, segment-posterior contour."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def confusion_plot(confusion: Sequence[Sequence[int]], label_names: Sequence[str], path: str | Path,
                   title: str = "") -> Path:
    plt = _plt()
    m = np.asarray(confusion, dtype=float)
    rows = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(label_names)), label_names, rotation=45, ha="right")
    ax.set_yticks(range(len(label_names)), label_names)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    fig.colorbar(im, ax=ax, fraction=0.046, label="recall share")
    return _save(fig, path)


def accuracy_plot(history: Sequence[Mapping], path: str | Path, title: str = "") -> Path:
    plt = _plt()
    its = [int(d["iteration"]) for d in history]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(its, [100 * d["wa"] for d in history], "o-", label="WA")
    ax.plot(its, [100 * d["ua"] for d in history], "s-", label="UA")
    ax.plot(its, [100 * float(np.mean(d["fold_ua"])) for d in history], "^--", label="mean fold UA")
    ax.set_xlabel("iteration")
    ax.set_ylabel("accuracy (%)")
    ax.set_xticks(its)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or "accuracy per iteration")
    return _save(fig, path)


def contour_plot(panels: Mapping[int, np.ndarray], label_names: Sequence[str], path: str | Path,
                 title: str = "", panel_title: str = "iteration {key}") -> Path:
    """Fig. 1 style: one panel per key (iteration); x = segment index, y = class, colour = posterior."""
    plt = _plt()
    keys = sorted(panels)
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 1.0 + 1.6 * len(keys)), sharex=True, squeeze=False)
    im = None
    for ax, key in zip(axes[:, 0], keys):
        p = np.asarray(panels[key], dtype=float)  # (segments, K)
        x = np.arange(p.shape[0])
        if p.shape[0] > 1:
            im = ax.contourf(x, np.arange(p.shape[1]), p.T, levels=np.linspace(0, 1, 11), cmap="viridis")
        else:
            im = ax.imshow(p.T, aspect="auto", vmin=0, vmax=1, cmap="viridis", origin="lower")
        ax.set_yticks(range(len(label_names)), label_names, fontsize=7)
        ax.set_title(panel_title.format(key=key), fontsize=9)
    axes[-1, 0].set_xlabel("segment index")
    if im is not None:
        fig.colorbar(im, ax=axes[:, 0].tolist(), label="posterior")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return path


def study_plot(studies: Sequence[Mapping], path: str | Path, metric: str = "ua", title: str = "") -> Path:
    """Mean and 95 % interval of `metric` per iteration, one line per replicate study (protocol)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, st in enumerate(studies):
        rows = [r for r in st["iterations"] if metric in r]
        its = np.array([int(r["iteration"]) for r in rows], dtype=float) + (i - (len(studies) - 1) / 2) * 0.06
        mean = np.array([100 * r[metric]["mean"] for r in rows])
        lo = np.array([100 * (r[metric]["low"] if r[metric]["low"] is not None else r[metric]["mean"]) for r in rows])
        hi = np.array([100 * (r[metric]["high"] if r[metric]["high"] is not None else r[metric]["mean"]) for r in rows])
        pr = st["protocol"]
        label = f"{pr['name']} ({'leak-free' if pr['leak_free'] else 'transductive'})"
        ax.errorbar(its, mean, yerr=[mean - lo, hi - mean], fmt="o-", capsize=4, label=label)
    ax.set_xlabel("iteration (0 = original labels)")
    ax.set_ylabel(f"{metric.upper()} (%), mean and 95 % interval")
    ax.set_xticks(sorted({int(r["iteration"]) for st in studies for r in st["iterations"]}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or f"{metric.upper()} per iteration over seeds")
    fig.text(0.01, 0.005, study_caption(studies), fontsize=6, ha="left", va="bottom", wrap=True)
    fig.subplots_adjust(bottom=0.22)
    return _save(fig, path)


def study_caption(studies: Sequence[Mapping]) -> str:
    """What a figure of studies rests on: data, folds, seeds, backbone and the machine(s)."""
    st = studies[0]
    cfg = st["config"]
    pr = ", ".join(f"{s['protocol']['name']} {s['protocol']['folds']} folds" for s in studies)
    seeds = sorted({int(x) for s in studies for x in s["seeds"]})
    machines = sorted({f"{e.get('cpu', '?')} ({e.get('fingerprint', '?')})" for s in studies
                       for e in s.get("environments", [])})
    return (f"data: {cfg['corpus']} {Path(cfg['data']).name} ({st['n_utterances']} utterances); {cfg['backbone']}, "
            f"{cfg['train']['epochs']} epochs, hop {cfg['segments']['hop']}; {pr}; seeds {seeds}; "
            f"machine: {'; '.join(machines)}")


def trials_plot(series: Sequence[tuple[str, str, Sequence[int], Sequence[float]]], path: str | Path,
                title: str = "") -> Path:
    """UA per iteration of every trial, one line each, coloured by label rule: `(name, rule, its, ua)`."""
    plt = _plt()
    rules = sorted({rule for _, rule, _, _ in series})
    colours = {r: plt.get_cmap("tab10")(i % 10) for i, r in enumerate(rules)}
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, rule, its, ua in series:
        ax.plot(list(its), [100 * v for v in ua], marker="o", ms=3, lw=1.2, alpha=0.8, color=colours[rule])
        if len(its):
            ax.annotate(name, (list(its)[-1], 100 * list(ua)[-1]), fontsize=6, alpha=0.7,
                        xytext=(3, 0), textcoords="offset points")
    for r in rules:
        ax.plot([], [], color=colours[r], label=r)
    ax.set_xlabel("iteration")
    ax.set_ylabel("UA %")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(title="rule", fontsize=8)
    ax.set_title(title or "UA per iteration, every trial")
    return _save(fig, path)


def importance_plot(importances: Mapping[str, float], path: str | Path, title: str = "") -> Path:
    """Horizontal bars of parameter importances (largest on top)."""
    plt = _plt()
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * max(len(items), 1)))
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:blue")
    ax.set_xlabel("importance (share of objective variance)")
    ax.set_title(title or "parameter importances")
    return _save(fig, path)
