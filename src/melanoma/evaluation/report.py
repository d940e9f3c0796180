"""report.html: one self-contained file (plots embedded as base64 PNG) that a clinician can open and read.

Plain string templating: every value from the run, the dataset or the metrics goes through html.escape.
"""

from __future__ import annotations

import base64
import datetime
import html
from pathlib import Path

from melanoma import __version__
from melanoma.config import atomic_write_text

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.lead { color: #555; } .headline { font-size: 1.35em; margin: 1em 0; } .note { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; } th, td { padding: 0.3em 0.8em; text-align: left;
        border-bottom: 1px solid #e5e5e5; vertical-align: top; } th { background: #f5f5f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 1em; }
figure { margin: 0; } figure img { width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.85em; }
.subgroups { display: flex; flex-wrap: wrap; gap: 2em; }
"""

SUBGROUP_TITLES = {"site": "Anatomic site", "sex": "Sex", "age": "Age band (years)"}


def _e(value: object) -> str:
    return html.escape(str(value))


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(interval: list[float] | None) -> str:
    return "n/a" if interval is None else f"{interval[0]:.3f} to {interval[1]:.3f}"


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] | None = None) -> str:
    """`rows` hold already-escaped HTML; columns in `numeric` are right-aligned; no header row if all are empty."""
    numeric = numeric or set()
    head = "".join(f"<th>{_e(h)}</th>" for h in headers) if any(headers) else ""
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def _image(path: Path, alt: str, caption: str) -> str:
    encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{encoded}" alt="{_e(alt)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _operating_label(name: str) -> str:
    """'sensitivity_at_90_specificity' -> 'Sensitivity at 90% specificity'"""
    measured, _, rest = name.partition("_at_")
    target, _, fixed = rest.partition("_")
    return f"{measured.capitalize()} at {target}% {fixed}"


def render_report(metrics: dict, plots: list[tuple[Path, str, str]], run_config: str) -> str:
    """The report as HTML text; `plots` = (PNG path, alt text, caption); `run_config` = the run's config.yaml."""
    m = metrics
    probabilities = m["scores"] == "probability"
    level = round(m["ci_level"] * 100)
    ci = f" ({level}% CI {_ci(m['auc_ci'])}, {m['bootstrap_resamples_used']} patient resamples)" if m["auc_ci"] else ""
    headline = f"ROC AUC <b>{m['auc']:.3f}</b>{_e(ci)}"
    rank_note = (
        ""
        if probabilities
        else '<p class="note">These scores are a rank ensemble\'s: ranks among the evaluated images, not '
        "probabilities, so there is no Brier score or calibration curve.</p>"
    )

    dataset = _table(
        ["", ""],
        [
            ["Dataset", f"<code>{_e(m['data'])}</code>"],
            ["Split", _e(m["split"])],
            ["Images", _e(m["images"])],
            ["Patients", _e(m["patients"])],
            ["Melanomas", f"{_e(m['melanomas'])} ({m['prevalence'] * 100:.1f}% of images)"],
            ["Patients with melanoma", _e(m["patients_with_melanoma"])],
            ["Sources", _e(", ".join(f"{name}: {count}" for name, count in m["sources"].items()))],
        ],
    )
    metric_rows = [
        [
            "ROC AUC",
            f"{m['auc']:.3f}",
            _e(_ci(m["auc_ci"])),
            "Chance that a random melanoma scores higher than a random non-melanoma (0.5 = guessing, 1 = perfect).",
        ],
        [
            "Partial AUC above 80% sensitivity",
            _num(m["partial_auc_above_80_tpr"]),
            "",
            "ROC area where sensitivity is at least 80%, as scored by the ISIC 2024 challenge (0 to 0.2).",
        ],
        [
            "Average precision",
            _num(m["average_precision"]),
            "",
            f"Area under the precision-recall curve; guessing gives the prevalence ({m['prevalence']:.3f}).",
        ],
        [
            "Brier score",
            _num(m["brier"]),
            "",
            "Mean squared error of the probabilities (0 = perfect; lower is better).",
        ],
    ]
    metrics_table = _table(["Metric", "Value", f"{level}% CI", "What it means"], metric_rows, numeric={1, 2})
    points = _table(
        ["Operating point", "Sensitivity", "Specificity", "Threshold (melanoma if score ≥)"],
        [
            [_e(_operating_label(name)), _num(p["sensitivity"]), _num(p["specificity"]), _num(p["threshold"], 4)]
            for name, p in m["operating_points"].items()
        ],
        numeric={1, 2, 3},
    )
    figures = "".join(_image(path, alt, caption) for path, alt, caption in plots)
    subgroups = "".join(
        f"<div><h3>{_e(SUBGROUP_TITLES.get(column, column))}</h3>"
        + _table(
            ["Group", "Images", "Patients", "Melanomas", "AUC", f"{level}% CI"],
            [
                [
                    _e(g["group"]),
                    _e(g["images"]),
                    _e(g["patients"]),
                    _e(g["melanomas"]),
                    _num(g["auc"]) if g["auc"] is not None else f"n/a ({_e(g['note'])})",
                    _e(_ci(g["auc_ci"])),
                ]
                for g in groups
            ],
            numeric={1, 2, 3, 4, 5},
        )
        + "</div>"
        for column, groups in m["subgroups"].items()
    )
    settings = _table(
        ["", ""],
        [
            ["Run", f"<code>{_e(m['run'])}</code>"],
            ["Scores", _e(m["scores"])],
            ["Test-time augmentation", _e(f"{m['tta']} of 8 flips/transposes averaged" if m["tta"] > 1 else "off")],
            [
                "Bootstrap",
                _e(
                    f"{m['n_bootstrap']} resamples of patients (seed {m['bootstrap_seed']}), "
                    f"{m['bootstrap_resamples_used']} with both classes; percentile intervals"
                ),
            ],
            ["Generated", _e(f"{datetime.datetime.now().isoformat(timespec='seconds')} by melanoma {__version__}")],
        ],
    )
    context = _context_section(m, level) if m.get("context") else ""
    title = f"Melanoma classifier evaluation: {Path(m['run']).name} on {Path(m['data']).name} ({m['split']})"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>
<body>
<h1>{_e(title)}</h1>
<p class="lead">Melanoma (1) against every other diagnosis (0), one score per image.</p>
<p class="headline">{headline}</p>
{rank_note}
{context}
<h2>Dataset</h2>
{dataset}
<h2>Metrics</h2>
{metrics_table}
<h3>Operating points</h3>
{points}
<p class="note">Each point is the best real threshold meeting its target on these images. A threshold chosen on
the data it is evaluated on is optimistic: fix it on validation data before using it on new patients.</p>
<h2>Plots</h2>
<div class="plots">{figures}</div>
<h2>Subgroups</h2>
<p class="note">AUC within each group, with its patient-bootstrap interval; n/a where a group lacks melanoma or
non-melanoma images. Groups with few melanomas give wide intervals: read the interval, not the point.</p>
<div class="subgroups">{subgroups}</div>
<h2>Evaluation settings</h2>
{settings}
<h2>Run configuration</h2>
<pre>{_e(run_config)}</pre>
</body></html>
"""


def _context_section(m: dict, level: int) -> str:
    """A context run: its AUC beside the image run's on the same images, and the paired difference."""
    c = m["context"]
    signed = "n/a" if c["auc_difference_ci"] is None else "{:+.3f} to {:+.3f}".format(*c["auc_difference_ci"])
    table = _table(
        ["Scores", "ROC AUC", f"{level}% CI"],
        [
            [
                _e(f"Context ({c['stage']} stage, fitted on {c['fit_on']})"),
                f"{m['auc']:.3f}",
                _e(_ci(m["auc_ci"])),
            ],
            [f"Image only (<code>{_e(c['image_run'])}</code>)", f"{c['image_auc']:.3f}", _e(_ci(c["image_auc_ci"]))],
            ["Context − image only", f"{c['auc_difference']:+.3f}", _e(signed)],
        ],
        numeric={1, 2},
    )
    warning = (
        '<p class="note"><b>These images were used to fit the context stage: its numbers here are optimistic.</b></p>'
        if c["in_sample"]
        else ""
    )
    return (
        "<h2>Patient context</h2>"
        + table
        + "<p class=\"note\">Each image is judged against the same patient's other images. The difference's interval "
        "comes from the same patient resamples for both scores (paired), so it is narrower than comparing the two "
        "intervals.</p>" + warning
    )


def write_report(path: Path, metrics: dict, plots: list[tuple[Path, str, str]], run_config: str) -> None:
    atomic_write_text(path, render_report(metrics, plots, run_config))
