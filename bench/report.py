"""Markdown tables of a `bench.run` result, written between generated markers in bench/RESULTS.md."""
from __future__ import annotations

from pathlib import Path


def _f(x, digits: int = 1) -> str:
    try:
        return f"{float(x):,.{digits}f}"
    except (TypeError, ValueError):
        return str(x)


def render(results: dict) -> str:
    m = results["meta"]
    s = results["sections"]
    kind = "Quick run" if m.get("quick") else "Full run"
    if sorted(s) != sorted(("features", "throughput", "chain", "sweep")):
        kind += f" ({', '.join(s)} only)"
    lines = [f"### {kind} of {m['date']}", "",
             f"- command: `{m['command']}`", f"- device: {m['device']}",
             *([f"- CPU flags: {', '.join(m['cpu_flags']) or 'none of the SIMD flags read'}"] if "cpu_flags" in m else []),
             f"- python {m['python']}, torch {m['torch']} (default intra-op threads: {m['torch_default_threads']})",
             f"- load average (1/5/15 min) at start {m.get('load_average_start')}, at end {m.get('load_average_end')}; "
             f"{m['note']}", f"- total time: {_f(m.get('total_seconds', 0), 0)} s", ""]

    def skipped(name: str) -> bool:
        r = s.get(name)
        if r is None:
            return True
        for key in ("skipped", "error"):
            if key in r:
                lines.extend([f"**{name}**: {key}: {r[key]}", ""])
                return True
        return False

    if not skipped("features"):
        r = s["features"]
        e = r["equality"]
        med = r["seconds_median"]
        lines += ["#### 1. Log-Mel extraction", "",
                  f"{r['files']} EmoDB files (22.05 kHz, resampled to 16 kHz), median of {r['repeats']} alternating repeats.", "",
                  "| path | load s | features s | files/s (end to end) | files/s (features only) |",
                  "| --- | ---: | ---: | ---: | ---: |",
                  f"| plain: `librosa.load` + `librosa.feature.melspectrogram` per file | {_f(med['plain_load'], 2)} | "
                  f"{_f(med['plain_feat'], 2)} | {_f(r['plain_files_per_s'])} | {_f(r['plain_feature_only_files_per_s'])} |",
                  f"| project: `load_audio` + `logmel_batch` (32 files per call) | {_f(med['project_load'], 2)} | "
                  f"{_f(med['project_feat'], 2)} | {_f(r['project_files_per_s'])} | {_f(r['project_feature_only_files_per_s'])} |",
                  f"| **ratio** | | | **{_f(r['speedup_end_to_end'], 2)}x** | **{_f(r['speedup_feature_only'], 2)}x** |", "",
                  f"Equality (both feature paths on the same signals): max |Δ log-Mel| = {e['max_abs_logmel_above_floor']:.2e} "
                  f"on bins with power > {e['power_floor_relative_to_peak']:g} x the utterance peak "
                  f"({100 * e['share_of_bins_above_floor']:.1f} % of bins; tolerance {e['log_tolerance']:g}), "
                  f"{e['max_abs_logmel_all_bins']:.2e} over all bins; max |Δ power| / peak = "
                  f"{e['max_power_diff_relative_to_peak']:.2e} (tolerance {e['power_tolerance']:g}) -> "
                  f"{'within' if e['within_tolerance'] else 'OUTSIDE'} tolerance. `librosa.load` and `load_audio` "
                  f"give signals differing by at most {r['max_abs_signal_diff_librosa_load_vs_load_audio']:.1e}.", ""]

    if not skipped("throughput"):
        r = s["throughput"]
        lines += ["#### 2. Training throughput (segments/s, batch 128)", "",
                  f"{r['n_segments']} EmoDB segments (32 frames, hop 8); plain = materialised (N,1,64,32) tensor "
                  f"({_f(r['materialised_tensor_mib'])} MiB) + `DataLoader(shuffle=True)`, NCHW; project = `dsl.training.train.fit` "
                  "+ `SegmentBatcher`, channels_last. Best of the interleaved rounds.", "",
                  "| backbone | steps | plain, default threads | plain, 1 thread | project, 1 thread | project, 2 threads "
                  "| project 1t / plain | project 2t / plain | project 1t / plain 1t |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, b in r["backbones"].items():
            if "skipped" in b:
                lines.append(f"| {name} | skipped ({b['skipped']}) | | | | | | | |")
                continue
            lines.append(f"| {name} | {b['steps']} x {b['rounds']} | {_f(b['plain_default_threads'])} | {_f(b['plain_1_thread'])} | "
                         f"{_f(b['project_1_thread'])} | {_f(b['project_2_threads'])} | {_f(b['ratio_project_1t_vs_plain'], 2)}x | "
                         f"{_f(b['ratio_project_2t_vs_plain'], 2)}x | {_f(b['ratio_project_1t_vs_plain_1t'], 2)}x |")
        lines.append("")

    if not skipped("chain"):
        r = s["chain"]
        c, pc = r["config"], r["plain_config"]
        lines += ["#### 3. Whole `cpu` preset chain (baseline + 1 WDSL iteration)", "",
                  f"{c['backbone']}, {c['folds']} folds, segment hop {c['segment_hop']} ({r['n_segments']} segments), "
                  f"seeds {', '.join(str(x) for x in c['seeds'])}: the same folds, seeds, validation split, "
                  "normalisation, label rule and evaluation on both sides.", "",
                  f"- project (`cpu` preset): `LocalRunner`, {c['workers']} processes x {c['num_threads']} thread, "
                  f"channels_last, next-iteration folds started early; <= {c['epochs']} epochs (patience "
                  f"{c['patience']}), lr {c['lr']}, "
                  f"{'every training segment' if c['epoch_fraction'] >= 1 else format(c['epoch_fraction'], 'g') + ' of the training segments'}"
                  " in every epoch.",
                  f"- plain: `bench/plain_chain.py`, DataLoader over materialised NCHW tensors, folds in series, "
                  f"torch's default threads; <= {pc['epochs']} epochs (patience {pc['patience']}), lr {pc['lr']}, "
                  "every training segment in every epoch.", "",
                  "| seed | runner | wall s | UA it0 % | UA it1 % | WA it0 % | WA it1 % | mean epochs it0/it1 |",
                  "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for run in r["runs"]:
            for name in ("project", "plain"):
                it = run[name]
                ua = [_f(100 * x["ua"], 2) for x in it] + ["-"] * (2 - len(it))
                wa = [_f(100 * x["wa"], 2) for x in it] + ["-"] * (2 - len(it))
                lines.append(f"| {run['seed']} | {name} | {_f(run[name + '_seconds'])} | {ua[0]} | {ua[1]} | {wa[0]} | "
                             f"{wa[1]} | {' / '.join(_f(x['epochs']) for x in it)} |")
        for name in ("project", "plain"):
            ua = [_f(100 * x, 2) for x in r[f"{name}_mean_ua"]] + ["-"] * (2 - len(r[f"{name}_mean_ua"]))
            wa = [_f(100 * x, 2) for x in r[f"{name}_mean_wa"]] + ["-"] * (2 - len(r[f"{name}_mean_wa"]))
            lines.append(f"| mean | **{name}** | **{_f(r[name + '_seconds'])}** (total) | {ua[0]} | **{ua[1]}** | {wa[0]} | "
                         f"{wa[1]} | |")
        met = r["meets_3x"] and r["equal_or_better_ua"]
        lines += ["", f"Speed-up (total plain / total project): **{_f(r['speedup'], 2)}x**; mean UA difference "
                      f"project - plain: {', '.join(f'{100 * d:+.2f} pt' for d in r['ua_difference_project_minus_plain'])} "
                      f"(it0, it1). Requirement >= 3x at equal or better UA of the chain (its last iteration): "
                      f"**{'met' if met else 'NOT met'}**.", ""]
        if "profile" in r:
            for name, p in r["profile"].items():
                lines += [f"Profile of one fold, {name} ({_f(p['seconds'])} s, {_f(p['segments_per_second'])} seg/s): "
                          + "; ".join(f"`{t['function']}` {100 * t['share']:.0f} %" for t in p["top_tottime"][:6]), ""]

    if not skipped("sweep"):
        lines += render_sweep(s["sweep"])
    return "\n".join(lines)


def update_markdown(path: Path, results: dict) -> None:
    """Replace the generated block for this mode (full or quick) in `path`, keeping everything else."""
    mode = "quick" if results["meta"].get("quick") else "full"
    sections = sorted(results["sections"])
    if sections != sorted(("features", "throughput", "chain", "sweep")):  # a partial run keeps its own block
        mode += "-" + "-".join(sections)
    begin, end = f"<!-- bench:{mode}:begin -->", f"<!-- bench:{mode}:end -->"
    block = f"{begin}\n{render(results)}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks (issue #5)\n\n"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def render_sweep(r: dict) -> list[str]:
    """Section 4: per-trial overhead, feature memory, the quick sweep three ways."""
    lines = ["#### 4. Ray Tune sweeps: per-trial overhead, shared-feature memory, the quick sweep three ways", ""]
    o = r.get("overhead", {})
    if "error" in o:
        lines += [f"Per-trial overhead: error: {o['error']}", ""]
    elif o:
        t = o["tune"]
        lines += [f"Per-trial overhead: {t['k']} trials of the project trainable (`train_chain`, MLflow to SQLite, "
                  f"actors reused as in a sweep) one after another, chain {o['short_chain']}, under cProfile; the "
                  f"`cpu` chain ({o['cpu_chain']}) took **{_f(o['cpu_chain_seconds'])} s** directly in the same run "
                  f"(the short chain {_f(o['short_chain_direct_seconds'])} s directly).", "",
                  "| trial | process | wall s | chain s | overhead s | imports | MLflow open | MLflow other | plots | "
                  "tune.report | start -> call | return -> complete |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for x in t["trials"]:
            p = x["phases"]
            other = sum(v for k, v in p.items() if k.startswith("mlflow:") and not k.startswith("mlflow: open"))
            lines.append(f"| {x['i']} | {x['pid']} | {_f(x['wall_seconds'])} | {_f(p['chain (iterate_chain)'])} | "
                         f"**{_f(x['overhead_seconds'])}** | {_f(p['imports'])} | "
                         f"{_f(p['mlflow: open run (client, lookup, create)'])} | {_f(other)} | "
                         f"{_f(p['plots: matplotlib rendering'])} | {_f(p['tune.report (incl. checkpoint upload)'])} | "
                         f"{_f(x['driver_start_to_call'])} | {_f(x['return_to_driver_complete'])} |")
        reduced = " (--quick: a reduced chain stands in for it)" if o.get("cpu_chain_is_reduced") else ""
        lines += ["", f"Per-trial overhead as a share of the `cpu` chain{reduced}, goal <= 5 %:", "",
                  "| what | s | share |", "| --- | ---: | ---: |",
                  f"| a new trial process (first trial of a process) | {_f(o['first_trial_overhead_seconds'])} | "
                  f"{_f(100 * o['first_trial_overhead_share_of_cpu_chain'])} % |",
                  f"| a reused process (later trials; Tune `reuse_actors`) | {_f(o['steady_trial_overhead_seconds'])} | "
                  f"{_f(100 * o['steady_overhead_share_of_cpu_chain'])} % |",
                  f"| **per trial of the quick sweep (8 trials, 2 processes)** | "
                  f"**{_f(o['quick_sweep_per_trial_overhead_seconds'])}** | "
                  f"**{_f(100 * o['quick_sweep_per_trial_overhead_share_of_cpu_chain'])} %** |",
                  f"| per trial of these {t['k']} trials (Tuner.fit wall - chain time) | "
                  f"{_f(o['per_trial_overhead_seconds'])} | {_f(100 * o['per_trial_overhead_share_of_cpu_chain'])} % |",
                  "", f"Goal (quick-sweep row): {'met' if o['meets_5_percent'] else 'NOT met'}. Chain time in the trial / "
                  f"directly: {_f(o['short_chain_in_trial_vs_direct'], 2)}x, both under cProfile: "
                  f"{_f(o.get('short_chain_in_trial_vs_direct_profiled', '-'), 2)}x. Once per sweep, not per "
                  f"trial: Tuner.fit to the first trial start {_f(t['fit_to_first_start'])} s, last completion to return "
                  f"{_f(t['last_complete_to_fit_end'])} s. The columns overlap (imports happen inside MLflow open, the "
                  "chain and the first plot); imports inside the chain count as chain.", ""]
    mem = r.get("memory")
    if mem:
        one, four = mem["one"], mem["four"]
        lines += [f"Feature memory (frames {one['frames_mib']} MiB, shared via {one['shared_by']}; read-only "
                  f"object-store view in every trial: {one['frames_read_only_view'] and four['frames_read_only_view']}):", "",
                  "| concurrent trials | private (USS) growth per trial on touching all frames, MiB | "
                  "same for a private copy (control), MiB | feature memory = store + private, MiB | "
                  "if each trial copied, MiB | peak summed USS / PSS / RSS of Ray workers, MiB |",
                  "| ---: | --- | --- | ---: | ---: | --- |"]
        for x in (one, four):
            lines.append(f"| {x['trials']} | {x['per_trial_touch_delta_uss_mib']} | {x['per_trial_copy_control_delta_uss_mib']} | "
                         f"{x['feature_memory_mib']} | {x['feature_memory_if_copied_mib']} | "
                         f"{x['peak_sum_uss_workers_mib']} / {x['peak_sum_pss_workers_mib']} / {x['peak_sum_rss_workers_mib']} |")
        lines += ["", f"Feature memory, 4 vs 1 concurrent trials: **{_f(mem['feature_memory_ratio_4_vs_1'], 3)}x** "
                      f"(requirement < 1.5x: {'met' if mem['requirement_below_1_5x'] else 'NOT met'}; a copy per trial "
                      f"would give {_f(mem['feature_memory_ratio_4_vs_1_if_copied'], 2)}x).", ""]
    tw = r.get("three_ways")
    if tw:
        lines += [f"The quick example sweep (`{tw['sweep_file']}`"
                  + (f", reduced for --quick: {tw['quick_recipe']}" if tw.get("quick_recipe") else "")
                  + "), each variant with its own Ray, storage and (empty) step cache:", ""]
        if tw.get("note"):
            lines += [f"Note: {tw['note']}.", ""]
        lines += ["| trials | step cache s | no cache s | plain Tune + Optuna s | no cache / cache | plain / cache | "
                  "iterations (and fold trainings) from the cache | WA/UA identical with and without the cache |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for n, row in tw["by_trials"].items():
            def wall(k: str, row: dict = row) -> str:
                v = row.get(k) or {}
                return "error" if "error" in v else _f(v.get("wall_seconds", "-"))
            eq = row.get("identical")
            check = (f"{'PASS' if eq['identical'] else 'FAIL'}: {eq['values_compared']} values, "
                     f"{eq['configs_in_both']} configurations, max diff {eq['max_abs_difference']:.3g}") if eq else "-"
            cache = row.get("cache") or {}
            served = f"{cache['iterations_from_cache']} of {cache['iterations_trained']}" if "iterations_trained" in cache else "-"
            if "folds_from_cache" in cache:
                served += f" ({cache['folds_from_cache']} fold trainings)"
            def ratio(k: str, row: dict = row) -> str:
                return f"{_f(row[k], 2)}x" if k in row else "-"
            lines.append(f"| {n} | {wall('cache')} | {wall('nocache')} | {wall('plain')} | "
                         f"**{ratio('nocache_over_cache')}** | {ratio('plain_over_cache')} | {served} | {check} |")
        measured = {n: row["nocache_over_cache"] for n, row in tw["by_trials"].items() if "nocache_over_cache" in row}
        if measured:
            per_count = ", ".join(f"{n} trials {'met' if r >= 2 else 'NOT met'} ({_f(r, 2)}x)" for n, r in measured.items())
            lines += ["", f"Goal >= 2x cache vs no cache: {per_count}"
                      + (f"; ratio grows with the number of trials: {'yes' if tw['ratio_grows_with_trials'] else 'no'}"
                         if "ratio_grows_with_trials" in tw else "") + "."]
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.report RESULTS.json [--md bench/RESULTS.md]`: rewrite a run's block from its results file."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m bench.report", description=main.__doc__)
    p.add_argument("results", help="a results file written by `python -m bench.run`")
    p.add_argument("--md", default=str(Path(__file__).with_name("RESULTS.md")), help="markdown file to update")
    args = p.parse_args(argv)
    try:
        results = json.loads(Path(args.results).read_text())
    except (OSError, ValueError) as exc:
        p.error(f"{args.results}: not a readable bench results file ({exc})")
    update_markdown(Path(args.md), results)
    print(f"updated {args.md} from {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
