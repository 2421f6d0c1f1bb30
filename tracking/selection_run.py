"""`dsl-sweep best` in MLflow: the selection shown as it runs (the sweep's trials are read back through
`tracking.sweep_runs.SweepRun`).

Under the sweep's parent run, one `selection` run (`dsl.role=selection`) holds the race and the final exam: one
child run per chain (`dsl.role=selection_chain`, `dsl.selection_chain=<stage>/<candidate>/seed<N>`, step =
iteration), created RUNNING when the chain is handed out, so the UI shows the race as it goes, and finished with
the chain's metrics when its result is in. The selection run carries, per round, each candidate's running mean
and the survivors; at the end the verdict (tag `dsl.verdict`), the race table and, with a holdout, the final
exam's figures, which the parent run also gets. An interrupted `best` finds its selection run and chain runs again
by these tags (no duplicates), and logs the chains it reads back from disk that MLflow lacks.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .client import call, client
from .schema import (
    BEST_CONFIG_TAG,
    CANDIDATE_TAG,
    ERROR_TAG,
    HOLDOUT_GAIN_UA_METRIC,
    HOLDOUT_REFERENCE_UA_METRIC,
    HOLDOUT_TAG,
    HOLDOUT_UA_METRIC,
    HOLDOUT_WA_METRIC,
    OPTIMISM_METRIC,
    PARENT_TAG,
    RACE_CHAINS_METRIC,
    RACE_UA_METRIC,
    RESUMED_TAG,
    ROLE_SELECTION,
    ROLE_SELECTION_CHAIN,
    ROLE_TAG,
    SECONDS_TAG,
    SEED_TAG,
    SELECTION_CHAIN_TAG,
    SELECTION_PROTOCOL_TAG,
    SELECTION_RUN_TAG,
    SIGNIFICANT_TAG,
    STAGE_TAG,
    SURVIVORS_TAG,
    VERDICT_TAG,
    flat_params,
    iteration_metrics,
)

SELECTION_ROLE, CHAIN_ROLE, CHAIN_TAG = ROLE_SELECTION, ROLE_SELECTION_CHAIN, SELECTION_CHAIN_TAG
TAG_LIMIT = 5000  # MLflow's longest tag value


def chain_tag(stage: str, key: str, seed: int) -> str:
    return f"{stage}/{key}/seed{seed}"


def outcome_figures(sel: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """MLflow metrics and tags of the decision (selection run and parent run) from a selection.json's content."""
    row = next(r for r in sel["race"]["rows"] if r["key"] == sel["winner"]["key"])
    metrics = {RACE_UA_METRIC: row["mean"] / 100.0, RACE_CHAINS_METRIC: float(sel["race"]["chains"])}
    tags = {VERDICT_TAG: sel["race"]["verdict"]["text"], SELECTION_PROTOCOL_TAG: sel["protocol"]["name"],
            SIGNIFICANT_TAG: str(sel["race"]["verdict"]["significant"]).lower(), BEST_CONFIG_TAG: sel["winner"]["name"]}
    ex = sel.get("exam")
    if ex:
        metrics.update({HOLDOUT_UA_METRIC: ex["winner"]["ua"]["mean"], HOLDOUT_WA_METRIC: ex["winner"]["wa"]["mean"],
                        HOLDOUT_REFERENCE_UA_METRIC: ex["reference"]["ua"]["mean"],
                        HOLDOUT_GAIN_UA_METRIC: ex["gain_ua"]["mean"], OPTIMISM_METRIC: ex["optimism"]})
        tags[HOLDOUT_TAG] = sel["data"]["holdout"]["how"]
    return metrics, tags


