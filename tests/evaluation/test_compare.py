import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from melanoma.config import CompareConfig, EvaluateConfig
from melanoma.errors import MelanomaError
from melanoma.evaluation.compare import compare
from melanoma.evaluation.evaluate import evaluate


def perturbed_copy(run: Path, out: Path) -> Path:
    """A second, different model: the run with noise added to its weights."""
    copy = Path(shutil.copytree(run, out, ignore=shutil.ignore_patterns("eval")))
    generator = torch.Generator().manual_seed(0)
    state = load_file(str(copy / "model.safetensors"))
    noisy = {
        name: t + 0.5 * t.std() * torch.randn(t.shape, generator=generator)
        if t.is_floating_point() and t.numel() > 1
        else t
        for name, t in state.items()
    }
    save_file(noisy, str(copy / "model.safetensors"))
    return copy


def test_compare_gives_both_aucs_and_a_paired_interval_of_the_difference(
    trained_run: Path, split_data: Path, tmp_path: Path
) -> None:
    other = perturbed_copy(trained_run, tmp_path / "other")
    result = compare(CompareConfig(run_a=trained_run, run_b=other, data=split_data, split="all", num_workers=0))
    for run, key in ((trained_run, "auc_a"), (other, "auc_b")):
        alone = evaluate(EvaluateConfig(run=run, data=split_data, split="all", num_workers=0, n_bootstrap=0))
        assert result[key] == pytest.approx(alone["auc"])
    assert result["auc_difference"] == pytest.approx(result["auc_a"] - result["auc_b"])
    assert result["auc_difference"] != 0
    low, high = result["auc_difference_ci"]
    assert low <= result["auc_difference"] <= high
    assert (result["n_bootstrap"], result["bootstrap_seed"]) == (2000, 0)


def test_compare_checks_both_runs_before_scoring(trained_run: Path, split_data: Path, tmp_path: Path) -> None:
    with pytest.raises(MelanomaError, match="not a run directory"):
        compare(CompareConfig(run_a=trained_run, run_b=tmp_path, data=split_data))
    with pytest.raises(MelanomaError, match="--n-bootstrap -1"):
        compare(CompareConfig(run_a=trained_run, run_b=trained_run, data=split_data, n_bootstrap=-1))
