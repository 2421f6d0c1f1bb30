"""`python -m bench.precision [--backbones small_cnn,efficientnet_b0] [--steps 30] [--study BF16.json --against FP32.json]`

bf16 autocast against fp32 on this CPU (issue 11): training segments/s of one step of the project's
loop at batch 128 (one thread, channels_last, synthetic 1x32x64 segments; the rounds alternate fp32 and
bf16 so that load drift hits both), and, given two replicate studies that differ only in
`train.precision`, their UA per iteration on the seeds they share (paired). Prints the CPU model and
flags and whether the CPU has native bf16 (what `train.precision: auto` looks at); writes
`bench/results-precision.json`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from .common import REPO, device_description, load_average, median, torch_threads

OUT = REPO / "bench" / "results-precision.json"


def step_rate(backbone: str, precision: str, steps: int, batch: int = 128, n_classes: int = 7) -> float:
    """Training segments/s of `steps` Adam steps (after 3 warm-up steps) under `precision`."""
    import torch

    from dsl.training.backbones import create_backbone
    from dsl.training.train import soft_cross_entropy

    torch.manual_seed(0)
    model = create_backbone(backbone, n_classes).to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, 32, 64).to(memory_format=torch.channels_last)
    y = torch.softmax(torch.randn(batch, n_classes), dim=1)

    def one() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = soft_cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        one()
    start = time.perf_counter()
    for _ in range(steps):
        one()
    return steps * batch / (time.perf_counter() - start)


def throughput(backbones: list[str], steps: int, rounds: int) -> dict:
    out = {}
    with torch_threads(1):
        for b in backbones:
            rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
            for r in range(rounds):
                for p in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
                    rates[p].append(step_rate(b, p, steps))
            fp32, bf16 = median(rates["fp32"]), median(rates["bf16"])
            out[b] = {"fp32_seg_per_s": fp32, "bf16_seg_per_s": bf16, "bf16_over_fp32": bf16 / fp32,
                      "rounds": rates}
            print(f"  {b}: fp32 {fp32:,.0f} seg/s, bf16 autocast {bf16:,.0f} seg/s: {bf16 / fp32:.2f}x "
                  f"(median of {rounds} alternating rounds of {steps} steps, 1 thread)", flush=True)
    return out


def _seed_uas(study: Path) -> dict[int, list[float]]:
    """Seed -> UA per iteration, from a replicate study's per-seed files."""
    d = json.loads(study.read_text())
    out = {}
    for f in d["seed_files"]:
        p = Path(f) if Path(f).is_absolute() else study.parent / f
        if not p.is_file():
            p = study.with_suffix(".seeds") / Path(f).name
        r = json.loads(p.read_text())
        out[int(r["protocol"]["seed"])] = [it["ua"] for it in r["iterations"]]
    return out


def paired_ua(bf16_study: Path, fp32_study: Path) -> dict:
    from dsl.results.stats import mean_interval

    bf16, fp32 = _seed_uas(bf16_study), _seed_uas(fp32_study)
    seeds = sorted(set(bf16) & set(fp32))
    if not seeds:
        raise SystemExit(f"{bf16_study} and {fp32_study} share no seed")
    n_it = min(len(bf16[s]) for s in seeds)
    rows = []
    for it in range(n_it):
        a = [100 * bf16[s][it] for s in seeds]
        b = [100 * fp32[s][it] for s in seeds]
        diff = mean_interval([x - y for x, y in zip(a, b)])
        rows.append({"iteration": it, "bf16_ua": a, "fp32_ua": b, "bf16_mean": float(np.mean(a)),
                     "fp32_mean": float(np.mean(b)), "paired_difference": dataclasses.asdict(diff)})
        interval = f" [{diff.low:+.1f}, {diff.high:+.1f}]" if diff.low is not None else ""
        print(f"  iteration {it}: UA bf16 {np.mean(a):.1f} vs fp32 {np.mean(b):.1f} % over seeds {seeds}; paired "
              f"difference {diff.mean:+.1f}{interval}", flush=True)
    return {"seeds": seeds, "bf16_study": str(bf16_study), "fp32_study": str(fp32_study), "iterations": rows}


def main(argv: list[str] | None = None) -> int:
    from dsl.runtime.environment import machine_info
    from dsl.training.train import native_bf16, resolve_precision

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbones", default="small_cnn,efficientnet_b0")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--study", type=Path, help="replicate study run with train.precision=bf16")
    ap.add_argument("--against", type=Path, help="the same study in fp32")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    backbones = [b for b in args.backbones.split(",") if b]  # --backbones '': the UA comparison only
    info = machine_info()
    print(f"device: {device_description()} | CPU flags: {', '.join(info['cpu_flags'])} | native bf16: "
          f"{native_bf16()} | load average {load_average()}", flush=True)
    res: dict = {"device": device_description(), "environment": info, "native_bf16": native_bf16(),
                 "auto_resolves_to": {b: resolve_precision("auto", b) for b in backbones},
                 "load_average_before": load_average()}
    if backbones:
        res["throughput"] = throughput(backbones, args.steps, args.rounds)
    if args.study and args.against:
        res["ua"] = paired_ua(args.study, args.against)
    res["load_average_after"] = load_average()
    args.out.write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
