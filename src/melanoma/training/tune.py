"""The `tune` command: an Optuna search of training settings on the val split -> a TUNE dir.

Each trial is a normal `train` on the train split, validated on the val split, into TUNE/trials/trial-NNNN (a RUN dir
that can be evaluated like any other). Its value is the best validation AUC over its epochs, and its best epoch is
recorded, so that TUNE/best.yaml can be the founding protocol's final fit: the best settings, trained on train+val
for the tuned epoch count (`melanoma train DATA --config TUNE/best.yaml --final --out RUN`).

The study lives in a database (TUNE/study.db, or a shared `--storage` URL that several workers use at once), so
running the same command again resumes it: finished trials are kept, `--trials N` counts every finished trial, and
a trial that a killed or interrupted worker left unfinished is failed and queued once more with the same parameters,
resuming its run dir from the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from melanoma.config import (
    TrainConfig,
    TuneConfig,
    atomic_write_text,
    build_config,
    read_yaml_mapping,
    to_plain,
    write_yaml,
)
from melanoma.data.prepare import read_manifest
from melanoma.errors import MelanomaError
from melanoma.rundir import RunConfig
from melanoma.training.fit import RESUMABLE_DIFFERENCES, _select_rows, train

try:
    import optuna
    from optuna.trial import FrozenTrial, TrialState
    from optuna_integration import PyTorchLightningPruningCallback
except ImportError:  # pragma: no cover - depends on the installation
    raise MelanomaError("`melanoma tune` needs Optuna: pip install 'melanoma[tune]'") from None

STUDY_DB = "study.db"
TUNE_RECORD = "tune.yaml"
TRIALS_CSV = "trials.csv"
BEST_YAML = "best.yaml"
HISTORY_PNG = "optimization_history.png"
IMPORTANCES_PNG = "param_importances.png"
TRIALS_DIR = "trials"
FINAL_DIR = "final"
MONITOR = "val_auc"

IDENTITY = "melanoma_tune"  # study user attribute: dataset fingerprint, base settings, search space
RUN_DIR = "run_dir"  # trial user attribute: the trial's RUN dir, relative to TUNE
BEST_EPOCH = "best_epoch"  # trial user attribute, 1-based like the run's result
RETRY_OF = "retry_of"  # trial user attributes of a queued retry: the first trial's number, the retry count
RETRIES = "retries"
MAX_RETRIES = 2  # a trial that keeps killing its worker (e.g. out of memory) is not retried forever
MAX_FAILS_IN_A_ROW = 3
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

INT_PARAMS = ("metadata_depth", "metadata_width", "fused_width", "batch_size")
FLOAT_PARAMS = ("dropout", "lr", "backbone_lr", "weight_decay", "oversample", "color_jitter", "warmup_epochs")
POSITIVE = {"metadata_width", "fused_width", "batch_size", "lr", "backbone_lr", "oversample"}  # else >= 0
BELOW_ONE = {"dropout"}
METADATA_PARAMS = ("metadata_depth", "metadata_width")
# The founding search: metadata MLP depth and width, fused width, regularisation, learning rate(s), over-sampling.
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "metadata_depth": {"low": 1, "high": 3},
    "metadata_width": {"low": 8, "high": 128, "log": True},
    "fused_width": {"low": 16, "high": 256, "log": True},
    "dropout": {"low": 0.0, "high": 0.5},
    "lr": {"low": 1e-4, "high": 3e-3, "log": True},
    "backbone_lr": {"low": 1e-5, "high": 1e-3, "log": True},  # only searched for pretrained backbones
    "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
    "oversample": {"low": 1.0, "high": 10.0},
}
RANGE_KEYS = {"low", "high", "log", "step"}
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Param:
    """One searched parameter: an int or float range (optionally log-scaled or stepped) or a list of choices."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.name in INT_PARAMS:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def plain(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"choices": list(self.choices)}
        plain = {"low": self.low, "high": self.high, "log": self.log}
        return plain | ({"step": self.step} if self.step is not None else {})


