"""The command line: each command runs from flags, and bad input is one line on stderr with exit code 2."""

from pathlib import Path

import pandas as pd
import pytest
import yaml

from melanoma.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_whole_path_from_raw_images_to_predictions(raw_data, tmp_path: Path, capsys) -> None:
    images, metadata = raw_data
    data, run = tmp_path / "data", tmp_path / "run"
    code, out, _ = run_cli(
        capsys,
        "prepare",
        "--images",
        images,
        "--metadata",
        metadata,
        "--out",
        data,
        "--size",
        40,
        "--workers",
        2,
    )
    assert code == 0 and "Prepared" in out and "images/s" in out
    code, out, _ = run_cli(capsys, "split", data, "--test-size", 0.25, "--val-size", 0.25, "--seed", 1)
    assert code == 0 and {"train", "val", "test", "patients", "melanomas"} <= set(out.split())
    code, out, _ = run_cli(
        capsys,
        "train",
        data,
        "--out",
        run,
        "--epochs",
        1,
        "--image-size",
        32,
        "--batch-size",
        8,
        "--num-workers",
        0,
        "--accelerator",
        "cpu",
    )
    assert code == 0 and (run / "model.safetensors").exists()
    code, out, _ = run_cli(capsys, "evaluate", run, "--data", data, "--split", "test")
    assert code == 0 and out.startswith("AUC ")
    code, out, _ = run_cli(capsys, "predict", run, "--images", images, "--out", tmp_path / "p.csv")
    assert code == 0 and len(pd.read_csv(tmp_path / "p.csv")) == len(pd.read_csv(metadata))


def test_a_timm_backbone_trains_evaluates_and_predicts_through_the_same_cli(
    raw_data, split_data: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    flags = ["--epochs", 1, "--image-size", 32, "--batch-size", 8, "--num-workers", 0, "--backbone-lr", 1e-4]
    code, _, err = run_cli(capsys, "train", split_data, "--model", "test_efficientnet", "--out", run, *flags)
    assert code == 0, err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["backbone_lr"] == 1e-4 and saved["preprocessing"]["interpolation"] == "bicubic"
    code, out, _ = run_cli(capsys, "evaluate", run, "--data", split_data)
    assert code == 0 and out.startswith("AUC ")
    code, _, _ = run_cli(capsys, "predict", run, "--images", raw_data[0], "--out", tmp_path / "p.csv")
    assert code == 0 and pd.read_csv(tmp_path / "p.csv")["target"].between(0, 1).all()


def test_train_reads_a_config_file_and_flags_override_it(raw_data, split_data: Path, tmp_path: Path, capsys) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(
        f"data: {split_data}\nout: {tmp_path / 'run'}\nepochs: 5\nimage_size: 32\nnum_workers: 0\nno_such_setting: 1\n"
    )
    code, _, err = run_cli(capsys, "train", "--config", config, "--epochs", 1)
    assert code == 2 and "unknown field(s) no_such_setting" in err
    config.write_text(config.read_text().replace("no_such_setting: 1\n", "batch_size: 8\n"))
    code, _, _ = run_cli(capsys, "train", "--config", config, "--epochs", 1, "--no-metadata")
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert code == 0 and "epochs: 1" in saved and "batch_size: 8" in saved and "use_metadata: false" in saved


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["prepare", "--images", "{tmp}/nowhere", "--metadata", "{csv}", "--out", "{tmp}/d"],
            "images folder or zip not found",
        ),
        (
            ["prepare", "--images", "{images}", "--metadata", "{tmp}/missing.csv", "--out", "{tmp}/d"],
            "metadata file not found",
        ),
        (["prepare", "--images", "{images}", "--metadata", "{csv}"], "missing required field(s) out"),
        (["split", "{tmp}"], "not a prepared dataset"),
        (["train", "{tmp}", "--out", "{tmp}/run"], "not a prepared dataset"),
        (["evaluate", "{tmp}", "--data", "{tmp}"], "not a prepared dataset"),
        (["predict", "{tmp}", "--images", "{images}", "--out", "{tmp}/p.csv"], "not a run directory"),
        (["compare", "{tmp}", "{tmp}", "--data", "{tmp}"], "not a prepared dataset"),
        (["ensemble", "{tmp}/nowhere", "--out", "{tmp}/e"], "no such run directory"),
        (["ensemble", "--out", "{tmp}/e"], "missing required field(s) members"),
        (["train", "{tmp}", "--out", "{tmp}/run", "--epochs", "many"], None),
    ],
)
def test_bad_input_is_one_line_without_traceback(raw_data, tmp_path: Path, capsys, argv, message) -> None:
    images, metadata = raw_data
    argv = [a.format(tmp=tmp_path, images=images, csv=metadata) for a in argv]
    if message is None:  # argparse rejects the type itself
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and "invalid int value: 'many'" in capsys.readouterr().err
        return
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_metadata_values_are_listed_and_the_rest_prepared(raw_data, tmp_path: Path, capsys) -> None:
    images, metadata = raw_data
    frame = pd.read_csv(metadata, dtype=str)
    frame.loc[0, "age_approx"] = "old"
    frame.loc[1, "anatom_site_general_challenge"] = "elbow"
    frame.to_csv(tmp_path / "m.csv", index=False)
    code, out, _ = run_cli(
        capsys,
        "prepare",
        "--images",
        images,
        "--metadata",
        tmp_path / "m.csv",
        "--out",
        tmp_path / "d",
        "--size",
        32,
    )
    assert code == 0
    assert "m.csv:2: age_approx 'old' is not a number" in out
    assert "m.csv:3: unknown anatom_site_general_challenge value 'elbow'" in out
    assert f"Prepared {len(frame)} images" in out


def test_demo_runs_end_to_end_on_tiny_settings(tmp_path: Path, capsys) -> None:
    code, out, _ = run_cli(
        capsys, "demo", "--out", tmp_path / "demo", "--patients", 12, "--epochs", 1, "--image-size", 32
    )
    assert code == 0
    assert "SYNTHETIC" in out and "test AUC" in out
    assert (tmp_path / "demo" / "run" / "eval").is_dir()
    code, out, _ = run_cli(
        capsys, "demo", "--out", tmp_path / "demo", "--patients", 12, "--epochs", 1, "--image-size", 32
    )
    assert code == 0 and "nothing to do" in out  # a rerun reuses what is there


def test_version_flag(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("melanoma ")
