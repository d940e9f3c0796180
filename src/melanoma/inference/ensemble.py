"""ENSEMBLE dirs: a run directory that combines member runs' scores instead of holding weights.

`ENSEMBLE/config.yaml` holds `ensemble: {method: mean|rank, members: [absolute run paths]}`; evaluate, compare
and predict accept the directory wherever they accept a RUN (see `load_predictor` in predictor.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from melanoma import __version__
from melanoma.config import EnsembleConfig, write_yaml
from melanoma.errors import MelanomaError
from melanoma.rundir import CONFIG, WEIGHTS, RunConfig, read_run_section

METHODS = ("mean", "rank")


@dataclass
class EnsembleSpec:
    method: str
    members: list[Path]


def read_ensemble(run_dir: Path) -> EnsembleSpec | None:
    """The `ensemble` section of RUN/config.yaml; None for a trained run (or no config, which RunConfig reports)."""
    path = Path(run_dir) / CONFIG
    section = read_run_section(run_dir, "ensemble")
    if section is None:
        return None
    if not isinstance(section, dict):
        raise MelanomaError(f"{path}: `ensemble` must be a mapping with method and members")
    method, members = section.get("method"), section.get("members")
    if method not in METHODS:
        raise MelanomaError(f"{path}: ensemble method {method!r}: expected {' or '.join(METHODS)}")
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise MelanomaError(f"{path}: ensemble members must be a non-empty list of run directories")
    return EnsembleSpec(method, [Path(m) for m in members])


def combine_scores(scores: list[np.ndarray], method: str) -> np.ndarray:
    """Per image, the mean of the members' probabilities, or of their ranks.

    Rank: each member's scores become rank / count within the images scored together (ties share their average
    rank), so only each member's ordering counts, not its scale. Such scores are not probabilities and depend on
    which images are scored together. An image a member could not read (NaN) stays NaN.
    """
    if method == "rank":
        scores = [pd.Series(member).rank(method="average", pct=True).to_numpy() for member in scores]
    return np.stack(scores).mean(axis=0)


def member_problem(run_dir: Path) -> str | None:
    """Why `run_dir` cannot be an ensemble member, or None when it is a finished trained run."""
    if not run_dir.is_dir():
        return f"{run_dir}: no such run directory"
    if read_ensemble(run_dir) is not None:
        return f"{run_dir}: is itself an ensemble; list its member runs instead"
    try:
        RunConfig.load(run_dir)
    except MelanomaError as exc:
        return str(exc)
    if not (run_dir / WEIGHTS).is_file():
        return f"{run_dir}: no {WEIGHTS}; the run has not finished"
    return None


def create_ensemble(config: EnsembleConfig) -> Path:
    """The `ensemble` command: validate the members and write ENSEMBLE/config.yaml (no weights)."""
    if config.method not in METHODS:
        raise MelanomaError(f"--method {config.method}: expected {' or '.join(METHODS)}")
    if not config.members:
        raise MelanomaError("ensemble: give at least one member run directory")
    members = [Path(m).resolve() for m in config.members]
    for member in members:
        if problem := member_problem(member):
            raise MelanomaError(problem)
    repeated = sorted({str(m) for m in members if members.count(m) > 1})
    if repeated:
        raise MelanomaError(f"{repeated[0]}: listed twice; each member counts once")
    out = Path(config.out)
    if (out / CONFIG).is_file() and read_ensemble(out) is None:
        raise MelanomaError(f"{out}: already holds a run that is not an ensemble; choose another --out")
    write_yaml(
        out / CONFIG,
        {
            "ensemble": {"method": config.method, "members": [str(m) for m in members]},
            "versions": {"melanoma": __version__},
        },
    )
    return out