@dataclass
class SearchSpace:
    """Searched parameters plus fixed values; both become TrainConfig fields through `trial_config`."""

    params: dict[str, Param]
    fixed: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None, base: TrainConfig) -> SearchSpace:
        """The default space for `base`, with each key of the YAML file replacing or removing (null) one entry."""
        entries: dict[str, Any] = dict(DEFAULT_SPACE)
        if base.pretrained is False and base.weights is None:
            del entries["backbone_lr"]  # a randomly initialised image network trains with `lr`
        if not base.use_metadata:
            for name in METADATA_PARAMS:
                del entries[name]
        where = "search space"
        if path is not None:
            where = str(path)
            overrides = read_yaml_mapping(path)
            for name in overrides:
                _check_name(name, base, where)
            entries.update(overrides)
        params, fixed = {}, {}
        for name, spec in entries.items():
            if spec is None:
                continue
            if isinstance(spec, dict):
                params[name] = _parse_param(name, spec, where)
            else:
                fixed[name] = _parse_value(name, spec, where)
        return cls(params, fixed)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return {name: param.suggest(trial) for name, param in self.params.items()} | self.fixed

    def plain(self) -> dict[str, Any]:
        return {name: param.plain() for name, param in self.params.items()} | {
            name: {"value": value} for name, value in self.fixed.items()
        }


@dataclass
class TuneResult:
    out: Path
    study: str
    finished: int
    complete: int
    pruned: int
    failed: int
    ran: int  # trials that finished in this process
    best: dict[str, Any] | None  # number, value, best_epoch, params
    best_yaml: Path | None
    table: str
    plots: list[Path]
    notes: list[str]


def build_tune_configs(yaml_path: Path | None, args: dict[str, Any]) -> tuple[TuneConfig, TrainConfig]:
    """TuneConfig and the base TrainConfig from flags and a YAML file.

    The file holds `tune:` and/or `train:` sections (e.g. a TUNE dir's tune.yaml, or a run's config.yaml whose
    settings become the base), or is flat: then it is a train config (e.g. a hand-written base.yaml, a best.yaml).
    """
    tune_fields = {f.name for f in dataclasses.fields(TuneConfig)}
    tune_values: dict[str, Any] = {}
    train_values: dict[str, Any] = {}
    if yaml_path is not None:
        loaded = read_yaml_mapping(Path(yaml_path))
        if isinstance(loaded.get("tune"), dict) or isinstance(loaded.get("train"), dict):
            tune_values, train_values = dict(loaded.get("tune") or {}), dict(loaded.get("train") or {})
        else:
            train_values = dict(loaded)
        _check_fields(tune_values, TuneConfig, yaml_path)
        _check_fields(train_values, TrainConfig, yaml_path)
    tune_flags = {k: v for k, v in args.items() if k in tune_fields}
    train_flags = {k: v for k, v in args.items() if k not in tune_fields}
    data = tune_flags.get("data") or tune_values.get("data") or train_values.get("data")
    config = build_config(TuneConfig, None, **(tune_values | tune_flags | {"data": data}))
    base = build_config(
        TrainConfig, None, **(train_values | train_flags | {"data": config.data, "out": config.out / TRIALS_DIR})
    )
    return config, base


