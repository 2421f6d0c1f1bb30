"""Typed configuration of one DSL chain, with presets and YAML/flag loading.

One `ChainConfig` fully determines a run (together with the data): it is what a sweep trial
receives, what `best.yaml` holds, and what `dsl-sweep run` accepts.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the allowed values."""


@dataclass(frozen=True)
class FeatureSpec:
    """Front end: log-Mel (paper: 16 kHz, 25 ms Hann, 10 ms hop, 512 FFT, 64 HTK mels, 125-7500 Hz), or a
    self-supervised speech model's hidden states per frame (`kind: ssl`, see `dsl.data.ssl_features`)."""

    kind: str = "logmel"  # logmel | ssl (dsl.data.feature_kinds)

    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 64
    fmin: float = 125.0
    fmax: float = 7500.0
    log_eps: float = 1e-10
    ssl_model: str = ""  # ssl: a local Hugging Face checkpoint directory (save_pretrained); nothing is downloaded
    ssl_layer: int = -1  # ssl: index into the model's hidden_states (0: the CNN encoder's projection, -1: last)
    ssl_layer_sum: bool = False  # ssl: cache every hidden state; a learned softmax-weighted sum feeds the network


@dataclass(frozen=True)
class SegmentSpec:
    """Segments of `length` frames every `hop` frames (paper: 32 frames; hop 1 (EmoDB) or 3 (CASIA))."""

    length: int = 32
    hop: int = 1


PRECISIONS = ("fp32", "bf16", "auto")  # train.precision (CPU); see dsl.training.train.resolve_precision


@dataclass(frozen=True)
class TrainSpec:
    """The paper's recipe: Adam 1e-3, x0.8 every 2 epochs, batch 128, patience 3."""

    epochs: int = 12
    batch_size: int = 128
    lr: float = 1e-3
    lr_decay: float = 0.8
    lr_decay_every: int = 2
    patience: int = 3
    val_fraction: float = 0.1
    epoch_fraction: float = 1.0  # share of the training segments drawn afresh each epoch (1: all of them)
    eval_batch_size: int = 2048
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision on CUDA only
    precision: str = "fp32"  # CPU: fp32 | bf16 (autocast) | auto (bf16 only with native bf16 and a backbone that gains)
    aux: str = "none"  # none | mtl_aug (dsl.training.mtl: augmentation classification + reconstruction share the encoder)
    aux_augs: tuple[str, ...] = ("none", "noise", "time_mask", "freq_mask", "pitch_shift", "speed")
    aux_cls_weight: float = 0.3  # mtl_aug: weight of the augmentation-classification loss
    aux_rec_weight: float = 0.3  # mtl_aug: weight of the reconstruction loss
    aux_data: str = ""  # mtl_aug: a folder of unlabelled wav/flac (recursive) that also feeds the auxiliary tasks
    num_threads: int = 0  # 0: leave torch's setting (Ray sets OMP_NUM_THREADS per trial)
    channels_last: bool = False
    compile: bool = False  # torch.compile the network (CPU: ~1.1x per step for small_cnn, ~20 s to compile)
    workers: int = 1  # folds trained in parallel processes by the local runner (each with num_threads)


@dataclass(frozen=True)
class LabelSpec:
    """Label-update rule and its alpha schedule over iterations 1..T. The built-in rules' parameters are typed
    fields; a registered rule's own parameters (`dsl.method.rules.RuleParam`) live in `params`, by name."""

    rule: str = "wdsl"
    alpha: float = 0.2  # WDSL weight of the original label (constant schedule / schedule start)
    schedule: str = "constant"  # constant | step | linear | cosine | exponential
    alpha_end: float = 0.1  # annealing target
    alpha_step: float = 0.2  # decrement of the step schedule (paper: 0.9 -> 0.7 -> ... -> 0.1)
    epsilon: float = 0.1  # label smoothing
    horizon: int = 0  # iterations the alpha schedule spans (0: the chain's `iterations`); a cut chain keeps its alphas
    params: dict[str, float] = field(default_factory=dict)  # the rule's own parameters: labels.params.<name>


