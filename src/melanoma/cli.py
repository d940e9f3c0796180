"""The `melanoma` command: parses arguments into one config object per command and calls one function.

Only flags the user gave override a --config YAML file, which overrides the defaults.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from melanoma import __version__
from melanoma.config import (
    CompareConfig,
    ContextConfig,
    DemoConfig,
    DownloadConfig,
    EnsembleConfig,
    EvaluateConfig,
    ExplainConfig,
    ExportConfig,
    PredictConfig,
    PrepareConfig,
    ServeConfig,
    SplitConfig,
    TrainConfig,
    build_config,
)
from melanoma.errors import MelanomaError

S = argparse.SUPPRESS


def _download(args: dict) -> None:
    from melanoma.data.download import download

    result = download(build_config(DownloadConfig, args.pop("config", None), **args))
    width = max((len(name) for name, _ in result.files), default=0)
    for name, status in result.files:
        print(f"  {name:<{width}}  {status}")
    print(f"Everything is in {result.out}. Next:")
    for step in result.next_steps:
        print(f"  {step}")


def _prepare(args: dict) -> None:
    from melanoma.data.prepare import prepare

    config = build_config(PrepareConfig, args.pop("config", None), **args)
    started = time.time()
    result = prepare(config)
    seconds = time.time() - started
    for problem in result.problems[:20]:
        print(f"warning: {problem}")
    if len(result.problems) > 20:
        print(f"warning: ... and {len(result.problems) - 20} more problems")
    rate = f" ({result.prepared / seconds:.1f} images/s)" if result.prepared else ""
    print(
        f"Prepared {result.prepared} images in {seconds:.1f}s{rate}; {result.already_there} were already there; "
        f"{len(result.problems)} problems. Dataset: {result.out}"
    )


def _split(args: dict) -> None:
    from melanoma.data.split import split

    print(split(build_config(SplitConfig, args.pop("config", None), **args)).to_string())


def _train(args: dict) -> None:
    from melanoma.training.fit import train

    if args.pop("no_metadata", False):
        args["use_metadata"] = False
    run = train(build_config(TrainConfig, args.pop("config", None), **args))
    print(f"Run directory: {run}")


def _tune(args: dict) -> None:
    from melanoma.training.tune import build_tune_configs, tune

    if args.pop("no_metadata", False):
        args["use_metadata"] = False
    config, base = build_tune_configs(args.pop("config", None), args)
    result = tune(config, base)
    print(
        f"\nStudy {result.study}: {result.complete} complete, {result.pruned} pruned, {result.failed} failed trials "
        f"({result.ran} finished in this run). Best first:"
    )
    print(result.table)
    for note in result.notes:
        print(f"note: {note}")
    if result.best is not None:
        best = result.best
        print(
            f"Best: trial {best['number']}, val AUC {best['value']:.4f} at epoch {best['best_epoch']} "
            f"({result.out / best['run_dir']}). Trials: {result.out / 'trials.csv'}"
        )
        print(f"Final fit on train+val: melanoma train {config.data} --config {result.best_yaml} --final --out RUN")
    if result.plots:
        print(f"Plots: {', '.join(str(p) for p in result.plots)}")


def _evaluate(args: dict) -> None:
    from melanoma.evaluation.evaluate import evaluate

    metrics = evaluate(build_config(EvaluateConfig, args.pop("config", None), **args))
    print(
        f"AUC {metrics['auc']:.4f}{_interval(metrics['auc_ci'])} on {metrics['images']} images "
        f"({metrics['melanomas']} melanomas, {metrics['patients']} patients); "
        f"pAUC above 80% sensitivity {metrics['partial_auc_above_80_tpr']:.4f}."
    )
    if context := metrics.get("context"):
        print(
            f"Image-only AUC {context['image_auc']:.4f}{_interval(context['image_auc_ci'])} on the same images; "
            f"context - image-only: {context['auc_difference']:+.4f}"
            f"{_interval(context['auc_difference_ci'], signed=True)}, paired."
        )
        if context["in_sample"]:
            print("warning: the context stage was fitted on these images; its numbers here are optimistic")
    print(f"Report: {Path(metrics['out']) / 'report.html'}")


def _context_fit(args: dict) -> None:
    from melanoma.context.fit import fit_context

    args.pop("context_command", None)
    if "oof_folds" in args and "fit_on" not in args:
        args["fit_on"] = "oof"
    result = fit_context(build_config(ContextConfig, args.pop("config", None), **args))
    print(
        f"Context stage ({result['stage']}) fitted on {result['images']} {'+'.join(result['splits'])} images "
        f"({result['melanomas']} melanomas, {result['patients']} patients) with out-of-sample image scores "
        f"({'the val split' if result['fit_on'] == 'val' else 'out-of-fold'}); {result['single_image_patients']} "
        "single-image patients fall back to the image score."
    )
    if result["weights"]["context"] == 0:
        print(
            "warning: the context model's held-out scores added nothing over the image score on these rows, so it "
            "got weight 0: the context run ranks images as the image run does"
        )
    print(f"Context run: {result['out']}. Next: melanoma evaluate {result['out']} --data DATA --split test")


def _interval(interval: list[float] | None, signed: bool = False) -> str:
    if interval is None:
        return " (no CI)"
    sign = "+" if signed else ""
    return f" (95% CI {interval[0]:{sign}.4f} to {interval[1]:{sign}.4f}, patient bootstrap)"


def _compare(args: dict) -> None:
    from melanoma.evaluation.compare import compare

    result = compare(build_config(CompareConfig, args.pop("config", None), **args))
    print(f"A {result['run_a']}: AUC {result['auc_a']:.4f}{_interval(result['auc_a_ci'])}")
    print(f"B {result['run_b']}: AUC {result['auc_b']:.4f}{_interval(result['auc_b_ci'])}")
    print(
        f"A - B: {result['auc_difference']:+.4f}{_interval(result['auc_difference_ci'], signed=True)}, paired, "
        f"on {result['images']} images ({result['melanomas']} melanomas, {result['patients']} patients)."
    )


def _ensemble(args: dict) -> None:
    from melanoma.inference.ensemble import create_ensemble

    config = build_config(EnsembleConfig, args.pop("config", None), **args)
    out = create_ensemble(config)
    print(f"Ensemble of {len(config.members)} runs ({config.method}): {out}; use it wherever a RUN is accepted.")


def _predict(args: dict) -> None:
    from melanoma.inference.predictor import predict

    config = build_config(PredictConfig, args.pop("config", None), **args)
    result = predict(config)
    print(f"Wrote {len(result)} predictions to {config.out}")


def _explain(args: dict) -> None:
    from melanoma.inference.explain import explain

    config = build_config(ExplainConfig, args.pop("config", None), **args)
    scores = explain(config)
    made = int((scores["heatmap"] != "").sum())
    print(f"Wrote {made} heatmap overlays and scores.csv ({len(scores)} images) to {config.out}")


def _export(args: dict) -> None:
    from melanoma.inference.export import export

    result = export(build_config(ExportConfig, args.pop("config", None), **args))
    print(
        f"Exported {result.onnx} (dynamic batch axis) and its sidecar {result.sidecar}; ONNX Runtime vs PyTorch on "
        f"random inputs: max abs difference {result.max_abs_difference:.1e} (probability), "
        f"{result.max_abs_difference_logit:.1e} (logit)."
    )


def _serve(args: dict) -> None:
    from melanoma.app.server import serve

    serve(build_config(ServeConfig, args.pop("config", None), **args))


def _demo(args: dict) -> None:
    from melanoma.demo import demo

    started = time.time()
    metrics = demo(build_config(DemoConfig, args.pop("config", None), **args))
    print(
        f"\nDemo finished in {time.time() - started:.0f}s: test AUC {metrics['auc']:.3f} "
        f"on {metrics['images']} images ({metrics['melanomas']} melanomas)."
    )
    print("These numbers are from SYNTHETIC lesions: they show the pipeline works, not how well it detects melanoma.")
    print(f"Report (metrics, plots) and predictions: {Path(metrics['out']) / 'report.html'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="melanoma", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"melanoma {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[dict], None], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help, argument_default=S)
        sub.set_defaults(handler=handler)
        sub.add_argument("--config", metavar="YAML", help="settings file; flags given here override it")
        return sub

    p = command("download", _download, "fetch the ISIC 2020/2019 challenge files or an ISIC Archive subset (resumable)")
    p.add_argument(
        "dataset",
        nargs="?",
        metavar="DATASET",
        help="isic2020 or isic2019 (official challenge files), or archive (ISIC Archive subset)",
    )
    p.add_argument("--out", metavar="RAW", help="download folder (created); run again to resume or complete it")
    p.add_argument("--part", choices=["train", "test", "all"], help="challenge files: train (default), test or all")
    p.add_argument("--format", dest="image_format", choices=["jpeg", "dicom"], help="isic2020 images (default jpeg)")
    p.add_argument("--collection", metavar="ID", help="archive: collection id(s), comma-separated (70 = ISIC 2020)")
    p.add_argument("--search", metavar="QUERY", help="archive: search, e.g. 'diagnosis_3:\"Melanoma Invasive\"'")
    p.add_argument("--limit", type=int, metavar="N", help="archive: at most N images")
    p.add_argument(
        "--base-url", dest="base_url", metavar="URL", help="challenge files mirror (or $MELANOMA_ISIC_BASE_URL)"
    )
    p.add_argument("--api-url", dest="api_url", metavar="URL", help="ISIC Archive API (or $MELANOMA_ISIC_API_URL)")
    p.add_argument("--retries", type=int, help="retries of a request that brought no new bytes (default 5)")
    p.add_argument("--timeout", type=float, help="seconds without data before a request fails (default 60)")
    p.add_argument("--workers", type=int, help="archive: parallel image downloads (default 4)")

    p = command("prepare", _prepare, "raw images + metadata CSV -> prepared dataset directory")
    p.add_argument("--images", metavar="DIR_OR_ZIP", help="folder (searched recursively) or zip of JPEG/PNG/DICOM")
    p.add_argument(
        "--metadata", metavar="CSV", help="ISIC 2020 / Kaggle / ISIC Archive / HAM10000 CSV; optional for DICOM"
    )
    p.add_argument("--out", metavar="DATA", help="dataset directory (created, or extended)")
    p.add_argument("--size", type=int, help="centre-crop and resize to this many pixels (default 512)")
    p.add_argument("--workers", type=int, help="parallel processes (default: one per CPU core)")
    p.add_argument("--duplicates", metavar="CSV", help="ISIC 2020 duplicates list: drop the second image of each pair")
    p.add_argument("--source", help="value of the `source` column for these rows (default: the images' name)")

    p = command("split", _split, "assign train/val/test grouped by patient, stratified by melanoma")
    p.add_argument("data", nargs="?", metavar="DATA")
    p.add_argument("--test-size", type=float, dest="test_size", help="fraction held out for test (default 0.2)")
    p.add_argument("--val-size", type=float, dest="val_size", help="fraction of the rest for validation (default 0.2)")
    p.add_argument("--seed", type=int)

    p = command("train", _train, "train a model on a prepared, split dataset -> run directory")
    p.add_argument("data", nargs="?", metavar="DATA")
    p.add_argument("--out", metavar="RUN")
    p.add_argument("--model", help="basic-cnn (default) or any timm model name, e.g. resnest269e")
    p.add_argument("--pretrained", action="store_true", help="start from ImageNet weights (hub or offline package)")
    p.add_argument("--weights", metavar="FILE", help="local backbone state dict (.safetensors or .pth)")
    p.add_argument("--epochs", type=int, help="default 11")
    p.add_argument("--batch-size", type=int, dest="batch_size", help="default 16 (per device)")
    p.add_argument("--image-size", type=int, dest="image_size", help="network input (default: the model's own)")
    p.add_argument("--crop-pct", type=float, dest="crop_pct", help="evaluation centre-crop fraction")
    p.add_argument("--no-metadata", action="store_true", dest="no_metadata", help="image network only")
    p.add_argument("--final", action="store_true", help="train on train+val for the fixed epoch count")
    p.add_argument("--lr", type=float, help="learning rate of the new layers (default 1e-3)")
    p.add_argument("--backbone-lr", type=float, dest="backbone_lr", help="default lr/10 when pretrained, else lr")
    p.add_argument("--weight-decay", type=float, dest="weight_decay")
    p.add_argument("--oversample", type=float, help="draw melanoma images this many times as often (default 5)")
    p.add_argument("--seed", type=int)
    p.add_argument("--num-workers", type=int, dest="num_workers", help="data loader processes per device")
    p.add_argument("--accelerator", help="auto, cpu, gpu (default auto)")
    p.add_argument("--devices", help="auto, a count, or a list like 0,1")
    p.add_argument("--num-nodes", type=int, dest="num_nodes", help="machines in a multi-node (SLURM/torchrun) job")
    p.add_argument("--strategy", help="Lightning strategy (default auto: DDP on several devices)")
    p.add_argument("--precision", help="32-true, 16-mixed, bf16-mixed (default: bf16-mixed on GPU, else 32-true)")
    p.add_argument("--accumulate-grad-batches", type=int, dest="accumulate_grad_batches")
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        dest="channels_last",
        help="channels-last memory format (default: on for GPUs)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU, long runs)")
    p.add_argument("--max-images", type=int, dest="max_images", help="train on at most this many images")

    p = command("tune", _tune, "search training settings with Optuna on the val split -> TUNE dir (best.yaml)")
    p.add_argument("data", nargs="?", metavar="DATA")
    p.add_argument("--out", metavar="TUNE", help="tune directory (created); run again to resume the study")
    p.add_argument("--trials", type=int, help="finished trials in total, over every run and worker (default 50)")
    p.add_argument("--timeout", help="stop starting new trials after this long: 8h, 90m, 45s (default: none)")
    p.add_argument("--storage", metavar="URL", help="database shared by several workers (default: TUNE/study.db)")
    p.add_argument("--study", metavar="NAME", help="study name in the storage (default: the TUNE dir's name)")
    p.add_argument("--search-space", dest="search_space", metavar="YAML", help="parameter ranges (see README)")
    p.add_argument("--no-pruning", action="store_false", dest="pruning", help="train every trial to the end")
    p.add_argument("--startup-trials", type=int, dest="startup_trials", help="trials before pruning (default 5)")
    p.add_argument(
        "--prune-warmup-epochs", type=int, dest="prune_warmup_epochs", help="epochs before a trial may be pruned"
    )
    p.add_argument("--sampler-seed", type=int, dest="sampler_seed", help="seed of the TPE sampler (default 0)")
    p.add_argument("--heartbeat", type=int, metavar="SECONDS", help="a trial silent for twice this is retried")
    p.add_argument("--model", help="basic-cnn (default) or any timm model name")
    p.add_argument("--pretrained", action="store_true", help="start from ImageNet weights")
    p.add_argument("--weights", metavar="FILE", help="local backbone state dict (.safetensors or .pth)")
    p.add_argument("--epochs", type=int, help="epochs per trial; the best validation epoch is recorded (default 11)")
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--image-size", type=int, dest="image_size")
    p.add_argument("--no-metadata", action="store_true", dest="no_metadata", help="image network only")
    p.add_argument("--max-images", type=int, dest="max_images", help="train each trial on at most this many images")
    p.add_argument("--seed", type=int, help="training seed of every trial (default 0)")
    p.add_argument("--num-workers", type=int, dest="num_workers")
    p.add_argument("--accelerator", help="auto, cpu, gpu (default auto)")
    p.add_argument("--devices", help="one device per trial: auto, 1, or one index like 0,")
    p.add_argument("--precision", help="32-true, 16-mixed, bf16-mixed (default: bf16-mixed on GPU, else 32-true)")

    tta_help = "average over the first K of the 8 flips/transposes (default 1: off)"
    p = command("evaluate", _evaluate, "metrics with confidence intervals, plots and report.html for a dataset split")
    p.add_argument("run", nargs="?", metavar="RUN")
    p.add_argument("--data", metavar="DATA")
    p.add_argument("--split", help="train, val, test, or all (an external dataset; default test)")
    p.add_argument("--tta", type=int, metavar="K", help=tta_help)
    p.add_argument("--n-bootstrap", type=int, dest="n_bootstrap", help="patient resamples for the CIs (default 2000)")
    p.add_argument("--seed", type=int, help="bootstrap seed (default 0)")
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--num-workers", type=int, dest="num_workers")

    p = command("compare", _compare, "AUC difference of two runs on the same images, with a paired patient bootstrap")
    p.add_argument("run_a", nargs="?", metavar="RUN_A")
    p.add_argument("run_b", nargs="?", metavar="RUN_B")
    p.add_argument("--data", metavar="DATA")
    p.add_argument("--split", help="train, val, test, or all (default test)")
    p.add_argument("--tta", type=int, metavar="K", help=tta_help)
    p.add_argument("--n-bootstrap", type=int, dest="n_bootstrap", help="patient resamples (default 2000)")
    p.add_argument("--seed", type=int, help="bootstrap seed (default 0)")
    p.add_argument("--out", metavar="JSON", help="also write the comparison here")
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--num-workers", type=int, dest="num_workers")

    p = command("ensemble", _ensemble, "combine runs' scores into an ENSEMBLE dir usable wherever a RUN is")
    p.add_argument("members", nargs="*", metavar="RUN")
    p.add_argument("--out", metavar="ENSEMBLE")
    p.add_argument("--method", help="mean (of probabilities; default) or rank (mean of ranks within the scored set)")

    p = command("predict", _predict, "melanoma probabilities for new images -> image_name,target CSV")
    p.add_argument("run", nargs="?", metavar="RUN")
    p.add_argument("--images", metavar="DIR_OR_ZIP")
    p.add_argument("--metadata", metavar="CSV", help="optional; without it metadata counts as missing")
    p.add_argument("--out", metavar="PREDICTIONS.csv")
    p.add_argument("--tta", type=int, metavar="K", help=tta_help)
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--num-workers", type=int, dest="num_workers")
    p.add_argument("--engine", choices=["torch", "onnx"], help="torch (default) or onnx: the exported model")
    p.add_argument("--onnx-model", dest="onnx_model", metavar="FILE", help="engine onnx: default RUN/model.onnx")

    p = command("explain", _explain, "Grad-CAM heatmap overlays (PNG) and scores for images, metadata held fixed")
    p.add_argument("run", nargs="?", metavar="RUN")
    p.add_argument("--images", nargs="+", metavar="DIR_OR_FILE", help="folders, zips or JPEG/PNG files")
    p.add_argument("--metadata", metavar="CSV", help="optional; without it metadata counts as missing")
    p.add_argument("--out", metavar="DIR", help="OUT/<image_name>.png and OUT/scores.csv")
    p.add_argument(
        "--target-layer", dest="target_layer", metavar="NAME", help="image-network module (default: automatic)"
    )

    p = command("export", _export, "RUN -> model.onnx (dynamic batch) + JSON sidecar, checked against PyTorch")
    p.add_argument("run", nargs="?", metavar="RUN")
    p.add_argument("--format", choices=["onnx"], help="onnx (default)")
    p.add_argument("--out", metavar="MODEL.onnx", help="default RUN/model.onnx; the sidecar goes beside it as .json")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--tolerance", type=float, help="max accepted probability difference from PyTorch (1e-4)")

    p = command("serve", _serve, "web page + JSON API for single lesions (research use, loopback by default)")
    p.add_argument("run", nargs="?", metavar="RUN")
    p.add_argument("--host", help="default 127.0.0.1 (this machine only)")
    p.add_argument("--port", type=int, help="default 8000")
    p.add_argument("--max-upload-mb", type=float, dest="max_upload_mb", help="larger uploads get 413 (default 20)")

    context = commands.add_parser(
        "context",
        help="patient context: judge each lesion against the same patient's other lesions",
        description="patient context: judge each lesion against the same patient's other lesions",
    )
    actions = context.add_subparsers(dest="context_command", required=True, metavar="ACTION")
    p = actions.add_parser(
        "fit",
        help="second stage on an image run's scores and embeddings -> CONTEXT_RUN (usable wherever a RUN is)",
        description="second stage on an image run's scores and embeddings -> CONTEXT_RUN (usable wherever a RUN is)",
        argument_default=S,
    )
    p.set_defaults(handler=_context_fit)
    p.add_argument("--config", metavar="YAML", help="settings file; flags given here override it")
    p.add_argument("run", nargs="?", metavar="RUN", help="a trained image run")
    p.add_argument("--data", metavar="DATA")
    p.add_argument("--out", metavar="CONTEXT_RUN")
    p.add_argument("--stage", help="hgb (gradient-boosted trees; default) or logistic (the simple baseline)")
    p.add_argument(
        "--fit-on",
        dest="fit_on",
        help="val (default: the run's val split; not for --final runs) or oof (out-of-fold scores of its train rows)",
    )
    p.add_argument(
        "--oof-folds", type=int, dest="oof_folds", help="patient-grouped folds for oof (default 5; implies oof)"
    )
    p.add_argument("--seed", type=int, help="of the folds and the stage (default 0)")
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--num-workers", type=int, dest="num_workers")

    p = command("demo", _demo, "synthetic data -> prepare -> split -> train -> evaluate, no download needed")
    p.add_argument("--out", metavar="DIR", help="default ./demo")
    p.add_argument("--epochs", type=int)
    p.add_argument("--patients", type=int, dest="n_patients")
    p.add_argument("--image-size", type=int, dest="image_size")
    p.add_argument("--seed", type=int)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    handler = args.pop("handler")
    args.pop("command")
    try:
        handler(args)
    except MelanomaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to continue where it stopped", file=sys.stderr)
        return 130
    return 0