def tune(config: TuneConfig, base: TrainConfig, pruner: optuna.pruners.BasePruner | None = None) -> TuneResult:
    """Run trials until `config.trials` have finished in the study (or the timeout), then write TUNE's outputs.

    `pruner` replaces the median pruner (tests use one that must prune).
    """
    out = Path(config.out)
    if config.trials < 1:
        raise MelanomaError(f"--trials must be at least 1, not {config.trials}")
    if config.heartbeat < 1:
        raise MelanomaError(f"--heartbeat must be at least 1 second, not {config.heartbeat}")
    timeout = parse_duration(config.timeout)
    final_base, base = base, _trial_base(base)  # best.yaml keeps the user's devices for the final fit
    manifest = read_manifest(config.data)
    _select_rows(manifest, base)  # unsplit data, no val split, one class only: one line before any trial
    space = SearchSpace.load(config.search_space, base)
    name = config.study or out.resolve().name
    url = config.storage or f"sqlite:///{(out / STUDY_DB).resolve()}"
    _check_tune_dir(out, config, name)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with _quiet_optuna():
        out.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(
            storage=_storage(url, config.heartbeat),
            study_name=name,
            direction="maximize",
            load_if_exists=True,
        )
        where = f"{out}" if config.storage is None else f"{_masked(url)} (study {name})"
        _check_study(study, _identity(manifest, base, space), where)
        write_yaml(out / TUNE_RECORD, {"tune": _record(config, name), "train": final_base})
        # A fresh seed per resumption: the same seed would propose the first trials' parameters again.
        seed = config.sampler_seed + len(study.trials) if config.storage is None else None
        study.sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=config.storage is not None)
        study.pruner = pruner or (
            optuna.pruners.MedianPruner(
                n_startup_trials=config.startup_trials, n_warmup_steps=config.prune_warmup_epochs
            )
            if config.pruning
            else optuna.pruners.NopPruner()
        )
        progress = _Progress(out, final_base, space, config.trials)
        if progress.finished(study) >= config.trials:
            print(
                f"{out}: {progress.finished(study)} trials finished already (--trials {config.trials}); nothing to do"
            )
        else:
            study.optimize(
                lambda trial: _objective(trial, space, base, out),
                timeout=timeout,
                callbacks=[progress, optuna.study.MaxTrialsCallback(config.trials, states=FINISHED)],
                gc_after_trial=True,
            )
        best_yaml = _write_best_yaml(study, out, final_base, space)
        _write_trials_csv(study, out, space)
        plots, notes = _write_plots(study, out)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    if best_yaml is None:
        notes.append(f"no trial has completed yet, so there is no {BEST_YAML}")
    return TuneResult(
        out=out,
        study=name,
        finished=sum(s in FINISHED for s in states),
        complete=states.count(TrialState.COMPLETE),
        pruned=states.count(TrialState.PRUNED),
        failed=states.count(TrialState.FAIL),
        ran=progress.ran,
        best=_best_summary(study),
        best_yaml=best_yaml,
        table=summary_table(study, space),
        plots=plots,
        notes=notes,
    )


def trial_config(base: TrainConfig, params: dict[str, Any], out: Path) -> TrainConfig:
    """The TrainConfig of one trial: the base settings with the trial's parameters."""
    changes = {k: v for k, v in params.items() if k not in METADATA_PARAMS}
    if any(name in params for name in METADATA_PARAMS):
        depth = params.get("metadata_depth", len(base.metadata_hidden))
        width = params.get("metadata_width", base.metadata_hidden[0] if base.metadata_hidden else 32)
        changes["metadata_hidden"] = [int(width)] * int(depth)
    return replace(base, **changes, out=out, final=False)


