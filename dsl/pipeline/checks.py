"""Config and corpus checks that run before any work starts, with the allowed values in each message."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dsl.config import ChainConfig, ConfigError
from dsl.data.corpora import CORPUS_FORMATS
from dsl.method.rules import RULES, SSL_KEYS, key_applies
from dsl.method.schedules import SCHEDULES
from dsl.plugins import load_plugins
from dsl.protocols.plans import PROTOCOLS
from dsl.training.backbones import BACKBONES


def config_problems(cfg: ChainConfig) -> list[str]:
    """Every problem with `cfg` that can be seen without the data."""
    p: list[str] = []
    try:
        load_plugins(cfg.plugins)  # first: they may register the names checked below
    except ConfigError as exc:
        p.append(str(exc))
    if cfg.corpus != "csv" and cfg.corpus not in CORPUS_FORMATS:
        p.append(f"corpus {cfg.corpus!r} is unknown; allowed: {', '.join(sorted([*CORPUS_FORMATS, 'csv']))}")
    if cfg.backbone not in BACKBONES:
        p.append(f"backbone {cfg.backbone!r} is unknown; allowed: {', '.join(sorted(BACKBONES))}")
    lab = cfg.labels
    if lab.rule not in RULES:
        p.append(f"labels.rule {lab.rule!r} is unknown; allowed: {', '.join(sorted(RULES))}")
    if lab.schedule not in SCHEDULES:
        p.append(f"labels.schedule {lab.schedule!r} is unknown; allowed: {', '.join(sorted(SCHEDULES))}")
    for name in ("alpha", "alpha_end", "epsilon"):
        v = getattr(lab, name)
        if not 0.0 <= v <= 1.0:
            p.append(f"labels.{name} = {v} is outside [0, 1]")
    if lab.rule in RULES:
        defaults = type(lab)()
        given = [k for k in ("alpha", "schedule")  # what a user sets to choose a schedule
                 if not key_applies(f"labels.{k}", lab.rule) and getattr(lab, k) != getattr(defaults, k)]
        if given:
            p.append(f"labels.alpha/schedule given with rule {lab.rule!r}; alpha applies only to: "
                     f"{', '.join(n for n, r in RULES.items() if key_applies('labels.alpha', r))}")
    if lab.horizon < 0 or 0 < lab.horizon < cfg.iterations:
        p.append(f"labels.horizon = {lab.horizon}; must be 0 (the chain's iterations) or >= iterations ({cfg.iterations})")
    if cfg.iterations < 0:
        p.append(f"iterations = {cfg.iterations}; must be >= 0")
    pr = cfg.protocol
    if pr.name not in PROTOCOLS:
        p.append(f"protocol.name {pr.name!r} is unknown; allowed: {', '.join(sorted(PROTOCOLS))}")
    nested_like = pr.name in ("nested", "speaker", "cross_corpus")
    if pr.name == "cross_corpus":
        from dsl.data.corpora import list_corpora

        if not pr.test_corpus or not pr.test_data:
            p.append("protocol cross_corpus needs protocol.test_corpus (e.g. urdu) and protocol.test_data (its folder)")
        elif pr.test_corpus not in list_corpora():
            p.append(f"protocol.test_corpus {pr.test_corpus!r} is unknown; allowed: {', '.join(list_corpora())}")
    elif pr.test_corpus or pr.test_data or pr.label_map:
        p.append(f"protocol.test_corpus/test_data/label_map apply only to protocol cross_corpus, not {pr.name!r}")
    if pr.holdout:
        from dsl.protocols.plans import HOLDOUT_INNER

        if pr.name not in HOLDOUT_INNER:
            p.append(f"protocol.holdout does not combine with protocol {pr.name!r}; allowed: {', '.join(HOLDOUT_INNER)}")
        if pr.assignment:
            p.append("protocol.holdout and protocol.assignment exclude each other (a holdout plan has no outer folds)")
        if not Path(pr.holdout).is_file():
            p.append(f"protocol.holdout {pr.holdout}: no such holdout assignment file")
    for name in ("folds", "eval_folds", "select_folds", *(("inner_folds",) if nested_like else ())):
        if getattr(pr, name) < 2:
            p.append(f"protocol.{name} = {getattr(pr, name)}; must be >= 2")
    t = cfg.train
    from dsl.config import PRECISIONS

    if t.aux not in ("none", "mtl_aug"):
        p.append(f"train.aux {t.aux!r} is unknown; allowed: none, mtl_aug")
    elif t.aux_data and not key_applies("train.aux_data", lab.rule, aux=t.aux):
        p.append(f"train.aux_data {t.aux_data!r} given but not used: it applies only to train.aux: mtl_aug "
                 f"(got train.aux: {t.aux})")
    elif t.aux == "mtl_aug":
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
    p += feature_problems(cfg)
    p += stage_problems(cfg)
    if cfg.segments.length < 1 or cfg.segments.hop < 1:
        p.append(f"segments.length and segments.hop must be >= 1; got {cfg.segments}")
    if cfg.bad_files not in ("fail", "skip"):
        p.append(f"bad_files = {cfg.bad_files!r}; allowed: fail, skip")
    return p


def feature_problems(cfg: ChainConfig) -> list[str]:
    """`features.kind` and, for `ssl`, the checkpoint directory (exists, loadable, layer in range)."""
    from dsl.config import FEATURE_KINDS, FeatureSpec

    f = cfg.features
    if f.kind not in FEATURE_KINDS:
        return [f"features.kind {f.kind!r} is unknown; allowed: {', '.join(FEATURE_KINDS)}"]
    given = [k for k in SSL_KEYS if getattr(f, k.split(".", 1)[1]) != getattr(FeatureSpec(), k.split(".", 1)[1])
             and not key_applies(k, cfg.labels.rule, kind=f.kind, layer_sum=f.ssl_layer_sum)]
    if given:
        return [f"{', '.join(given)} given but not used: the ssl keys apply only to features.kind: ssl, and "
                "features.ssl_layer only without features.ssl_layer_sum"]
    if f.kind == "ssl":
        from dsl.data.ssl_features import checkpoint_problems

        return checkpoint_problems(f)
    return []


def stage_problems(cfg: ChainConfig) -> list[str]:
    """Problems of the utterance stage (`stage.*`)."""
    from dsl.config import STAGE_INPUTS
    from dsl.method.stages import STAGE_REGISTRY

    st = cfg.stage
    if st.name not in STAGE_REGISTRY:
        return [f"stage.name {st.name!r} is unknown; allowed: {', '.join(STAGE_REGISTRY)}"]
    if st.name != "acp":
        return []
    p = []
    if st.input not in STAGE_INPUTS:
        p.append(f"stage.input {st.input!r} is unknown; allowed: {', '.join(STAGE_INPUTS)}")
    if not 0.0 <= st.epsilon < 1.0:
        p.append(f"stage.epsilon = {st.epsilon} is outside [0, 1)")
    if st.dim < 2 or st.epochs < 1 or st.batch_size < 1 or st.lr <= 0 or st.weight_decay < 0:
        p.append(f"stage: dim >= 2, epochs >= 1, batch_size >= 1, lr > 0, weight_decay >= 0 required; got {st}")
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
    if cfg.protocol.name in ("speaker", "speaker_transductive"):
        n_spk = len(np.unique(speakers))
        if need > n_spk:
            p.append(f"protocol.folds = {need} but the corpus has only {n_spk} speakers ({cfg.protocol.name} protocol)")
        elif cfg.protocol.name == "speaker" and cfg.protocol.inner_folds > n_spk - (n_spk + need - 1) // need:
            p.append(f"protocol.inner_folds = {cfg.protocol.inner_folds} but an outer training set may have only "
                     f"{n_spk - (n_spk + need - 1) // need} speakers (speaker protocol, {need} outer folds)")
    return p


def check_config(cfg: ChainConfig) -> None:
    problems = config_problems(cfg)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def check_data(cfg: ChainConfig, labels: np.ndarray, speakers: np.ndarray, label_names: tuple[str, ...]) -> None:
    problems = data_problems(cfg, labels, speakers, label_names)
    if problems:
        raise ConfigError("config does not fit the corpus:\n  " + "\n  ".join(problems))
