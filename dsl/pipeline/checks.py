"""Config and corpus checks that run before any work starts, with the allowed values in each message.

What is allowed comes from the registries (`dsl.registry`): names, what a protocol needs, the keys each entry
owns (`dsl.pipeline.keys`), a rule's parameter ranges, a stage's own checks. No name is listed here.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from dsl.config import ChainConfig, ConfigError, field_default
from dsl.data.corpora import CORPUS_FORMATS, list_corpora
from dsl.data.feature_kinds import FEATURE_KINDS
from dsl.method.rules import PARAMS_PREFIX, RULES
from dsl.method.schedules import SCHEDULES
from dsl.pipeline.keys import key_applies, owned_by, value_at
from dsl.plugins import load_plugins
from dsl.protocols.plans import PROTOCOLS
from dsl.training.aux_tasks import AUX_TASKS
from dsl.training.backbones import BACKBONES


def _unknown(what: str, name: str, known: Iterable[str]) -> str:
    return f"{what} {name!r} is unknown; allowed: {', '.join(sorted(known))}"


def given_unused(cfg: ChainConfig, keys: Iterable[str]) -> list[str]:
    """The keys among `keys` set away from their default although they do not apply under `cfg`'s choices."""
    return [k for k in keys if value_at(cfg, k) != field_default(k) and not key_applies(k, cfg)]


def config_problems(cfg: ChainConfig) -> list[str]:
    """Every problem with `cfg` that can be seen without the data."""
    p: list[str] = []
    try:
        load_plugins(cfg.plugins)  # first: they may register the names checked below
    except ConfigError as exc:
        p.append(str(exc))
    if cfg.corpus != "csv" and cfg.corpus not in CORPUS_FORMATS:
        p.append(_unknown("corpus", cfg.corpus, list_corpora()))
    if cfg.backbone not in BACKBONES:
        p.append(_unknown("backbone", cfg.backbone, BACKBONES))
    p += label_problems(cfg)
    if cfg.iterations < 0:
        p.append(f"iterations = {cfg.iterations}; must be >= 0")
    p += protocol_problems(cfg)
    p += train_problems(cfg)
    p += feature_problems(cfg)
    p += stage_problems(cfg)
    p += eval_problems(cfg)
    if cfg.segments.length < 1 or cfg.segments.hop < 1:
        p.append(f"segments.length and segments.hop must be >= 1; got {cfg.segments}")
    if cfg.bad_files not in ("fail", "skip"):
        p.append(f"bad_files = {cfg.bad_files!r}; allowed: fail, skip")
    return p


def label_problems(cfg: ChainConfig) -> list[str]:
    """The rule, its schedule and its parameters (`labels.*`)."""
    p: list[str] = []
    lab = cfg.labels
    if lab.rule not in RULES:
        p.append(_unknown("labels.rule", lab.rule, RULES))
    if lab.schedule not in SCHEDULES:
        p.append(_unknown("labels.schedule", lab.schedule, SCHEDULES))
    for name in ("alpha", "alpha_end", "epsilon"):
        v = getattr(lab, name)
        if not 0.0 <= v <= 1.0:
            p.append(f"labels.{name} = {v} is outside [0, 1]")
    if lab.rule in RULES:
        rule = RULES[lab.rule]
        if given_unused(cfg, ("labels.alpha", "labels.schedule")):  # what a user sets to choose a schedule
            p.append(f"labels.alpha/schedule given with rule {lab.rule!r}; alpha applies only to: "
                     f"{', '.join(n for n in RULES.names() if key_applies('labels.alpha', {'labels.rule': n}))}")
        for name, value in lab.params.items():
            spec = rule.params.get(name)
            if spec is None:
                p.append(f"{PARAMS_PREFIX}{name} given but rule {lab.rule!r} has "
                         + (f"the parameter(s) {', '.join(rule.params)}" if rule.params else "no parameters"))
            elif not spec.low <= value <= spec.high:
                p.append(f"{PARAMS_PREFIX}{name} = {value} is outside [{spec.low}, {spec.high}] (rule {lab.rule!r})")
    if lab.horizon < 0 or 0 < lab.horizon < cfg.iterations:
        p.append(f"labels.horizon = {lab.horizon}; must be 0 (the chain's iterations) or >= iterations ({cfg.iterations})")
    return p


