"""The selection benchmark: which way of picking a configuration finds the truly best one, at what cost in chains?

Two parts, both `python -m bench.selection`:

- `collect` trains a fixed grid of DSL configurations on EmoDB under one leak-free protocol (`refinery`) with a quick
  recipe, seed after seed, and writes one small JSON per (rule, seed) the moment it is done
  (`bench/selection/<rule>/seed<N>.json`: per iteration WA/UA, nothing per utterance), so the table can be built up
  over several runs; a finished (rule, seed) is never run again. Each rule runs one chain of `T_MAX` iterations; the
  configuration (rule, T) is that chain's UA at iteration T (a chain's first T iterations do not depend on how many
  follow: constant alpha schedules only), and iteration 0 is the same network for every rule (the step cache trains it
  once per seed).
- `compare` (the default) reads the table and, offline and in seconds, resamples the order of the seeds many times
  and plays each selection strategy on it: the first seed is the sweep (every configuration on one seed, what a plain
  Ray Tune + Optuna sweep reports), later seeds are the fresh seeds of a re-evaluation or a race, and the last
  `--truth-seeds` seeds of each order are the truth, the same for every strategy and seen by none: each
  configuration's mean over them. It prints, per strategy, the chains it trained after the sweep, the probability of
  picking a configuration within 1 UA point of the true best, and the mean regret (true best minus the pick's truth),
  and plots regret against chains (`--plot`).

Strategies: `argmax` (the single-seed winner), `top3x5` (`dsl-sweep best` before racing: the sweep's top 3 on 5 fresh
seeds each, highest mean wins), and races (`dsl.results.racing`) over the sweep's top k under a budget of chains, with
either tie-break for a race that ends with several survivors (the cheapest, what `dsl-sweep best` does, or the
highest mean).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import REPO, cache_dir, emodb_root

OUT = REPO / "bench" / "selection"
T_MAX = 2
# The grid: label rules (constant schedules, so (rule, T) is a prefix of the T_MAX chain). `baseline` retrains on the
# original labels: its T >= 1 configurations are truly equal to iteration 0 (the null the race must not split).
# 13 configurations: baseline T=0..2 and five DSL rules at T=1, 2.
RULES: dict[str, dict] = {
    "baseline": {"labels.rule": "baseline"},
    "bdsl": {"labels.rule": "bdsl"},
    "wdsl_a0.2": {"labels.rule": "wdsl", "labels.alpha": 0.2},
    "wdsl_a0.8": {"labels.rule": "wdsl", "labels.alpha": 0.8},
    "gsl": {"labels.rule": "gsl"},
    "hdl": {"labels.rule": "hdl"},
}
# The quick recipe: the quick example sweep's base (cpu preset, 160 ms segment hop, 3 folds, 3 epochs) under refinery.
# protocol.outer: the committed table was collected before the label-free balanced partition became the default;
# pinning the label-stratified one keeps later seeds on the same outer folds as the first eight.
RECIPE = {"segments.hop": 16, "protocol.name": "refinery", "protocol.folds": 3, "protocol.eval_folds": 5,
          "protocol.outer": "stratified", "train.epochs": 3, "train.patience": 2}
RESULT_FORMAT = 1
RECIPE_TEXT = ("quick recipe: `cpu` preset, 3 outer folds (stratified by label), 160 ms segment hop, 3 epochs (patience 2), iteration picked "
               "over 5 eval folds; grid: baseline T=0..2 and bdsl, wdsl a=0.2, wdsl a=0.8, gsl, hdl at T=1, 2")


def log(*args) -> None:
    print(*args, flush=True)


# -- collect ------------------------------------------------------------------------------------------------------
def config_for(rule: str, seed: int, data: str):
    from dsl.config import load_config

    return load_config(preset_name="cpu", overrides={"data": data, "cache_dir": cache_dir(), "iterations": T_MAX,
                                                      "seed": seed, **RECIPE, **RULES[rule]})


def seed_file(rule: str, seed: int, out: Path = OUT) -> Path:
    return out / rule / f"seed{seed}.json"


def compact(result, rule: str) -> dict:
    """What the benchmark needs of a chain result: per iteration WA/UA (final and validation-selected)."""
    from dsl.results.study import comparable_config

    d = result.to_dict()
    keep = ("iteration", "alpha", "wa", "ua", "selected_wa", "selected_ua", "selected_iterations", "val_ua", "seconds",
            "cached_folds")
    return {"format": RESULT_FORMAT, "kind": "selection-bench", "rule": rule, "seed": result.config.seed,
            "protocol": d["protocol"], "environment": d["environment"], "config": comparable_config(d["config"]),
            "n_utterances": d["n_utterances"], "seconds": d["seconds"],
            "iterations": [{k: it.get(k) for k in keep} for it in d["iterations"]]}


def collect(seeds: Sequence[int], data: str, out: Path, step_cache: str, rules: Sequence[str]) -> None:
    from dsl.execution.step_cache import StepCache
    from dsl.pipeline.chain import run_chain
    from dsl.results.study import comparable_config, write_json
    from dsl.runtime.environment import describe_machine, machine_info
    from dsl.studies.run import load_checked

    log(f"selection benchmark: {len(rules)} rules x T=0..{T_MAX}, seeds {list(seeds)} | {describe_machine(machine_info())}")
    cache = StepCache(step_cache)
    data_bundle = None
    for seed in seeds:
        for rule in rules:
            path = seed_file(rule, seed, out)
            cfg = config_for(rule, seed, data)
            if path.is_file():
                done = json.loads(path.read_text())
                longer = {**done.get("config", {}), "iterations": cfg.iterations}  # a longer chain holds this one
                holds_it = comparable_config(longer) == comparable_config(cfg.to_dict())
                if done.get("config", {}).get("iterations", -1) >= cfg.iterations and holds_it:
                    continue
                log(f"{path}: holds another config; running it again")
            if data_bundle is None:
                data_bundle = load_checked(cfg, show_progress=False)
            start = time.perf_counter()
            result = run_chain(cfg, data_bundle, show_progress=False, step_cache=cache)
            write_json(compact(result, rule), path)
            uas = " ".join(f"{100 * it.ua:.1f}" for it in result.iterations)
            log(f"seed {seed:2d} {rule:16s} UA by iteration {uas} | {time.perf_counter() - start:.0f} s -> {path}")


# -- the table ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Table:
    """UA (percent) of every configuration on every seed that all rules have finished."""

    configs: list[tuple[str, int]]  # (rule, T); ("baseline", 0) is iteration 0
    seeds: list[int]
    ua: np.ndarray  # (configs, seeds)
    machines: list[str]

    def name(self, i: int) -> str:
        rule, t = self.configs[i]
        return f"{rule} T={t}"


def load_table(out: Path = OUT) -> Table:
    from dsl.runtime.environment import describe_machine

    files = {rule: {int(p.stem[4:]): p for p in (out / rule).glob("seed*.json")} for rule in RULES}
    seeds = sorted(set.intersection(*(set(f) for f in files.values()))) if files else []
    if len(seeds) < 2:
        raise SystemExit(f"{out}: fewer than 2 seeds finished for every rule; run `python -m bench.selection collect`")
    configs: list[tuple[str, int]] = [("baseline", 0)] + [(r, t) for r in RULES for t in range(1, T_MAX + 1)]
    ua = np.zeros((len(configs), len(seeds)))
    machines = set()
    for j, s in enumerate(seeds):
        for rule in RULES:
            d = json.loads(files[rule][s].read_text())
            machines.add(describe_machine(d["environment"]))
            its = {it["iteration"]: it for it in d["iterations"]}
            for t in range(0 if rule == "baseline" else 1, T_MAX + 1):
                ua[configs.index((rule, t)), j] = 100.0 * its[t]["ua"]
    return Table(configs, seeds, ua, sorted(machines))


# -- strategies ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Strategy:
    name: str
    # (table, seed order without the truth seeds) -> (pick, chains after the sweep)
    pick: Callable[[Table, np.ndarray], tuple[int, int]]


def _sweep(table: Table, order: np.ndarray) -> np.ndarray:
    return table.ua[:, order[0]]


def argmax() -> Strategy:
    def pick(table, order):
        return int(np.argmax(_sweep(table, order))), 0
    return Strategy("argmax (one seed, plain sweep)", pick)


def top_k_n(k: int, n: int) -> Strategy:
    def pick(table, order):
        if len(order) < 1 + n:
            raise SystemExit(f"top{k}x{n} needs {1 + n} seeds besides the truth; collect more seeds")
        top = np.argsort(-_sweep(table, order), kind="stable")[:k]
        means = table.ua[np.ix_(top, order[1:1 + n])].mean(axis=1)
        return int(top[int(np.argmax(means))]), k * n
    return Strategy(f"top{k}x{n} (fixed re-evaluation)", pick)


def race(k: int, budget: int, min_seeds: int = 3, correction: str = "race", tie_break: str = "cheapest") -> Strategy:
    from dsl.results.racing import Candidate, Race, RaceSettings

    def pick(table, order):
        top = [int(i) for i in np.argsort(-_sweep(table, order), kind="stable")[:k]]
        cands = [Candidate(str(i), table.name(i), table.configs[i][1], 1) for i in top]
        settings = RaceSettings(min_seeds=min_seeds, budget=budget, correction=correction, tie_break=tie_break)
        verdict = Race(cands, [int(s) for s in order[1:]], settings).run(lambda key, s: float(table.ua[int(key), s]))
        return int(verdict.winner), verdict.chains
    words = [f"race top{k}, budget {budget}", f"min {min_seeds} seeds"]
    words += [] if correction == "race" else ["per-look alpha"]
    words += ["ties: cheapest" if tie_break == "cheapest" else "ties: best mean"]
    return Strategy(", ".join(words), pick)


STRATEGIES: list[Callable[[], Strategy]] = [
    argmax, lambda: top_k_n(3, 5),
    lambda: race(3, 15), lambda: race(3, 15, tie_break="mean"),
    lambda: race(3, 8), lambda: race(3, 8, tie_break="mean"),
    lambda: race(5, 8, tie_break="mean"),
    lambda: race(3, 7, correction="look", tie_break="mean"),
    lambda: race(3, 6, min_seeds=2, correction="look", tie_break="mean"),
]


def evaluate(table: Table, strategy: Strategy, resamples: int, truth_seeds: int, rng: np.random.Generator) -> dict:
    """Play `strategy` on `resamples` random seed orders; truth = each configuration's mean over the order's last
    `truth_seeds` seeds, which no strategy sees."""
    regrets, within, chains = [], [], []
    for _ in range(resamples):
        order = rng.permutation(len(table.seeds))
        usable, truth_cols = order[:-truth_seeds], order[-truth_seeds:]
        chosen, used = strategy.pick(table, usable)
        truth = table.ua[:, truth_cols].mean(axis=1)
        regret = float(truth.max() - truth[chosen])
        regrets.append(regret)
        within.append(regret <= 1.0)
        chains.append(used)
    return {"strategy": strategy.name, "chains": float(np.mean(chains)), "p_within_1": float(np.mean(within)),
            "regret": float(np.mean(regrets)), "regret_p90": float(np.quantile(regrets, 0.9))}


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, r in enumerate(rows):
        marker = "s" if r["strategy"].startswith(("argmax", "top")) else "o"
        ax.scatter(r["chains"], r["regret"], marker=marker, s=40)
        ax.annotate(str(i + 1), (r["chains"], r["regret"]), textcoords="offset points", xytext=(5, 3), fontsize=8)
    ax.set_xlabel("chains trained after the sweep (mean)")
    ax.set_ylabel("mean regret (UA points, lower is better)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    legend = "\n".join(f"{i + 1}: {r['strategy']}" for i, r in enumerate(rows))
    fig.text(0.99, 0.5, legend, fontsize=6.5, va="center", ha="left")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def compare(out: Path, resamples: int, seed: int, truth_seeds: int, json_out: Path | None,
            plot_out: Path | None = None) -> list[dict]:
    table = load_table(out)
    if len(table.seeds) <= truth_seeds + 1:
        raise SystemExit(f"{out}: {len(table.seeds)} seeds; need more than {truth_seeds + 1} ({truth_seeds} for the truth)")
    rng = np.random.default_rng(seed)
    means = table.ua.mean(axis=1)
    log(f"selection benchmark: {len(table.configs)} configurations x {len(table.seeds)} seeds "
        f"(seeds {table.seeds[0]}-{table.seeds[-1]}) | EmoDB, refinery (3 outer folds, leak-free), quick recipe | "
        f"{'; '.join(table.machines)}")
    best = np.argsort(-means)[:5]
    log("configurations by mean UA over all seeds (sd over seeds): " + ", ".join(
        f"{table.name(i)} {means[i]:.1f} ({table.ua[i].std(ddof=1):.1f})" for i in best) + ", ...")
    log(f"{resamples} resamplings of the seed order; the first seed is the sweep, the last {truth_seeds} are the truth "
        "(seen by no strategy); chains = trained after the sweep's one chain per configuration")
    rows = []
    log(f"{'strategy':66s} {'chains':>7s} {'P(within 1 pt)':>15s} {'mean regret':>12s} {'regret p90':>11s}")
    for make in STRATEGIES:
        strategy = make()
        row = evaluate(table, strategy, resamples, truth_seeds, np.random.default_rng(rng.integers(2**32)))
        rows.append(row)
        log(f"{row['strategy']:66s} {row['chains']:7.1f} {row['p_within_1']:15.2f} {row['regret']:12.2f} "
            f"{row['regret_p90']:11.2f}")
    ref = next(r for r in rows if r["strategy"].startswith("top3x5"))
    ok = [r for r in rows if r["strategy"].startswith("race") and r["regret"] <= ref["regret"] + 1e-9
          and r["chains"] <= ref["chains"] / 2]
    goal = "met by " + "; ".join(r["strategy"] for r in ok) if ok else "NOT met"
    log(f"goal (a race reaches top3x5's mean regret {ref['regret']:.2f} with at most half its {ref['chains']:.0f} "
        f"chains): {goal}")
    if json_out is not None:
        from dsl.results.selection_report import BENCHMARK_FORMAT, BENCHMARK_KIND

        command = f"python -m bench.selection compare --resamples {resamples} --seed {seed} --truth-seeds {truth_seeds}"
        json_out.write_text(json.dumps({"format": BENCHMARK_FORMAT, "kind": BENCHMARK_KIND, "command": command,
                                        "data": "EmoDB (../shared/data/emodb, 535 utterances)",
                                        "protocol": "refinery", "recipe": RECIPE_TEXT,
                                        "seeds": table.seeds, "machines": table.machines,
                                        "resamples": resamples, "truth_seeds": truth_seeds, "rows": rows,
                                        "goal": goal, "configs": [table.name(i) for i in range(len(table.configs))],
                                        "mean_ua": means.tolist()}, indent=1) + "\n")
    if plot_out is not None:
        plot(rows, plot_out, f"Selection strategies on EmoDB ({len(table.configs)} configs x {len(table.seeds)} seeds, "
                             f"refinery, quick recipe; truth: {truth_seeds} unseen seeds, {resamples} resamplings)")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.selection", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command")
    c = sub.add_parser("collect", help="train the grid seed by seed (resumable)")
    c.add_argument("--seeds", default="0-7", help="e.g. 0-15 (default 0-7)")
    c.add_argument("--data", default="", help="EmoDB folder (default ../shared/data/emodb or $DSL_EMODB)")
    c.add_argument("--rules", default=",".join(RULES))
    c.add_argument("--step-cache", default=str(REPO / ".dsl_cache" / "selection-steps"))
    c.add_argument("--out", default=str(OUT))
    p = sub.add_parser("compare", help="compare the strategies on the collected table (default)")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truth-seeds", type=int, default=2, help="seeds of each order kept as the truth (default 2)")
    p.add_argument("--json", default="", help="also write the rows to this JSON file")
    p.add_argument("--plot", default="", help="also plot regret against chains to this PNG")
    args = ap.parse_args(argv)
    if args.command == "collect":
        from dsl.config import parse_seeds

        root = args.data or (str(emodb_root()) if emodb_root() else "")
        if not root:
            print("error: EmoDB not found (../shared/data/emodb or $DSL_EMODB); pass --data", file=sys.stderr)
            return 2
        collect(parse_seeds(args.seeds), root, Path(args.out), args.step_cache, args.rules.split(","))
        return 0
    out = Path(getattr(args, "out", str(OUT)))
    compare(out, getattr(args, "resamples", 2000), getattr(args, "seed", 0), getattr(args, "truth_seeds", 2),
            Path(args.json) if getattr(args, "json", "") else None,
            Path(args.plot) if getattr(args, "plot", "") else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