@dataclass(frozen=True)
class ProtocolSpec:
    """Fold plan (see `dsl.protocols.plans`): `stratified` (the paper's, transductive), `speaker_transductive`, or
    the leak-free `nested`, `speaker` (nested, grouped by speaker), `refinery` and `cross_corpus`.

    `outer` says how the outer folds are cut when no `assignment` fixes them: `balanced` (a function of file
    or speaker identity and the seed only, so no label can move an utterance between folds) or `stratified`
    (by label, as before `outer` existed: a relabelled test fold changes the partition)."""

    name: str = "stratified"
    folds: int = 5  # outer folds of the held-out protocols
    outer: str = "balanced"  # balanced | stratified: how the outer folds are cut (see dsl.protocols.plans)
    inner_folds: int = 3  # nested and speaker only
    eval_folds: int = 10  # random-forest CV over utterances (transductive protocols)
    select_folds: int = 5  # forest CV over a scope's training utterances that picks its iteration (held out)
    assignment: str = ""  # JSON of file -> outer fold (or a result JSON): a plan that cannot depend on labels
    test_corpus: str = ""  # cross_corpus: the test corpus's format (e.g. urdu) ...
    test_data: str = ""  # ... and its folder; the training corpus is `corpus`/`data`
    label_map: str = ""  # cross_corpus: NAME=SHARED,... on top of dsl.data.cross_corpus.SYNONYMS
    # a holdout assignment (dsl.protocols.holdout): train on every other utterance with this protocol's own inner
    # structure and score the held-out utterances only (the final exam of `dsl-sweep best`, `dsl-sweep run --holdout`)
    holdout: str = ""


OUTER_PARTITIONS = ("balanced", "stratified")  # protocol.outer; see dsl.protocols.plans
STAGE_FIT_ON = ("in_sample", "cross_fit")  # stage.fit_on: what an in-sample (refinery) scope's stage trains on
STAGE_TEST_VIEWS = ("mean", "each")  # stage.test_views: how the forest reads a test utterance's fold networks


@dataclass(frozen=True)
class StageSpec:
    """The utterance stage that turns out-of-sample segment outputs into utterance labels (`dsl.method.stages`):
    `forest` (the paper's random forest on 8 statistics per class of segment posteriors) or `acp`
    (attentive correlation pooling, `dsl.method.acp`, on segment embeddings or posteriors). `fit_on` (every
    stage) and `test_views` (the forest) say which segment outputs a held-out scope's stage trains and predicts
    on, so that both are of one kind (see `dsl.method.stages`); the other keys but `name` apply to `acp` only,
    which trains per scope per iteration on a few hundred utterances (seconds on a CPU)."""

    name: str = "forest"  # dsl.method.stages.STAGES
    # in-sample scopes (refinery): in_sample = the scope's own network's posteriors of the utterances it trained
    # on; cross_fit = two extra networks per scope and iteration, each trained on half of the scope's training
    # utterances, predict the other half, and the stage and the iteration selector read those
    fit_on: str = "in_sample"
    # forest, test utterances seen by several fold networks (nested, speaker, cross_corpus): mean = it reads the
    # mean of their posteriors; each = it reads each network's posteriors and averages its probabilities (as the
    # acp stage always does), like the single network's posteriors it trains on
    test_views: str = "mean"
    input: str = "embedding"  # acp: embedding (the backbone's penultimate layer) | posterior
    epsilon: float = 0.1  # acp: label smoothing of its cross-entropy
    dim: int = 32  # acp: channels after the learned projection; the correlation matrix is dim x dim
    with_mean: bool = True  # acp: the attention-weighted channel means join the correlations
    epochs: int = 20  # acp: EmoDB cpu preset, refinery, iteration 0: UA 72.1 % (forest 71.9 %), ~1 s CPU per fit
    lr: float = 1e-2
    batch_size: int = 64
    weight_decay: float = 1e-4


@dataclass(frozen=True)
class NoiseSpec:
    """Noisy test speech (`dsl.robustness`): every scored test utterance is also scored with additive noise of each
    type at each SNR (dB over the whole utterance), added to the waveform before the front end. Empty `types`: off.
    `babble` mixes `babble_talkers` utterances of the folder `babble_data` (never one of a test speaker)."""

    types: tuple[str, ...] = ()  # white | pink | babble (the registry dsl.robustness.noise.NOISES)
    snr: tuple[float, ...] = (20.0, 10.0, 5.0, 0.0)
    babble_data: str = ""  # babble: a folder of wav/flac (recursive), e.g. another corpus
    babble_talkers: int = 5
    seed: int = 0  # the noise of an utterance is seeded by this and its file name, not by the chain's seed


@dataclass(frozen=True)
class AdversarialSpec:
    """Adversarial test inputs (`dsl.training.attacks`): FGSM or PGD against the *segment network* at test time,
    within an L-inf ball of `eps` feature standard deviations (the fold's training statistics), untargeted against
    the network's own predicted class (no label is read). Empty `attacks`: off."""

    attacks: tuple[str, ...] = ()  # fgsm | pgd (the registry dsl.training.attacks.ATTACKS)
    eps: tuple[float, ...] = (0.1, 0.3)
    pgd_steps: int = 5  # pgd: steps of 2.5 eps / steps each, from the clean input (no random start)