def protocol_problems(cfg: ChainConfig) -> list[str]:
    """The fold plan (`protocol.*`): its name, the keys it needs, the keys only other protocols read, the folds."""
    pr = cfg.protocol
    p: list[str] = []
    info = PROTOCOLS[pr.name] if pr.name in PROTOCOLS else None
    if info is None:
        p.append(_unknown("protocol.name", pr.name, PROTOCOLS))
    else:
        missing = [k for k in info.needs if not value_at(cfg, k)]
        if missing:
            p.append(f"protocol {pr.name} needs {' and '.join(missing)}")
        if "protocol.test_corpus" in info.keys and pr.test_corpus and pr.test_corpus not in list_corpora():
            p.append(_unknown("protocol.test_corpus", pr.test_corpus, list_corpora()))
        unused = given_unused(cfg, owned_by("protocol.name"))
        if unused:
            owners = [n for n in PROTOCOLS.names() if any(key_applies(k, {"protocol.name": n}) for k in unused)]
            p.append(f"{', '.join(unused)} apply only to protocol {', '.join(owners)}, not {pr.name!r}")
    from dsl.config import OUTER_PARTITIONS

    if pr.outer not in OUTER_PARTITIONS:
        p.append(f"protocol.outer {pr.outer!r} is unknown; allowed: {', '.join(OUTER_PARTITIONS)}")
    if pr.holdout:
        p += holdout_problems(cfg)
    for name in ("folds", "eval_folds", "select_folds", *(("inner_folds",) if info is not None and info.nested else ())):
        if getattr(pr, name) < 2:
            p.append(f"protocol.{name} = {getattr(pr, name)}; must be >= 2")
    return p


def holdout_problems(cfg: ChainConfig) -> list[str]:
    """`protocol.holdout` (the final exam's plan, `dsl.protocols.plans.holdout_plan`): a protocol it combines with,
    no outer folds of its own, an assignment file that exists."""
    from pathlib import Path

    from dsl.protocols.plans import holdout_protocols

    pr = cfg.protocol
    p = []
    allowed = holdout_protocols()
    if pr.name in PROTOCOLS and pr.name not in allowed:
        p.append(f"protocol.holdout does not combine with protocol {pr.name!r}; allowed: {', '.join(allowed)}")
    if pr.assignment:
        p.append("protocol.holdout and protocol.assignment exclude each other (a holdout plan has no outer folds)")
    if not Path(pr.holdout).is_file():
        p.append(f"protocol.holdout {pr.holdout}: no such holdout assignment file")
    return p