def parse_duration(text: str | None) -> float | None:
    """'8h', '90m', '45s', '2d' or plain seconds -> seconds."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text).lower())
    if match is None or float(match[1]) <= 0:
        raise MelanomaError(f"--timeout {text!r}: expected a duration such as 8h, 90m, 45s or 3600 (seconds)")
    return float(match[1]) * DURATION_UNITS[match[2] or "s"]


def summary_table(study: optuna.Study, space: SearchSpace, limit: int = 10) -> str:
    """The best `limit` finished trials, best first, with their parameters."""
    frame = _trials_frame(study, space)
    if frame.empty:
        return "(no trials yet)"
    frame = frame[frame["state"].isin([s.name for s in FINISHED])]
    frame = frame.sort_values(["state", "value"], ascending=[True, False]).head(limit)  # COMPLETE before PRUNED
    frame = frame.drop(columns=["run_dir", "retry_of"]).rename(columns={"duration_s": "seconds", "value": MONITOR})
    return frame.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def _check_name(name: str, base: TrainConfig, where: str) -> None:
    if name == "epochs":
        raise MelanomaError(
            f"{where}: epochs is not searched: each trial trains for the base config's epochs (--epochs) and its "
            "best validation epoch becomes best.yaml's epochs"
        )
    if name not in INT_PARAMS + FLOAT_PARAMS:
        raise MelanomaError(f"{where}: unknown parameter {name!r} (searchable: {', '.join(INT_PARAMS + FLOAT_PARAMS)})")
    if name in METADATA_PARAMS and not base.use_metadata:
        raise MelanomaError(f"{where}: {name} is searched, but the base config trains without metadata")


def _number(name: str, key: str, value: Any, where: str) -> float:
    """A YAML number; '1e-4' (a string to YAML 1.1) counts as one."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MelanomaError(f"{where}: {name}: {key} {value!r} is not a number") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise MelanomaError(f"{where}: {name}: {key} {value!r} is not a number")
    if name in INT_PARAMS:
        if not number.is_integer():
            raise MelanomaError(f"{where}: {name}: {key} {value!r} is not a whole number")
        return int(number)
    return number


def _parse_value(name: str, value: Any, where: str, key: str = "value") -> float:
    number = _number(name, key, value, where)
    if name in POSITIVE and number <= 0:
        raise MelanomaError(f"{where}: {name}: {key} {value!r} must be above 0")
    if number < 0:
        raise MelanomaError(f"{where}: {name}: {key} {value!r} must not be negative")
    if name in BELOW_ONE and number >= 1:
        raise MelanomaError(f"{where}: {name}: {key} {value!r} must be below 1")
    return number


def _parse_param(name: str, spec: dict[str, Any], where: str) -> Param:
    keys = set(spec)
    if "choices" in keys:
        if keys != {"choices"}:
            raise MelanomaError(f"{where}: {name}: give either choices or low/high, not both")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise MelanomaError(f"{where}: {name}: choices must be a non-empty list")
        values = tuple(_parse_value(name, c, where, "choice") for c in choices)
        if len(set(values)) != len(values):
            raise MelanomaError(f"{where}: {name}: choices repeat a value")
        return Param(name, choices=values)
    unknown = sorted(keys - RANGE_KEYS)
    if unknown:
        raise MelanomaError(
            f"{where}: {name}: unknown key(s) {', '.join(unknown)} (a range has low, high, log, step; or choices)"
        )
    if "low" not in spec or "high" not in spec:
        raise MelanomaError(f"{where}: {name}: a range needs low and high (or give choices, or one value)")
    low, high = _parse_value(name, spec["low"], where, "low"), _parse_value(name, spec["high"], where, "high")
    if low >= high:
        raise MelanomaError(f"{where}: {name}: low {low} must be below high {high} (to fix a value, write {name}: V)")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise MelanomaError(f"{where}: {name}: log must be true or false, not {log!r}")
    if log and low <= 0:
        raise MelanomaError(f"{where}: {name}: a log scale needs low above 0")
    step = None if spec.get("step") is None else _number(name, "step", spec["step"], where)
    if step is not None and (step <= 0 or log):
        raise MelanomaError(f"{where}: {name}: step must be above 0, and cannot be combined with log")
    return Param(name, low=low, high=high, log=log, step=step)


def _check_fields(values: dict[str, Any], cls: type, path: Path) -> None:
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise MelanomaError(f"{path}: unknown field(s) {', '.join(unknown)} for {cls.__name__}")


