"""The search's parameter importances, from Optuna's public `optuna.importance` API (fANOVA)."""
from __future__ import annotations


def param_importances(study) -> tuple[dict[str, float], str]:
    """(importance per parameter, a note). Empty with the reason when Optuna cannot compute them (fewer
    than two complete trials, or no parameter that every complete trial has and that varies)."""
    import optuna
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 2:
        return {}, f"{len(done)} complete trial(s): importances need at least 2"
    try:
        imp = optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError) as exc:
        return {}, f"Optuna could not compute importances: {exc}"
    if not imp:
        return {}, "no parameter is shared by every complete trial"
    return {k: float(v) for k, v in imp.items()}, (f"fANOVA over {len(done)} complete trials (early-stopped and "
                                                    "failed trials are left out)")
