"""`melanoma tune`: trials are runs, the study resumes, best.yaml trains, pruning and bad input.

The trials train for 1-2 epochs on 32 px synthetic images; the values they reach mean nothing, only the bookkeeping.
"""

import shutil
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from melanoma.cli import main
from melanoma.config import TrainConfig, TuneConfig, build_config
from melanoma.errors import MelanomaError
from melanoma.training import tune as tune_module
from melanoma.training.tune import SearchSpace, build_tune_configs, trial_config, tune
from tests.conftest import kill_cli_when, run_cli, tiny_train_config


def tiny_tune(data: Path, out: Path, trials: int, **train_overrides) -> tuple[TuneConfig, TrainConfig]:
    return TuneConfig(data=data, out=out, trials=trials), tiny_train_config(data, out / "trials", **train_overrides)


def load_study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name=out.resolve().name, storage=f"sqlite:///{out / 'study.db'}")


class PruneTrialsFrom(optuna.pruners.BasePruner):
    """Prunes every trial numbered `first` or later at its first report: a pruning that must happen."""

    def __init__(self, first: int) -> None:
        self.first = first

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number >= self.first


@pytest.fixture(scope="module")
def two_trials(_split_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TUNE dir after a finished 2-trial tune (read-only: copy it before resuming it)."""
    out = tmp_path_factory.mktemp("tune") / "tune"
    result = tune(*tiny_tune(_split_dataset, out, trials=2))
    assert result.ran == 2 and result.complete == 2
    return out


def copy_tune(tune_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tune_dir, tmp_path / tune_dir.name))  # same name: the study name


def test_a_tune_writes_trial_runs_a_table_best_yaml_and_plots(two_trials: Path) -> None:
    study = load_study(two_trials)
    trials = pd.read_csv(two_trials / "trials.csv")
    assert list(trials["number"]) == [0, 1] and set(trials["state"]) == {"COMPLETE"}
    assert {"value", "best_epoch", "duration_s", "lr", "metadata_depth", "fused_width", "oversample"} <= set(trials)
    for run_dir in trials["run_dir"]:
        run = yaml.safe_load((two_trials / run_dir / "config.yaml").read_text())
        assert (two_trials / run_dir / "model.safetensors").exists() and run["train"]["final"] is False
        assert run["result"]["best_val_auc"] in set(trials["value"])

    best = study.best_trial
    config = build_config(TrainConfig, two_trials / "best.yaml")
    assert config.final and config.epochs == best.user_attrs["best_epoch"] in (1, 2)
    assert config.lr == best.params["lr"] and config.fused_width == best.params["fused_width"]
    assert config.metadata_hidden == [best.params["metadata_width"]] * best.params["metadata_depth"]
    assert config.image_size == 32 and config.batch_size == 16  # the base settings
    for png in ["optimization_history.png", "param_importances.png"]:
        assert (two_trials / png).read_bytes().startswith(b"\x89PNG"), png


def test_asking_for_more_trials_runs_only_the_missing_ones(two_trials: Path, tmp_path: Path, capsys) -> None:
    out = copy_tune(two_trials, tmp_path)
    before = {n: load_study(out).trials[n].value for n in (0, 1)}
    weights = (out / "trials" / "trial-0000" / "model.safetensors").stat().st_mtime_ns
    config, base = tiny_tune(Path(yaml.safe_load((out / "tune.yaml").read_text())["tune"]["data"]), out, trials=3)

    result = tune(config, base)
    assert result.ran == 1 and result.finished == 3
    study = load_study(out)
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert {n: study.trials[n].value for n in (0, 1)} == before
    assert (out / "trials" / "trial-0002" / "model.safetensors").exists()
    assert (out / "trials" / "trial-0000" / "model.safetensors").stat().st_mtime_ns == weights
    assert "trial    2 val AUC" in capsys.readouterr().out

    again = tune(config, base)
    assert again.ran == 0 and len(load_study(out).trials) == 3
    assert "nothing to do" in capsys.readouterr().out


def test_the_cli_resumes_from_tune_yaml_and_prints_the_summary(two_trials: Path, tmp_path: Path, capsys) -> None:
    out = copy_tune(two_trials, tmp_path)
    code = main(["tune", "--config", str(out / "tune.yaml"), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "2 trials finished already (--trials 2); nothing to do" in printed
    assert "Study tune: 2 complete, 0 pruned, 0 failed trials (0 finished in this run)" in printed
    assert "val_auc" in printed and "Best: trial" in printed
    assert f"--config {out / 'best.yaml'} --final --out RUN" in printed
    assert len(load_study(out).trials) == 2


def test_best_yaml_trains_the_final_model_on_train_and_val(two_trials: Path, tmp_path: Path, capsys) -> None:
    best = yaml.safe_load((two_trials / "best.yaml").read_text())
    run = tmp_path / "final"
    code = main(["train", best["data"], "--config", str(two_trials / "best.yaml"), "--final", "--out", str(run)])
    assert code == 0, capsys.readouterr().err
    config = yaml.safe_load((run / "config.yaml").read_text())
    manifest = pd.read_csv(Path(best["data"]) / "manifest.csv")
    assert config["train"]["final"] and config["train"]["epochs"] == best["epochs"]
    assert config["train"]["lr"] == best["lr"] and config["result"]["weights_from"] == "last.ckpt"
    assert config["result"]["train_images"] == int(manifest["split"].isin(["train", "val"]).sum())


def test_a_pruned_trial_is_recorded_as_pruned(two_trials: Path, tmp_path: Path, capsys) -> None:
    out = copy_tune(two_trials, tmp_path)
    data = Path(yaml.safe_load((out / "tune.yaml").read_text())["tune"]["data"])
    result = tune(*tiny_tune(data, out, trials=3), pruner=PruneTrialsFrom(2))
    assert result.ran == 1 and result.pruned == 1 and result.finished == 3  # a pruned trial counts as finished
    trial = load_study(out).trials[2]
    assert trial.state == optuna.trial.TrialState.PRUNED and list(trial.intermediate_values) == [0]  # epoch 1 of 2
    row = pd.read_csv(out / "trials.csv").set_index("number").loc[2]
    assert row["state"] == "PRUNED" and row["best_epoch"] == 1 and row["value"] == trial.intermediate_values[0]
    assert not (out / "trials" / "trial-0002" / "model.safetensors").exists()
    assert "trial    2 pruned after epoch 1" in capsys.readouterr().out


def test_an_interrupted_trial_is_retried_with_its_parameters_and_run_dir(
    split_data: Path, tmp_path: Path, monkeypatch
) -> None:
    out = tmp_path / "tune"

    def interrupted(config: TrainConfig, callbacks=()) -> Path:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(tune_module, "train", interrupted)
        with pytest.raises(KeyboardInterrupt):
            tune(*tiny_tune(split_data, out, trials=1, epochs=1))
    result = tune(*tiny_tune(split_data, out, trials=1, epochs=1))

    assert result.ran == 1 and result.failed == 1
    failed, retried = load_study(out).trials
    assert failed.state == optuna.trial.TrialState.FAIL and retried.state == optuna.trial.TrialState.COMPLETE
    assert retried.params == failed.params and retried.user_attrs["retry_of"] == 0
    assert retried.user_attrs["run_dir"] == failed.user_attrs["run_dir"] == "trials/trial-0000"
    assert (out / "trials" / "trial-0000" / "model.safetensors").exists()


@pytest.mark.slow  # two processes and three trials: ~25 s on an idle 2-core machine
def test_a_killed_tune_resumes_without_repeating_finished_trials(split_data: Path, tmp_path: Path) -> None:
    """SIGKILL a real `melanoma tune` after the first epoch of its second trial; the same command finishes the study.

    The killed trial stays RUNNING until its heartbeat (1 s here) is 2 s old; then it is failed and retried with its
    parameters, resuming its run dir from the epoch checkpoint. An epoch takes ~1 s: the kill lands mid-trial.
    """
    out = tmp_path / "tune"
    command = ["tune", str(split_data), "--out", str(out), "--trials", "2", "--heartbeat", "1", "--epochs", "2",
               "--image-size", "32", "--batch-size", "16", "--num-workers", "0", "--accelerator", "cpu"]  # fmt: skip
    second = out / "trials" / "trial-0001" / "checkpoints" / "last.ckpt"
    kill_cli_when(second.exists, *command, timeout=180)
    assert second.exists() and not (out / "trials" / "trial-0001" / "model.safetensors").exists()
    first_weights = (out / "trials" / "trial-0000" / "model.safetensors").stat().st_mtime_ns
    time.sleep(2.5)  # past the killed trial's grace period

    finished = run_cli(*command, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "retrying trial 1" in finished.stdout and "Resuming" in finished.stdout
    states = {t.number: t.state.name for t in load_study(out).trials}
    assert states == {0: "COMPLETE", 1: "FAIL", 2: "COMPLETE"}  # 2 finished trials, the first not repeated
    study = load_study(out)
    assert study.trials[2].params == study.trials[1].params and study.trials[2].user_attrs["retry_of"] == 1
    assert (out / "trials" / "trial-0000" / "model.safetensors").stat().st_mtime_ns == first_weights
    logged = pd.read_csv(out / "trials" / "trial-0001" / "metrics.csv")
    assert sorted(logged["epoch"].dropna().unique().astype(int)) == [0, 1]


def test_search_space_yaml_overrides_fixes_and_removes_defaults(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(
        "lr: {low: 1e-4, high: 1e-2, log: true}\n"
        "dropout: {low: 0.0, high: 0.3}\n"
        "metadata_depth: {choices: [1, 2]}\n"
        "fused_width: 32\n"
        "oversample: null\n"
    )
    base = tiny_train_config(tmp_path, tmp_path / "trials")
    space = SearchSpace.load(path, base)
    assert space.params["lr"].low == 1e-4 and space.params["lr"].log
    assert space.params["metadata_depth"].choices == (1, 2)
    assert space.fixed == {"fused_width": 32} and "oversample" not in space.params
    assert "backbone_lr" not in space.params  # only searched for pretrained backbones
    fixed = {"lr": 2e-3, "dropout": 0.1, "metadata_depth": 2, "metadata_width": 24, "weight_decay": 1e-5}
    config = trial_config(base, space.suggest(optuna.trial.FixedTrial(fixed)), tmp_path / "t")
    assert (config.lr, config.dropout, config.metadata_hidden, config.fused_width) == (2e-3, 0.1, [24, 24], 32)
    assert config.oversample == base.oversample and config.out == tmp_path / "t"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("learning_rate: {low: 1e-4, high: 1e-2}", "unknown parameter 'learning_rate'"),
        ("lr: {low: 1e-2, high: 1e-4, log: true}", "lr: low 0.01 must be below high 0.0001"),
        ("weight_decay: {low: 0, high: 1e-2, log: true}", "weight_decay: a log scale needs low above 0"),
        ("dropout: {low: 0.0, high: 0.3, scale: log}", "dropout: unknown key(s) scale"),
        ("dropout: {low: 0.0, high: 1.5}", "dropout: high 1.5 must be below 1"),
        ("metadata_depth: {choices: []}", "metadata_depth: choices must be a non-empty list"),
        ("metadata_width: {low: 8, high: 64.5}", "metadata_width: high 64.5 is not a whole number"),
        ("lr: {low: fast, high: 1e-2}", "lr: low 'fast' is not a number"),
        ("epochs: {low: 3, high: 12}", "epochs is not searched"),
        ("- lr", "expected a mapping"),
    ],
)
def test_a_bad_search_space_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(MelanomaError) as caught:
        SearchSpace.load(path, tiny_train_config(tmp_path, tmp_path / "trials"))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_cli_refuses_a_bad_search_space_before_creating_anything(split_data: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "space.yaml").write_text("lr: {low: 1e-2, high: 1e-4}\n")
    out = tmp_path / "tune"
    code = main(["tune", str(split_data), "--out", str(out), "--search-space", str(tmp_path / "space.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "must be below high" in err
    assert not out.exists()


def test_unsplit_data_and_data_without_val_are_refused(split_data: Path, tmp_path: Path) -> None:
    manifest = pd.read_csv(split_data / "manifest.csv", keep_default_na=False)
    manifest.assign(split=manifest["split"].replace("val", "train")).to_csv(split_data / "manifest.csv", index=False)
    with pytest.raises(MelanomaError, match="no val split"):
        tune(*tiny_tune(split_data, tmp_path / "a", trials=1))
    manifest.assign(split="").to_csv(split_data / "manifest.csv", index=False)
    with pytest.raises(MelanomaError, match="run `melanoma split"):
        tune(*tiny_tune(split_data, tmp_path / "b", trials=1))


def test_a_tune_dir_of_another_dataset_model_or_storage_is_refused(
    two_trials: Path, split_data: Path, tmp_path: Path
) -> None:
    out = copy_tune(two_trials, tmp_path)
    data = Path(yaml.safe_load((out / "tune.yaml").read_text())["tune"]["data"])
    with pytest.raises(MelanomaError, match="for model 'basic-cnn', not 'resnet18'"):
        tune(*tiny_tune(data, out, trials=3, model="resnet18"))
    with pytest.raises(MelanomaError, match=r"other settings \(epochs: 2 there, 5 now\)"):
        tune(*tiny_tune(data, out, trials=3, epochs=5))
    manifest = pd.read_csv(split_data / "manifest.csv", keep_default_na=False)
    manifest.loc[manifest["split"] == "val", "split"] = "test"
    manifest.loc[manifest.index[manifest["split"] == "test"][:3], "split"] = "val"
    manifest.to_csv(split_data / "manifest.csv", index=False)
    with pytest.raises(MelanomaError, match="another dataset"):
        tune(*tiny_tune(split_data, out, trials=3))
    _, base = tiny_tune(data, out, trials=3)
    with pytest.raises(MelanomaError, match="pass the same --storage"):
        tune(TuneConfig(data=data, out=out, trials=3, storage=f"sqlite:///{tmp_path / 'other.db'}"), base)
    assert len(load_study(out).trials) == 2  # nothing ran


def test_a_foreign_folder_several_devices_and_a_bad_storage_are_refused(split_data: Path, tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(MelanomaError, match="not a tune directory"):
        tune(*tiny_tune(split_data, tmp_path / "notes", trials=1))
    with pytest.raises(MelanomaError, match="one device"):
        tune(*tiny_tune(split_data, tmp_path / "tune", trials=1, devices="2"))
    _, base = tiny_tune(split_data, tmp_path / "tune", trials=1)
    with pytest.raises(MelanomaError, match="--storage nonsense://x: cannot open"):
        tune(TuneConfig(data=split_data, out=tmp_path / "tune", trials=1, storage="nonsense://x"), base)


def test_configs_come_from_flags_and_a_yaml_with_tune_and_train_sections(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text("tune: {trials: 7, timeout: 2h}\ntrain: {epochs: 4, image_size: 64}\n")
    config, base = build_tune_configs(path, {"data": tmp_path, "out": tmp_path / "t", "epochs": 5})
    assert (config.trials, config.timeout, base.epochs, base.image_size) == (7, "2h", 5, 64)
    assert tune_module.parse_duration(config.timeout) == 7200 and tune_module.parse_duration("90m") == 5400
    (tmp_path / "flat.yaml").write_text("epochs: 3\nbatch_size: 8\n")  # a flat file is a base train config
    config, base = build_tune_configs(tmp_path / "flat.yaml", {"data": tmp_path, "out": tmp_path / "t"})
    assert (config.trials, base.epochs, base.batch_size) == (50, 3, 8)
    with pytest.raises(MelanomaError, match="unknown field"):
        build_tune_configs(tmp_path / "flat.yaml", {"data": tmp_path, "out": tmp_path / "t", "bogus": 1})
    with pytest.raises(MelanomaError, match="--timeout"):
        tune_module.parse_duration("soon")