def _trial_base(base: TrainConfig) -> TrainConfig:
    """One device per trial: parallel trials come from several workers sharing a study, not from DDP."""
    devices = "1" if str(base.devices) == "auto" else str(base.devices)
    count = int(devices) if devices.isdigit() else len([d for d in devices.strip("[]").split(",") if d.strip()])
    if count != 1 or base.num_nodes != 1:
        raise MelanomaError(
            f"tune trains each trial on one device, not --devices {base.devices} --num-nodes {base.num_nodes}; "
            "to use several GPUs, start one `melanoma tune` per GPU (CUDA_VISIBLE_DEVICES=i) with the same --storage"
        )
    return replace(base, devices=devices, final=False)


def _dataset_fingerprint(manifest: pd.DataFrame) -> str:
    """Images, targets and split of the dataset, independent of where it is stored."""
    columns = manifest[["image_name", "target", "split"]].astype(str).sort_values("image_name")
    return hashlib.sha256(columns.to_csv(index=False).encode()).hexdigest()


def _identity(manifest: pd.DataFrame, base: TrainConfig, space: SearchSpace) -> dict[str, Any]:
    ignored = RESUMABLE_DIFFERENCES | {"data", "out", "final"}
    settings = {k: v for k, v in to_plain(base).items() if k not in ignored}
    identity = {"dataset": _dataset_fingerprint(manifest), "base": settings, "search_space": space.plain()}
    return json.loads(json.dumps(identity))  # as the storage gives it back


def _check_study(study: optuna.Study, identity: dict[str, Any], where: str) -> None:
    """Refuse to mix trials of another dataset, model, base settings or search space into one study."""
    stored = study.user_attrs.get(IDENTITY)
    if stored is None:
        if study.trials:
            raise MelanomaError(
                f"{where}: study {study.study_name!r} was not made by `melanoma tune`; use another --study"
            )
        study.set_user_attr(IDENTITY, identity)
        return
    if stored["dataset"] != identity["dataset"]:
        raise MelanomaError(
            f"{where}: holds a study for another dataset (other images, targets or split); use a new --out"
        )
    old, new = stored["base"], identity["base"]
    if old.get("model") != new["model"]:
        raise MelanomaError(
            f"{where}: holds a study for model {old.get('model')!r}, not {new['model']!r}; use a new --out"
        )
    for key in new:
        if old.get(key) != new[key]:
            raise MelanomaError(
                f"{where}: holds a study with other settings ({key}: {old.get(key)!r} there, {new[key]!r} now); "
                "use a new --out"
            )
    for key in sorted(set(stored["search_space"]) | set(identity["search_space"])):
        there, now = stored["search_space"].get(key), identity["search_space"].get(key)
        if there != now:
            raise MelanomaError(
                f"{where}: holds a study with another search space ({key}: {there} there, {now} now); use a new --out"
            )


def _check_tune_dir(out: Path, config: TuneConfig, name: str) -> None:
    record = out / TUNE_RECORD
    if not record.exists():
        if out.exists() and any(out.iterdir()) and not (out / STUDY_DB).exists():
            raise MelanomaError(f"{out}: folder is not empty and is not a tune directory; use a new --out")
        return
    old = read_yaml_mapping(record).get("tune") or {}
    new = _record(config, name)
    if old.get("storage") != new["storage"] or old.get("study") != new["study"]:
        there = old.get("storage") or f"{out / STUDY_DB}"
        raise MelanomaError(
            f"{out}: its study is {old.get('study')!r} in {there}; pass the same --storage and --study, "
            "or use a new --out"
        )


def _record(config: TuneConfig, name: str) -> dict[str, Any]:
    """TuneConfig as saved in TUNE/tune.yaml: the study name resolved, no database password."""
    return to_plain(replace(config, study=name, storage=config.storage and _masked(config.storage)))


def _masked(url: str) -> str:
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a database URL: shown as given, and refused when opened
        return url