@dataclass(frozen=True)
class EvalSpec:
    """Extra test conditions scored beside the clean test speech; training is unchanged. Off by default."""

    noise: NoiseSpec = field(default_factory=NoiseSpec)
    adversarial: AdversarialSpec = field(default_factory=AdversarialSpec)

    @property
    def enabled(self) -> bool:
        return bool(self.noise.types or self.adversarial.attacks)


@dataclass(frozen=True)
class ChainConfig:
    """Everything one DSL chain needs besides the audio."""

    corpus: str = "emodb"
    data: str = ""
    backbone: str = "small_cnn"
    iterations: int = 1
    seed: int = 0
    features: FeatureSpec = field(default_factory=FeatureSpec)
    segments: SegmentSpec = field(default_factory=SegmentSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    labels: LabelSpec = field(default_factory=LabelSpec)
    protocol: ProtocolSpec = field(default_factory=ProtocolSpec)
    stage: StageSpec = field(default_factory=StageSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)  # noisy and adversarial test conditions (off by default)
    cache_dir: str = ""  # "" -> $DSL_CACHE_DIR or ~/.cache/dsl-sweeps
    bad_files: str = "fail"  # fail | skip: what to do with audio that fails validation
    plugins: tuple[str, ...] = ()  # modules registering own backbones/rules, imported in every worker
    seeds: tuple[int, ...] = ()  # replicate study: run the chain once per seed (`seed` is then ignored)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if not out["labels"]["params"]:  # configs written before rule parameters existed stay equal
            del out["labels"]["params"]
        out["plugins"] = list(self.plugins)  # YAML and JSON have lists, not tuples
        out["seeds"] = list(self.seeds)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **overrides: Any) -> ChainConfig:
        """Dotted overrides: `cfg.replace(**{"train.epochs": 3, "seed": 1})`."""
        return from_dict(merge(self.to_dict(), unflatten(overrides)))


# Paper epochs per corpus (Sec. IV): CASIA 20, EmoDB 12, SAVEE 8.
PAPER_EPOCHS = {"casia": 20, "emodb": 12, "savee": 8}
PAPER_SEGMENT_HOP = {"casia": 3, "emodb": 1, "savee": 1}

PRESETS: dict[str, dict[str, Any]] = {
    # The paper's setting: EfficientNet-B0, 10 folds, 10 ms segment hop, paper epochs. Days on a CPU.
    "paper": {
        "backbone": "efficientnet_b0",
        "protocol": {"name": "stratified", "folds": 10, "eval_folds": 10},
        "segments": {"hop": 1},
        "train": {"epochs": 12},
    },
    # Laptop setting: small CNN, 5 folds, 80 ms segment hop, 6 epochs. Minutes on 2 cores.
    "cpu": {
        "backbone": "small_cnn",
        "protocol": {"name": "stratified", "folds": 5, "eval_folds": 10},
        "segments": {"hop": 8},
        "train": {"epochs": 6, "patience": 3, "workers": 2, "num_threads": 1, "channels_last": True},
    },
}


def preset(name: str, corpus: str = "emodb") -> dict[str, Any]:
    """Preset overrides; `paper` takes its epochs and segment hop from the corpus."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    out = merge({}, PRESETS[name])
    if name == "paper":
        out = merge(out, {"train": {"epochs": PAPER_EPOCHS.get(corpus, 12)},
                          "segments": {"hop": PAPER_SEGMENT_HOP.get(corpus, 1)}})
    return out


# Short names of config keys -> dotted ChainConfig keys: the one table behind the `dsl-sweep run` flags
# (`_` spelled `-`), the sweep file's search parameter names and the abbreviations of trial names.
SHORT_NAMES: dict[str, str] = {
    "corpus": "corpus",
    "data": "data",
    "backbone": "backbone",
    "rule": "labels.rule",
    "alpha": "labels.alpha",
    "schedule": "labels.schedule",
    "alpha_end": "labels.alpha_end",
    "alpha_step": "labels.alpha_step",
    "epsilon": "labels.epsilon",
    "iterations": "iterations",
    "stage": "stage.name",
    "protocol": "protocol.name",
    "folds": "protocol.folds",
    "inner_folds": "protocol.inner_folds",
    "eval_folds": "protocol.eval_folds",
    "epochs": "train.epochs",
    "lr": "train.lr",
    "batch_size": "train.batch_size",
    "segment_hop": "segments.hop",
    "device": "train.device",
    "threads": "train.num_threads",
    "seed": "seed",
    "seeds": "seeds",
    "cache_dir": "cache_dir",
    "bad_files": "bad_files",
}


def field_default(key: str) -> Any:
    """The default value of dotted ChainConfig key `key` (a nested spec for `train` etc.); KeyError if unknown."""
    node: Any = ChainConfig()
    for part in key.split("."):
        if not is_dataclass(node) or part not in {f.name for f in fields(node)}:
            raise KeyError(key)
        node = getattr(node, part)
    return node


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"train": {"epochs": 3}}` -> `{"train.epochs": 3}` (dotted keys pass through); the inverse of `unflatten`."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """`{"train.epochs": 3}` -> `{"train": {"epochs": 3}}`."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(known)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        f = known[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if is_dataclass(default):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}.{name}: expected a mapping, got {value!r}")
            kwargs[name] = _build(type(default), value, f"{where}.{name}")
        else:
            kwargs[name] = _coerce(value, default, f"{where}.{name}")
    return cls(**kwargs)


