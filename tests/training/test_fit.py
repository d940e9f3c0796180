import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from melanoma.errors import MelanomaError
from melanoma.training.fit import train
from tests.conftest import kill_cli_when, run_cli, tiny_train_config


def test_train_writes_a_complete_run_directory(trained_run: Path) -> None:
    for name in [
        "model.safetensors",
        "config.yaml",
        "metrics.csv",
        "checkpoints/last.ckpt",
        "checkpoints/best.ckpt",
    ]:
        assert (trained_run / name).is_file(), name
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["train"]["epochs"] == 2 and config["preprocessing"]["image_size"] == 32
    assert len(config["metadata"]["sites"]) == 6
    assert config["result"]["best_epoch"] in (1, 2) and 0 <= config["result"]["best_val_auc"] <= 1
    assert {"torch", "lightning", "melanoma"} <= set(config["versions"])
    logged = pd.read_csv(trained_run / "metrics.csv")
    assert {"train_loss", "val_loss", "val_auc"} <= set(logged.columns)
    assert logged["val_auc"].notna().sum() == 2  # one validation AUC per epoch
    assert any(key.startswith("metadata_net.") for key in load_file(trained_run / "model.safetensors"))


def test_a_finished_run_is_not_retrained(trained_run: Path, tmp_path: Path, capsys) -> None:
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    config = yaml.safe_load((run / "config.yaml").read_text())["train"]
    before = (run / "model.safetensors").stat().st_mtime_ns
    train(tiny_train_config(Path(config["data"]), run))
    assert "nothing to do" in capsys.readouterr().out
    assert (run / "model.safetensors").stat().st_mtime_ns == before


def test_a_run_with_other_settings_is_refused(trained_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    data = Path(yaml.safe_load((run / "config.yaml").read_text())["train"]["data"])
    with pytest.raises(MelanomaError, match=r"different settings \(lr: 0.001 there, 0.5 now\)"):
        train(tiny_train_config(data, run, lr=0.5))


def test_a_foreign_folder_is_refused(split_data: Path, tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(MelanomaError, match="not a run directory"):
        train(tiny_train_config(split_data, tmp_path / "notes"))


def test_final_trains_on_train_and_val_without_validation(split_data: Path, tmp_path: Path) -> None:
    run = train(tiny_train_config(split_data, tmp_path / "run", final=True, epochs=1))
    config = yaml.safe_load((run / "config.yaml").read_text())
    manifest = pd.read_csv(split_data / "manifest.csv")
    assert config["result"]["train_images"] == int(manifest["split"].isin(["train", "val"]).sum())
    assert config["result"]["weights_from"] == "last.ckpt" and config["result"]["best_val_auc"] is None


def test_no_metadata_trains_the_image_network_alone(split_data: Path, tmp_path: Path) -> None:
    run = train(tiny_train_config(split_data, tmp_path / "run", use_metadata=False, epochs=1))
    assert yaml.safe_load((run / "config.yaml").read_text())["metadata"] is None
    assert not any(key.startswith("metadata_net.") for key in load_file(run / "model.safetensors"))


def test_unsplit_data_is_an_error(raw_data, tmp_path: Path) -> None:
    from melanoma.config import PrepareConfig
    from melanoma.data.prepare import prepare

    prepare(PrepareConfig(images=raw_data[0], metadata=raw_data[1], out=tmp_path / "data", size=32, workers=1))
    with pytest.raises(MelanomaError, match="run `melanoma split"):
        train(tiny_train_config(tmp_path / "data", tmp_path / "run"))


def test_a_killed_training_resumes_from_its_last_checkpoint(split_data: Path, tmp_path: Path) -> None:
    """SIGKILL a real `melanoma train` after its first epoch; the same command then finishes the run.

    The first epoch needs ~1 s, the three epochs ~3 s: the kill lands mid-run on any machine that can run the suite.
    """
    run = tmp_path / "run"
    command = ["train", str(split_data), "--out", str(run), "--epochs", "3", "--image-size", "32",
               "--batch-size", "8", "--num-workers", "0", "--accelerator", "cpu"]  # fmt: skip
    last, log = run / "checkpoints" / "last.ckpt", run / "logs" / "version_0" / "metrics.csv"

    def first_epoch_done() -> bool:
        return last.exists() and log.exists() and log.read_text().count("\n0,") >= 2

    kill_cli_when(first_epoch_done, *command, timeout=120)
    assert last.exists() and not (run / "model.safetensors").exists()

    finished = run_cli(*command)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "Resuming" in finished.stdout
    logged = pd.read_csv(run / "metrics.csv")
    assert sorted(logged["epoch"].dropna().unique().astype(int)) == [0, 1, 2]
    assert (run / "model.safetensors").exists()


def test_the_same_seed_and_data_give_bit_identical_weights_on_cpu(split_data: Path, tmp_path: Path) -> None:
    first = train(tiny_train_config(split_data, tmp_path / "a", epochs=1))
    second = train(tiny_train_config(split_data, tmp_path / "b", epochs=1))
    third = train(tiny_train_config(split_data, tmp_path / "c", epochs=1, seed=1))
    a, b, c = (load_file(run / "model.safetensors") for run in (first, second, third))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
