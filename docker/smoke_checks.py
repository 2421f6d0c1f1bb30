"""What docker/smoke.sh checks after a sweep across real containers, the way a user would look.

It runs inside the Ray head container of docker/compose.netns.yaml (it needs the image's mlflow and ray)
and only ever addresses 127.0.0.1: the MLflow server through MLFLOW_TRACKING_URI, the Ray dashboard at
127.0.0.1:8265. Each subcommand prints what it found and exits 1 with one line per problem.

    python docker/smoke_checks.py nodes --workers 2              # wait for the head and 2 alive workers
    python docker/smoke_checks.py sweep docker_smoke --trials 4 --spread
    python docker/smoke_checks.py wait-step docker_smoke_fault --node ray-worker-2
    python docker/smoke_checks.py sweep docker_smoke_fault --trials 2 --killed-trial ID --killed-node NODE_ID
    python docker/smoke_checks.py model docker_smoke
"""
from __future__ import annotations

import argparse
import sys
import time

DASHBOARD = "http://127.0.0.1:8265"
TRIAL_ARTIFACTS = {"config.yaml", "result.json", "plots"}
PLOTS = {"plots/confusion_matrix.png", "plots/accuracy_per_iteration.png", "plots/segment_posteriors.png"}
STEP_KEY = "mean_fold_ua"


def ray_nodes() -> list:
    from ray.util.state import list_nodes

    return list_nodes(address=DASHBOARD, detail=True)


def node_names() -> dict[str, str]:
    """Ray node id -> node name (the compose service: --node-name), dead nodes included."""
    return {n.node_id: n.node_name for n in ray_nodes()}


def trial_runs(client, sweep: str) -> list:
    exp = client.get_experiment_by_name(sweep)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], max_results=500)
    return [r for r in runs if r.data.tags.get("dsl.role") == "trial"]