def _coerce(value: Any, default: Any, where: str) -> Any:
    if where.endswith(".seeds"):  # a list of ints: YAML list, or "0,1,2" / "0-4" from a flag
        return parse_seeds(value, where)
    if isinstance(default, tuple) and default and isinstance(default[0], float):  # numbers: list or "20,10,5"
        return parse_numbers(value, where)
    if isinstance(default, dict):  # named numbers (labels.params)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of parameter name -> number, got {value!r}")
        out = {}
        for k, v in value.items():
            try:
                if not isinstance(k, str) or isinstance(v, bool):
                    raise ValueError
                out[k] = float(v)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}.{k}: expected a number, got {v!r}") from None
        return out
    if isinstance(default, tuple):  # a list of names: YAML list, or "a,b" from --set
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{where}: expected a list of module names, got {value!r}")
        return tuple(value)
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    try:
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, str):
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {type(default).__name__}, got {value!r}") from None
    return value


def parse_numbers(value: Any, where: str) -> tuple[float, ...]:
    """`[20, 10]`, `"20,10,-5"` or `0.1` -> (20.0, 10.0, ...), in the given order."""
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
    try:
        out = tuple(float(v) for v in items if not isinstance(v, bool) and (not isinstance(v, str) or v.strip()))
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a list of numbers, got {value!r}") from None
    if not out or len(out) != len(items):
        raise ConfigError(f"{where}: expected a list of numbers, got {value!r}")
    return out


def parse_seeds(value: Any, where: str = "seeds") -> tuple[int, ...]:
    """`[0, 1, 2]`, `"0,1,2"` or `"0-4"` -> (0, 1, 2, ...), distinct and in the given order."""
    items: list[Any]
    if isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, str):
        items = []
        for part in (p.strip() for p in value.split(",") if p.strip()):
            lo, sep, hi = part.partition("-")
            if sep and lo.strip().isdigit() and hi.strip().isdigit():
                items.extend(range(int(lo), int(hi) + 1))
            else:
                items.append(part)
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ConfigError(f"{where}: expected a list of integer seeds, got {value!r}")
    try:
        seeds = [int(v) for v in items if not isinstance(v, bool) and float(v) == int(v)]
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a list of integer seeds, got {value!r}") from None
    if len(seeds) != len(items):
        raise ConfigError(f"{where}: expected a list of integer seeds, got {value!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: seeds must be distinct, got {value!r}")
    return tuple(seeds)


# Top-level keys a config file may carry as metadata (e.g. best.yaml's re-evaluated figures); not config.
METADATA_KEYS = ("evaluation",)


def from_dict(data: Mapping[str, Any]) -> ChainConfig:
    return _build(ChainConfig, {k: v for k, v in data.items() if k not in METADATA_KEYS}, "config")


def load_config(path: str | Path | None = None, preset_name: str | None = None,
                overrides: Mapping[str, Any] | None = None) -> ChainConfig:
    """Preset, then YAML file, then dotted overrides (later wins)."""
    data: dict[str, Any] = {}
    file_data: dict[str, Any] = {}
    if path is not None:
        try:
            file_data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read config: {exc}") from exc
        if not isinstance(file_data, Mapping):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    flat = unflatten(overrides or {})
    corpus = flat.get("corpus") or file_data.get("corpus") or "emodb"
    if preset_name:
        data = merge(data, preset(preset_name, corpus))
    data = merge(data, file_data)
    data = merge(data, flat)
    return from_dict(data)
