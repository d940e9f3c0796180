"""Grad-CAM heatmaps: where in the image the network found evidence for melanoma, with the metadata held fixed.

pytorch_grad_cam (the `grad-cam` package) differentiates the melanoma logit with respect to one layer of the
image network. The fused classifier also reads metadata, so it is wrapped in a module that takes only the image
and feeds the lesion's own (fixed) metadata vector: the heatmap then explains the image's contribution for this
patient. The target layer is found automatically:

- CNNs (the basic CNN, ResNets, EfficientNets, ConvNeXts, ... from timm): the last `Conv2d` of the image network,
  the last layer that still has a spatial map, leaving out residual shortcuts (`downsample`, `shortcut`): a ResNet
  block registers its 1x1 shortcut projection after its main path, and that only reprojects the block's input.
  A layer whose map has shrunk to 1 x 1 at the run's input size (a small image through many poolings) is skipped
  too: one value per channel cannot say where anything is.
- Vision transformers (timm models with `patch_embed`, `blocks` and `num_prefix_tokens`: ViT, DeiT, BEiT, EVA):
  the last block's `norm1`, with the class/register tokens dropped and the patch tokens reshaped into their grid
  (the pytorch_grad_cam recipe for ViTs). Their last Conv2d is the patch embedding, which would explain nothing.
- Anything else, or a different choice: `--target-layer NAME` (a module path inside the image network).

The heatmap is overlaid on the prepared image as the network saw it (after its resize and centre crop).
Lightning is never imported.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from melanoma.config import ExplainConfig, atomic_write_bytes, atomic_write_text
from melanoma.data.images import ImageSource, load_image
from melanoma.errors import MelanomaError
from melanoma.inference.ensemble import read_ensemble
from melanoma.inference.predictor import Predictor, raw_frame
from melanoma.models import FusionClassifier

OVERLAY_IMAGE_WEIGHT = 0.55  # how much of the lesion shows through the colour map
SHORTCUT_NAMES = {"downsample", "shortcut"}  # timm's names for a residual block's projection branch


class ImageOnly(nn.Module):
    """The fused classifier as a function of the image alone: the metadata is fixed to one lesion's vector."""

    def __init__(self, model: FusionClassifier, metadata: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("metadata", metadata.reshape(1, -1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1) logits: pytorch_grad_cam's ClassifierOutputTarget(0) selects the melanoma logit."""
        return self.model(images, self.metadata.expand(images.shape[0], -1)).unsqueeze(1)


def _is_token_model(image_net: nn.Module) -> bool:
    return all(hasattr(image_net, name) for name in ("patch_embed", "blocks", "num_prefix_tokens"))


def _tokens_to_grid(prefix_tokens: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """(N, prefix + H*W, C) transformer tokens -> (N, C, H, W) maps, the shape Grad-CAM weights by channel."""

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, prefix_tokens:]
        side = math.isqrt(patches.shape[1])
        if side * side != patches.shape[1]:
            raise MelanomaError(f"Grad-CAM: {patches.shape[1]} patch tokens do not form a square grid")
        return patches.reshape(patches.shape[0], side, side, patches.shape[2]).permute(0, 3, 1, 2)

    return reshape


def _map_sides(image_net: nn.Module, layers: list[nn.Module], image_size: int) -> dict[int, int]:
    """The smaller side of each layer's output map for one blank image of the run's input size."""
    sides: dict[int, int] = {}
    hooks = [
        layer.register_forward_hook(lambda module, _, output: sides.__setitem__(id(module), min(output.shape[-2:])))
        for layer in layers
    ]
    training = image_net.training
    try:
        parameter = next(image_net.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        with torch.inference_mode():
            image_net.eval()(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        image_net.train(training)
        for hook in hooks:
            hook.remove()
    return sides


def find_target_layer(
    image_net: nn.Module, name: str | None = None, image_size: int | None = None
) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor] | None, str]:
    """(layer, reshape_transform or None, the layer's name) for Grad-CAM; see the module docstring.

    With `image_size`, convolutions whose map is 1 x 1 at that input size are passed over.
    """
    reshape = _tokens_to_grid(int(image_net.num_prefix_tokens)) if _is_token_model(image_net) else None
    if name is not None:
        try:
            return image_net.get_submodule(name), reshape, name
        except AttributeError:
            names = [n for n, _ in image_net.named_modules() if n][-5:]
            raise MelanomaError(
                f"--target-layer {name}: no such module in the image network (its last ones: {', '.join(names)})"
            ) from None
    if reshape is not None:
        block = len(image_net.blocks) - 1
        if not hasattr(image_net.blocks[block], "norm1"):
            raise MelanomaError("Grad-CAM: this transformer's blocks have no norm1; choose one with --target-layer")
        return image_net.blocks[block].norm1, reshape, f"blocks.{block}.norm1"
    convolutions = [
        (n, m)
        for n, m in image_net.named_modules()
        if isinstance(m, nn.Conv2d) and not SHORTCUT_NAMES.intersection(n.split("."))
    ]
    if not convolutions:
        raise MelanomaError("Grad-CAM: the image network has no Conv2d layer; choose one with --target-layer")
    if image_size is not None:
        sides = _map_sides(image_net, [layer for _, layer in convolutions], image_size)
        convolutions = [(n, m) for n, m in convolutions if sides.get(id(m), 2) > 1] or convolutions
    layer_name, layer = convolutions[-1]
    return layer, None, layer_name


@dataclass
class Explanation:
    probability: float  # melanoma probability, as `predict` gives it (no TTA)
    heatmap: np.ndarray  # (S, S) in 0-1 over the network's input, relative to this image's strongest evidence
    overlay: Image.Image  # the network's view of the image with the heatmap blended in (RGB)

    @property
    def empty(self) -> bool:
        """No region raised the melanoma logit at the target layer: the map is all zero, and says nothing."""
        return not bool(self.heatmap.max() > 0)

    def overlay_png(self) -> bytes:
        buffer = io.BytesIO()
        self.overlay.save(buffer, format="PNG")
        return buffer.getvalue()


class Explainer:
    """Grad-CAM for a trained run's PyTorch model, with the Predictor's preprocessing and metadata encoding.

    One explanation at a time (a lock): pytorch_grad_cam keeps activations on the object it hooks.
    """

    def __init__(self, predictor: Predictor, target_layer: str | None = None) -> None:
        if not isinstance(predictor.model, FusionClassifier):
            raise MelanomaError("Grad-CAM needs the PyTorch model of a trained run (not an ONNX engine)")
        self.predictor = predictor
        self.layer, self.reshape, self.layer_name = find_target_layer(
            predictor.model.image_net, target_layer, predictor.config.preprocessing.image_size
        )
        self._lock = threading.Lock()

    @classmethod
    def from_run(cls, run_dir: Path, target_layer: str | None = None, device: str | None = None) -> Explainer:
        if read_ensemble(Path(run_dir)) is not None:
            raise MelanomaError(f"{run_dir}: is an ensemble; explain one member run at a time")
        return cls(Predictor.from_run(Path(run_dir), device), target_layer)

    def _inputs(self, image: Image.Image, features: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.predictor.device
        tensor = self.predictor.transform(image).unsqueeze(0).to(device)
        return tensor, torch.as_tensor(np.asarray(features, dtype=np.float32)).reshape(1, -1).to(device)

    def score(self, image: Image.Image, features: np.ndarray) -> float:
        """The probability alone, for callers that need no heatmap."""
        tensor, metadata = self._inputs(image, features)
        with self._lock, torch.inference_mode():
            return float(torch.sigmoid(self.predictor.model(tensor, metadata).float())[0])

    def explain(self, image: Image.Image, features: np.ndarray) -> Explanation:
        """Heatmap and probability for one prepared image (`load_image` output) and its metadata vector."""
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.image import show_cam_on_image
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        tensor, metadata = self._inputs(image, features)
        wrapper = ImageOnly(self.predictor.model, metadata)
        with self._lock, torch.enable_grad():
            with GradCAM(model=wrapper, target_layers=[self.layer], reshape_transform=self.reshape) as cam:
                heatmap = cam(input_tensor=tensor, targets=[ClassifierOutputTarget(0)])[0]
                probability = float(torch.sigmoid(cam.outputs[0, 0].detach().float()))
            self.predictor.model.zero_grad(set_to_none=True)
        view = self.network_view(tensor[0])
        overlay = show_cam_on_image(view, heatmap, use_rgb=True, image_weight=OVERLAY_IMAGE_WEIGHT)
        return Explanation(probability, heatmap.astype(np.float32), Image.fromarray(overlay))

    def network_view(self, tensor: torch.Tensor) -> np.ndarray:
        """(H, W, 3) float RGB in 0-1: the normalised input turned back into the picture the network saw."""
        preprocessing = self.predictor.config.preprocessing
        mean = torch.tensor(preprocessing.mean, device=tensor.device).view(3, 1, 1)
        std = torch.tensor(preprocessing.std, device=tensor.device).view(3, 1, 1)
        return (tensor * std + mean).clamp(0, 1).permute(1, 2, 0).cpu().numpy().astype(np.float32)


def _collect(paths: list[Path]) -> tuple[dict[str, Callable[[], bytes]], list[str]]:
    """Image name -> reader, from folders, zips and single files; the first of two same-named images is kept."""
    readers: dict[str, Callable[[], bytes]] = {}
    problems: list[str] = []
    for path in paths:
        path = Path(path)
        if path.is_file() and path.suffix.lower() != ".zip":
            found = {path.stem: (path, None)}
        else:
            source = ImageSource(path)
            members, index_problems = source.index()
            problems += index_problems
            found = {name: (path / member, (source, member)) for name, member in members.items()}
        for name, (where, member) in found.items():
            if name in readers:
                problems.append(f"{where}: image name {name} was already given; kept the first")
            elif member is None:
                readers[name] = where.read_bytes
            else:
                readers[name] = lambda source=member[0], member=member[1]: source.read_bytes(member)
    return readers, problems


def explain(config: ExplainConfig) -> pd.DataFrame:
    """The `explain` command: OUT/<image_name>.png heatmap overlays and OUT/scores.csv (probability per image;
    `heatmap_empty` marks maps where no region raised the melanoma score)."""
    if not config.images:
        raise MelanomaError("explain: give --images (folders, zips or image files)")
    explainer = Explainer.from_run(Path(config.run), config.target_layer)
    readers, problems = _collect(list(config.images))
    if not readers:
        raise MelanomaError(f"{', '.join(map(str, config.images))}: no JPEG or PNG images found")
    names = sorted(readers)
    frame, metadata_problems = raw_frame(names, config.metadata)
    features = explainer.predictor.features(frame)
    for problem in problems + metadata_problems:
        print(f"warning: {problem}")
    out = Path(config.out)
    probabilities, heatmaps, empty = [], [], []
    for index, name in enumerate(tqdm(names, desc="explain", unit="image", disable=None, leave=False)):
        try:
            image = load_image(readers[name](), explainer.predictor.prepared_size)
        except (ValueError, OSError) as exc:
            print(f"warning: {name}: {exc}; no heatmap")
            probabilities.append(np.nan)
            heatmaps.append("")
            empty.append(None)
            continue
        explanation = explainer.explain(image, features[index])
        atomic_write_bytes(out / f"{name}.png", explanation.overlay_png())
        probabilities.append(explanation.probability)
        heatmaps.append(f"{name}.png")
        empty.append(explanation.empty)
    scores = pd.DataFrame(
        {"image_name": names, "probability": probabilities, "heatmap": heatmaps, "heatmap_empty": empty}
    )
    atomic_write_text(out / "scores.csv", scores.to_csv(index=False))
    return scores