def _storage(url: str, heartbeat: int) -> optuna.storages.RDBStorage:
    """The study's database, with heartbeats so that a killed worker's trial is failed and queued again."""
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}  # several local workers
    parameters = inspect.signature(optuna.storages.RDBStorage).parameters
    retry_argument = (
        "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in parameters else "failed_trial_callback"
    )
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat,
            grace_period=2 * heartbeat,
            **{retry_argument: _retry},
        )
    except Exception as exc:  # a bad URL, a missing driver, an unreachable server: one line, no traceback
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise MelanomaError(f"--storage {_masked(url)}: cannot open ({type(exc).__name__}: {message})") from None


def _retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a trial left unfinished by a killed or interrupted worker: same parameters and run dir (resumes)."""
    retries = int(trial.user_attrs.get(RETRIES, 0))
    if retries >= MAX_RETRIES:
        return
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=trial.user_attrs
            | {RETRY_OF: trial.user_attrs.get(RETRY_OF, trial.number), RETRIES: retries + 1},
            intermediate_values=trial.intermediate_values,
        )
    )


def _objective(trial: optuna.Trial, space: SearchSpace, base: TrainConfig, out: Path) -> float:
    params = space.suggest(trial)
    run_dir = trial.user_attrs.get(RUN_DIR) or f"{TRIALS_DIR}/trial-{trial.number:04d}"
    trial.set_user_attr(RUN_DIR, run_dir)
    retry_of = trial.user_attrs.get(RETRY_OF)
    if retry_of is not None:
        print(f"trial {trial.number}: retrying trial {retry_of} (its worker stopped) in {out / run_dir}")
    config = trial_config(base, params, out / run_dir)
    try:
        run = train(config, callbacks=[PyTorchLightningPruningCallback(trial, monitor=MONITOR)])
    except KeyboardInterrupt:
        _retry(trial.study, next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number))
        raise
    result = RunConfig.load(run).result
    trial.set_user_attr(BEST_EPOCH, result.get("best_epoch"))
    value = result.get("best_val_auc")
    return math.nan if value is None else float(value)  # NaN: Optuna records the trial as failed


class _Progress:
    """After each trial of this worker: one progress line, trials.csv and best.yaml updated."""

    def __init__(self, out: Path, base: TrainConfig, space: SearchSpace, trials: int) -> None:
        self.out, self.base, self.space, self.trials = out, base, space, trials
        self.ran = 0
        self.fails_in_a_row = 0

    @staticmethod
    def finished(study: optuna.Study) -> int:
        return len(study.get_trials(deepcopy=False, states=FINISHED))

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        duration = trial.duration.total_seconds() if trial.duration else 0.0
        if trial.state == TrialState.COMPLETE:
            self.ran += 1
            self.fails_in_a_row = 0
            what = f"val AUC {trial.value:.4f} at epoch {trial.user_attrs.get(BEST_EPOCH)}"
        elif trial.state == TrialState.PRUNED:
            self.ran += 1
            self.fails_in_a_row = 0
            last = max(trial.intermediate_values, default=None)
            reported = f", val AUC {trial.intermediate_values[last]:.4f}" if last is not None else ""
            what = f"pruned after epoch {0 if last is None else last + 1}{reported}"
        else:
            self.fails_in_a_row += 1
            what = "failed (no validation AUC)"
        best = _best_summary(study)
        best_text = f"best {best['value']:.4f} (trial {best['number']})" if best else "no complete trial yet"
        print(
            f"trial {trial.number:>4} {what} in {duration:.0f}s; {best_text}; "
            f"{self.finished(study)}/{self.trials} finished",
            flush=True,
        )
        _write_trials_csv(study, self.out, self.space)
        _write_best_yaml(study, self.out, self.base, self.space)
        if self.fails_in_a_row >= MAX_FAILS_IN_A_ROW:
            print(f"stopping: {self.fails_in_a_row} trials in a row failed")
            study.stop()


def _best_summary(study: optuna.Study) -> dict[str, Any] | None:
    try:
        best = study.best_trial
    except ValueError:  # no complete trial
        return None
    return {
        "number": best.number,
        "value": best.value,
        "best_epoch": best.user_attrs.get(BEST_EPOCH),
        "params": best.params,
        "run_dir": best.user_attrs.get(RUN_DIR),
    }


def _best_epoch(trial: FrozenTrial) -> int | None:
    """The trial's best validation epoch (1-based): recorded for complete trials, else from reported values."""
    if trial.user_attrs.get(BEST_EPOCH) is not None:
        return int(trial.user_attrs[BEST_EPOCH])
    values = trial.intermediate_values
    return max(values, key=lambda step: values[step]) + 1 if values else None