# --- the selection as it runs -----------------------------------------------------------------------------------
class SelectionTracker:
    """The `selection` run under the sweep's parent and its chain runs (see the module docstring)."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, params: Mapping[str, Any]):
        self.c = client(tracking_uri)
        self.experiment_id, self.parent_run_id = experiment_id, parent_run_id
        self.run_id = self._open(params)
        self._chains: dict[str, Any] = {}  # chain tag -> run (as found or created)
        for run in self._chain_runs():
            self._chains.setdefault(run.data.tags[CHAIN_TAG], run)

    def _open(self, params: Mapping[str, Any]) -> str:
        filt = f"tags.`{ROLE_TAG}` = '{SELECTION_ROLE}' and tags.`{PARENT_TAG}` = '{self.parent_run_id}'"
        found = call(self.c.search_runs, [self.experiment_id], filter_string=filt,
                     order_by=["attributes.start_time DESC"], max_results=1)
        if found:
            call(self.c.update_run, found[0].info.run_id, status="RUNNING")
            call(self.c.set_tag, found[0].info.run_id, RESUMED_TAG, "true")
            return found[0].info.run_id
        run = call(self.c.create_run, self.experiment_id, run_name="selection",
                   tags={ROLE_TAG: SELECTION_ROLE, PARENT_TAG: self.parent_run_id})
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in flat_params(params).items()]
        for i in range(0, len(items), 100):
            call(self.c.log_batch, run.info.run_id, params=items[i:i + 100])
        return run.info.run_id

    def _chain_runs(self) -> list:
        runs, token = [], None
        while True:
            page = call(self.c.search_runs, [self.experiment_id],
                        filter_string=f"tags.`{PARENT_TAG}` = '{self.run_id}'", max_results=1000, page_token=token)
            runs.extend(r for r in page if r.data.tags.get(ROLE_TAG) == CHAIN_ROLE and CHAIN_TAG in r.data.tags)
            token = page.token
            if not token:
                return runs

    def _chain(self, stage: str, key: str, name: str, seed: int, tags: Mapping[str, Any]):
        tag = chain_tag(stage, key, seed)
        run = self._chains.get(tag)
        if run is None:
            run = call(self.c.create_run, self.experiment_id, run_name=f"{stage} {name} seed {seed}",
                       tags={ROLE_TAG: CHAIN_ROLE, PARENT_TAG: self.run_id, CHAIN_TAG: tag, STAGE_TAG: stage,
                             CANDIDATE_TAG: key, SEED_TAG: str(seed), **{k: str(v) for k, v in tags.items()}})
            self._chains[tag] = run
        return run

    def started(self, stage: str, key: str, name: str, seed: int, **tags: Any) -> None:
        """A chain was handed out: its run shows RUNNING (a run already FINISHED, logged by an earlier `best` of
        the same sweep, stays as it is: the chain's numbers are the same)."""
        run = self._chain(stage, key, name, seed, tags)
        if run.info.status not in ("RUNNING", "FINISHED"):  # KILLED or FAILED by an interrupted `best`
            call(self.c.update_run, run.info.run_id, status="RUNNING")
            self._chains[chain_tag(stage, key, seed)] = call(self.c.get_run, run.info.run_id)

    def finished(self, stage: str, key: str, name: str, seed: int, result: Mapping[str, Any], score: float,
                 **tags: Any) -> None:
        """A chain's result is in (computed now, or read back from disk): its iterations as steps, its score, its
        config as params; the run ends FINISHED. A run already FINISHED is left as it is."""
        run = self._chain(stage, key, name, seed, tags)
        if run.info.status == "FINISHED":
            return
        from mlflow.entities import Metric, Param

        rid = run.info.run_id
        metrics = [Metric(k, v, 0, int(it["iteration"])) for it in result["iterations"]
                   for k, v in iteration_metrics(it).items()]
        metrics.append(Metric("score", float(score), 0, int(result["iterations"][-1]["iteration"])))
        params = [Param(k, str(v)[:6000]) for k, v in flat_params(result["config"]).items()]
        params = [p for p in params if p.key not in run.data.params]  # a resumed run may have them
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params and 1000 metrics per batch
            call(self.c.log_batch, rid, params=params[i:i + 100])
        for i in range(0, len(metrics), 1000):
            call(self.c.log_batch, rid, metrics=metrics[i:i + 1000])
        call(self.c.set_tag, rid, SECONDS_TAG, f"{float(result.get('seconds', 0.0)):.1f}")
        call(self.c.set_terminated, rid, "FINISHED")
        self._chains[chain_tag(stage, key, seed)] = call(self.c.get_run, rid)

    def failed(self, stage: str, key: str, name: str, seed: int, error: str) -> None:
        run = self._chain(stage, key, name, seed, {})
        call(self.c.set_tag, run.info.run_id, ERROR_TAG, error[:TAG_LIMIT])
        call(self.c.set_terminated, run.info.run_id, "FAILED")

    def round(self, number: int, means: Mapping[str, float], alive: Sequence[str], chains: int) -> None:
        """The race after a round: each candidate's mean so far (`race_mean/<key>`), survivors, chains spent."""
        from mlflow.entities import Metric

        ms = [Metric(f"race_mean/{k}", float(v), 0, number) for k, v in means.items() if math.isfinite(v)]
        ms += [Metric("survivors", float(len(alive)), 0, number), Metric("chains", float(chains), 0, number)]
        call(self.c.log_batch, self.run_id, metrics=ms)
        call(self.c.set_tag, self.run_id, SURVIVORS_TAG, ",".join(alive)[:TAG_LIMIT])

    def outcome(self, metrics: Mapping[str, float], tags: Mapping[str, str], files: Sequence[str | Path]) -> None:
        """The verdict and the final exam: on the selection run and on the sweep's parent run, with the files."""
        from mlflow.entities import Metric

        ms = [Metric(k, float(v), 0, 0) for k, v in metrics.items() if v is not None and math.isfinite(float(v))]
        for rid in (self.run_id, self.parent_run_id):
            if ms:
                call(self.c.log_batch, rid, metrics=ms)
            for k, v in tags.items():
                call(self.c.set_tag, rid, k, str(v)[:TAG_LIMIT])
        call(self.c.set_tag, self.parent_run_id, SELECTION_RUN_TAG, self.run_id)
        for f in files:
            call(self.c.log_artifact, self.run_id, str(f))

    def close(self, status: str = "FINISHED") -> None:
        """End the selection run; chain runs still RUNNING (an interrupted round) end KILLED."""
        for run in self._chain_runs():
            if run.info.status == "RUNNING":
                call(self.c.set_terminated, run.info.run_id, "KILLED")
        call(self.c.set_terminated, self.run_id, status)


class NoTracker:
    """A selection without MLflow (tests, `best` on exported results): every call does nothing."""

    run_id = ""

    def started(self, *args: Any, **kwargs: Any) -> None: ...
    def finished(self, *args: Any, **kwargs: Any) -> None: ...
    def failed(self, *args: Any, **kwargs: Any) -> None: ...
    def round(self, *args: Any, **kwargs: Any) -> None: ...
    def outcome(self, *args: Any, **kwargs: Any) -> None: ...
    def close(self, *args: Any, **kwargs: Any) -> None: ...
