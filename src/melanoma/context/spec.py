"""The CONTEXT_RUN dir contract: a run that wraps a run.

`CONTEXT_RUN/config.yaml` holds `context: {image_run: <absolute path>, stage: hgb|logistic, fit_on: val|oof,
oof_folds, features: [...], fitted_on: {data, splits}, fallback}` beside the settings, the result and the library
versions; `stage.json` (+ `stage.safetensors` for hgb) hold the second stage; `fit_rows.csv` lists the rows it was
fitted on and which image model scored each; `folds/<k>/run` are the out-of-fold image runs (`--fit-on oof`).
evaluate, compare and predict accept the directory wherever they accept a RUN (see `load_predictor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from melanoma.errors import MelanomaError
from melanoma.rundir import read_run_section

CONFIG = "config.yaml"
FIT_ROWS = "fit_rows.csv"
FOLDS = "folds"
FIT_ON = ("val", "oof")


@dataclass
class ContextSpec:
    image_run: Path
    stage: str
    fit_on: str
    features: list[str]
    fitted_data: Path | None = None  # the dataset whose rows the stage was fitted on
    fitted_splits: tuple[str, ...] = ()


def read_context(run_dir: Path) -> ContextSpec | None:
    """The `context` section of RUN/config.yaml; None for any other kind of run (or no config)."""
    path = Path(run_dir) / CONFIG
    section = read_run_section(run_dir, "context")
    if section is None:
        return None
    try:
        fitted = section.get("fitted_on") or {}
        spec = ContextSpec(
            image_run=Path(section["image_run"]),
            stage=str(section["stage"]),
            fit_on=str(section["fit_on"]),
            features=[str(name) for name in section["features"]],
            fitted_data=Path(fitted["data"]) if fitted.get("data") else None,
            fitted_splits=tuple(fitted.get("splits") or ()),
        )
    except (AttributeError, KeyError, TypeError) as exc:
        raise MelanomaError(f"{path}: not a valid context run config ({type(exc).__name__}: {exc})") from None
    if spec.fit_on not in FIT_ON:
        raise MelanomaError(f"{path}: fit_on {spec.fit_on!r}: expected {' or '.join(FIT_ON)}")
    return spec