def _trials_frame(study: optuna.Study, space: SearchSpace) -> pd.DataFrame:
    rows = []
    for trial in study.get_trials(deepcopy=False):
        row = {
            "number": trial.number,
            "state": trial.state.name,
            "value": trial.value,
            "best_epoch": _best_epoch(trial),
            "duration_s": round(trial.duration.total_seconds(), 1) if trial.duration else None,
            "run_dir": trial.user_attrs.get(RUN_DIR),
            "retry_of": trial.user_attrs.get(RETRY_OF),
        }
        rows.append(row | {name: trial.params.get(name) for name in space.params})
    return pd.DataFrame(rows)


def _write_trials_csv(study: optuna.Study, out: Path, space: SearchSpace) -> None:
    atomic_write_text(out / TRIALS_CSV, _trials_frame(study, space).to_csv(index=False))


def _write_best_yaml(study: optuna.Study, out: Path, base: TrainConfig, space: SearchSpace) -> Path | None:
    """best.yaml: a complete train config for the final fit on train+val for the best trial's best epoch."""
    best = _best_summary(study)
    if best is None:
        return None
    config = trial_config(base, best["params"] | space.fixed, (out / FINAL_DIR).resolve())
    config = replace(config, data=Path(config.data).resolve(), final=True, epochs=best["best_epoch"] or config.epochs)
    header = (
        f"# melanoma tune: trial {best['number']} of study {study.study_name}, val AUC {best['value']:.4f} at epoch "
        f"{best['best_epoch']} (of {base.epochs}).\n"
        f"# Final fit on train+val: melanoma train DATA --config {out / BEST_YAML} --final --out RUN\n"
    )
    atomic_write_text(out / BEST_YAML, header + yaml.safe_dump(to_plain(config), sort_keys=False))
    return out / BEST_YAML


def _write_plots(study: optuna.Study, out: Path) -> tuple[list[Path], list[str]]:
    """Optimisation history and parameter importances as PNGs; importances need two complete trials."""
    import matplotlib

    matplotlib.use("Agg")
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if not complete:
        return [], ["no complete trial: no plots yet"]
    with matplotlib.rc_context():  # Optuna's plots switch to the ggplot style; other plots keep theirs
        return _plot(study, out, complete)


def _plot(study: optuna.Study, out: Path, complete: int) -> tuple[list[Path], list[str]]:
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    plots, notes = [], []
    _save_png(optuna_plots.plot_optimization_history(study, target_name="val AUC").figure, out / HISTORY_PNG)
    plots.append(out / HISTORY_PNG)
    if complete < 2:
        notes.append("parameter importances need at least 2 complete trials: skipped")
    else:
        try:
            axes = optuna_plots.plot_param_importances(study, target_name="val AUC")
        except (ValueError, RuntimeError) as exc:  # e.g. no parameter varies between the complete trials
            notes.append(f"parameter importances skipped: {exc}")
        else:
            _save_png(axes.figure, out / IMPORTANCES_PNG)
            plots.append(out / IMPORTANCES_PNG)
    plt.close("all")
    return plots, notes


def _save_png(figure: Any, path: Path) -> None:
    figure.set_size_inches(8, 5)
    figure.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        figure.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna marks heartbeats, the constant liar and its matplotlib plots experimental; they work as documented."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
        yield