def cmd_nodes(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            nodes = ray_nodes()
        except Exception as exc:  # the dashboard is not up yet
            nodes, why = [], f"{type(exc).__name__}: {exc}"
        else:
            why = ""
        alive = [n for n in nodes if n.state == "ALIVE"]
        workers = [n for n in alive if not n.is_head_node]
        if any(n.is_head_node for n in alive) and len(workers) >= args.workers:
            for n in sorted(alive, key=lambda n: (not n.is_head_node, n.node_name)):
                cpus = n.resources_total.get("CPU", 0)
                print(f"  {'head  ' if n.is_head_node else 'worker'} {n.node_name:<14} {n.node_id[:12]}  CPU {cpus:g}")
            return 0
        if time.monotonic() > deadline:
            print(f"error: {len(workers)} of {args.workers} Ray workers alive after {args.timeout:.0f} s {why}")
            return 1
        time.sleep(2)


def cmd_wait_step(args: argparse.Namespace) -> int:
    """Wait until a running trial on node `--node` has logged an iteration (it has a checkpoint then)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        names = node_names()
        for r in trial_runs(client, args.sweep):
            if r.info.status != "RUNNING" or names.get(r.data.tags.get("dsl.node_id", "")) != args.node:
                continue
            steps = client.get_metric_history(r.info.run_id, STEP_KEY)
            if steps:
                # smoke.sh reads the trial id (2nd word) and the node id (last word)
                print(f"trial {r.data.tags.get('ray_trial_id')} on {args.node} logged iteration "
                      f"{max(int(m.step) for m in steps)}, run {r.info.run_id}, node {r.data.tags['dsl.node_id']}")
                return 0
        time.sleep(1)
    print(f"error: no trial of {args.sweep} on {args.node} logged an iteration within {args.timeout:.0f} s")
    return 1


def cmd_sweep(args: argparse.Namespace) -> int:
    """Every trial one FINISHED run with its artifacts and every iteration once; where the trials ran."""
    from mlflow import MlflowClient

    client = MlflowClient()
    names = node_names()
    runs = trial_runs(client, args.sweep)
    problems: list[str] = []
    if len(runs) != args.trials:
        problems.append(f"{len(runs)} trial runs in MLflow, expected {args.trials}")
    trial_ids = [r.data.tags.get("ray_trial_id") for r in runs]
    if len(set(trial_ids)) != len(trial_ids):
        problems.append(f"a Ray trial has more than one run: {sorted(trial_ids)}")
    print(f"{'trial':<12} {'status':<9} {'node':<13} {'attempts':>8} {'steps':<10} {'UA %':>6}  artifacts")
    nodes_used: set[str] = set()
    for r in sorted(runs, key=lambda r: r.data.tags.get("ray_trial_id", "")):
        tid, rid = r.data.tags.get("ray_trial_id", "?"), r.info.run_id
        node = names.get(r.data.tags.get("dsl.node_id", ""), "?")
        nodes_used.add(node)
        attempts = int(r.data.tags.get("dsl.attempts", "0"))
        if tid == args.killed_trial:
            if attempts < 2:
                problems.append(f"trial {tid}: dsl.attempts {attempts} after its node was killed (no retry?)")
            if r.data.tags.get("dsl.node_id") == args.killed_node:
                problems.append(f"trial {tid}: its last attempt ran on the killed node {args.killed_node[:12]}")
            print(f"killed trial {tid}: {attempts} attempts, resumed from iteration "
                  f"{r.data.tags.get('dsl.resumed_from', '?')}, now on {node}")
        steps = sorted(int(m.step) for m in client.get_metric_history(rid, STEP_KEY))
        iterations = int(r.data.params.get("iterations", "-1"))
        top = {a.path for a in client.list_artifacts(rid)}
        plots = {a.path for a in client.list_artifacts(rid, "plots")}
        ua = r.data.metrics.get("ua")
        print(f"{tid:<12} {r.info.status:<9} {node:<13} {attempts:>8} {','.join(map(str, steps)):<10} "
              f"{100 * ua if ua is not None else float('nan'):>6.2f}  {len(top | plots)} files")
        if r.info.status != "FINISHED":
            problems.append(f"trial {tid}: run {rid} is {r.info.status}, not FINISHED")
        if steps != list(range(iterations + 1)):
            problems.append(f"trial {tid}: logged steps {steps}, expected 0..{iterations} once each")
        if not TRIAL_ARTIFACTS <= top or plots != PLOTS:
            problems.append(f"trial {tid}: artifacts {sorted(top | plots)} lack {sorted((TRIAL_ARTIFACTS | PLOTS) - top - plots)}")
        if node in ("?", "ray-head"):
            problems.append(f"trial {tid}: ran on {node}, not on a worker")
    if args.spread and len(nodes_used - {"?", "ray-head"}) < 2:
        problems.append(f"the trials ran on {sorted(nodes_used)}, not on both workers")
    if args.killed_trial and args.killed_trial not in trial_ids:
        problems.append(f"the killed trial {args.killed_trial} has no run")
    print(f"trials ran on: {', '.join(sorted(nodes_used))}")
    for p in problems:
        print(f"error: {p}")
    return 1 if problems else 0


def cmd_model(args: argparse.Namespace) -> int:
    from mlflow import MlflowClient

    client = MlflowClient()
    versions = client.search_model_versions(f"name='{args.name}'")
    if not versions:
        print(f"error: no registered model {args.name!r}")
        return 1
    for v in versions:
        run = client.get_run(v.run_id)
        print(f"registered model {v.name} version {v.version}: {v.status}, run {v.run_id} "
              f"({run.data.tags.get('dsl.role', '?')}, {run.info.status})")
    return 0 if all(v.status == "READY" for v in versions) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("nodes", help="wait for the Ray head and N alive workers, list them")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=180)
    p.set_defaults(fn=cmd_nodes)
    p = sub.add_parser("wait-step", help="wait until a trial running on NODE logged an iteration")
    p.add_argument("sweep")
    p.add_argument("--node", required=True)
    p.add_argument("--timeout", type=float, default=600)
    p.set_defaults(fn=cmd_wait_step)
    p = sub.add_parser("sweep", help="check a finished sweep's runs")
    p.add_argument("sweep")
    p.add_argument("--trials", type=int, required=True)
    p.add_argument("--spread", action="store_true", help="the trials must have run on both workers")
    p.add_argument("--killed-trial", default="", help="a trial whose node was killed: it must have been retried ...")
    p.add_argument("--killed-node", default="", help="... on another node than this Ray node id")
    p.set_defaults(fn=cmd_sweep)
    p = sub.add_parser("model", help="check that a model is registered")
    p.add_argument("name")
    p.set_defaults(fn=cmd_model)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