def train_problems(cfg: ChainConfig) -> list[str]:
    """Training (`train.*`) and its auxiliary task."""
    from dsl.config import PRECISIONS

    p: list[str] = []
    t = cfg.train
    if t.aux not in AUX_TASKS:
        p.append(_unknown("train.aux", t.aux, AUX_TASKS))
    elif t.aux_data and given_unused(cfg, ("train.aux_data",)):
        p.append(f"train.aux_data {t.aux_data!r} given but not used: it applies only to train.aux: "
                 f"{', '.join(n for n in AUX_TASKS.names() if key_applies('train.aux_data', {'train.aux': n}))} "
                 f"(got train.aux: {t.aux})")
    elif key_applies("train.aux_augs", cfg):
        from dsl.training.augment import AUGMENTATIONS

        unknown = [a for a in t.aux_augs if a not in AUGMENTATIONS]
        if unknown or len(t.aux_augs) < 2:
            p.append(f"train.aux_augs {list(t.aux_augs)}: need at least two of {', '.join(AUGMENTATIONS)}"
                     + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
        if t.aux_cls_weight < 0 or t.aux_rec_weight < 0:
            p.append(f"train.aux_cls_weight/aux_rec_weight must be >= 0; got {t.aux_cls_weight}, {t.aux_rec_weight}")
    if t.precision not in PRECISIONS:
        p.append(f"train.precision {t.precision!r} is unknown; allowed: {', '.join(PRECISIONS)}")
    if t.epochs < 1 or t.batch_size < 2 or t.lr <= 0 or t.patience < 1:
        p.append(f"train: epochs >= 1, batch_size >= 2, lr > 0, patience >= 1 required; got {t}")
    if not 0.0 <= t.val_fraction < 0.5:
        p.append(f"train.val_fraction = {t.val_fraction}; must be in [0, 0.5)")
    if not 0.0 < t.epoch_fraction <= 1.0:
        p.append(f"train.epoch_fraction = {t.epoch_fraction}; must be in (0, 1]")
    return p


def feature_problems(cfg: ChainConfig) -> list[str]:
    """`features.kind` and, for `ssl`, the checkpoint directory (exists, loadable, layer in range)."""
    f = cfg.features
    if f.kind not in FEATURE_KINDS:
        return [_unknown("features.kind", f.kind, FEATURE_KINDS)]
    given = given_unused(cfg, (*owned_by("features.kind"), *owned_by("features.ssl_layer_sum")))
    if given:
        return [f"{', '.join(dict.fromkeys(given))} given but not used: the ssl keys apply only to features.kind: "
                "ssl, and features.ssl_layer only without features.ssl_layer_sum"]
    if f.kind == "ssl":
        from dsl.data.ssl_features import checkpoint_problems

        return checkpoint_problems(f)
    return []


def stage_problems(cfg: ChainConfig) -> list[str]:
    """Problems of the utterance stage (`stage.*`): its name, its input, its own settings."""
    from dsl.method.stages import STAGES

    st = cfg.stage
    if st.name not in STAGES:
        return [_unknown("stage.name", st.name, STAGES)]
    from dsl.config import STAGE_FIT_ON

    stage = STAGES[st.name]
    p = []
    if st.fit_on not in STAGE_FIT_ON:
        p.append(f"stage.fit_on {st.fit_on!r} is unknown; allowed: {', '.join(STAGE_FIT_ON)}")
    if "stage.input" in stage.keys and st.input not in stage.inputs:
        p.append(f"stage.input {st.input!r} is unknown; allowed: {', '.join(stage.inputs)}")
    return p + stage.cls.spec_problems(st)


def eval_problems(cfg: ChainConfig) -> list[str]:
    """Problems of the test conditions (`eval.noise`, `eval.adversarial`)."""
    from pathlib import Path

    from dsl.robustness.conditions import condition_names, needs_speech
    from dsl.robustness.noise import NOISES
    from dsl.training.attacks import ATTACKS

    noise, adv = cfg.eval.noise, cfg.eval.adversarial
    p = [_unknown("eval.noise.types", t, NOISES) for t in noise.types if t not in NOISES]
    p += [_unknown("eval.adversarial.attacks", a, ATTACKS) for a in adv.attacks if a not in ATTACKS]
    if needs_speech(noise):
        if not noise.babble_data:
            p.append(f"eval.noise.types {', '.join(t for t in noise.types if NOISES[t].needs_speech)} needs "
                     "eval.noise.babble_data (a folder of speech to make it of, e.g. another corpus)")
        elif not Path(noise.babble_data).expanduser().is_dir():
            p.append(f"eval.noise.babble_data {noise.babble_data!r}: not a folder")
        if noise.babble_talkers < 1:
            p.append(f"eval.noise.babble_talkers = {noise.babble_talkers}; must be >= 1")
    elif noise.babble_data and not any(t not in NOISES for t in noise.types):
        p.append("eval.noise.babble_data given but no noise type in eval.noise.types is made of speech (babble)")
    if any(e < 0 for e in adv.eps):
        p.append(f"eval.adversarial.eps {list(adv.eps)}: must be >= 0 (feature standard deviations)")
    if adv.pgd_steps < 1:
        p.append(f"eval.adversarial.pgd_steps = {adv.pgd_steps}; must be >= 1")
    names = condition_names(cfg.eval)
    if len(set(names)) != len(names):
        p.append(f"eval: repeated test conditions {sorted({n for n in names if names.count(n) > 1})} (an SNR, eps or "
                 "type given twice)")
    return p


def data_problems(cfg: ChainConfig, labels: np.ndarray, speakers: np.ndarray, label_names: tuple[str, ...]) -> list[str]:
    """Problems of this config on this corpus: classes smaller than the folds, too few speakers."""
    p: list[str] = []
    counts = np.bincount(labels, minlength=len(label_names))
    need = cfg.protocol.folds
    small = [f"{n} ({c})" for n, c in zip(label_names, counts) if c < max(need, cfg.protocol.eval_folds)]
    if small:
        p.append(f"class(es) with fewer utterances than folds ({need} folds, {cfg.protocol.eval_folds} "
                 f"evaluation folds): {', '.join(small)}")
    info = PROTOCOLS[cfg.protocol.name] if cfg.protocol.name in PROTOCOLS else None
    if info is not None and info.grouped:
        n_spk = len(np.unique(speakers))
        if need > n_spk:
            p.append(f"protocol.folds = {need} but the corpus has only {n_spk} speakers ({cfg.protocol.name} protocol)")
        elif info.nested and cfg.protocol.inner_folds > n_spk - (n_spk + need - 1) // need:
            p.append(f"protocol.inner_folds = {cfg.protocol.inner_folds} but an outer training set may have only "
                     f"{n_spk - (n_spk + need - 1) // need} speakers ({cfg.protocol.name} protocol, {need} outer folds)")
    return p


def check_config(cfg: ChainConfig) -> None:
    problems = config_problems(cfg)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def check_data(cfg: ChainConfig, labels: np.ndarray, speakers: np.ndarray, label_names: tuple[str, ...]) -> None:
    problems = data_problems(cfg, labels, speakers, label_names)
    if problems:
        raise ConfigError("config does not fit the corpus:\n  " + "\n  ".join(problems))
