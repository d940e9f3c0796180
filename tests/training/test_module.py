from pathlib import Path

import torch

from melanoma.config import TrainConfig
from melanoma.models import create_model
from melanoma.training.fit import resolve
from melanoma.training.module import LesionClassifierModule


def test_the_two_learning_rates_reach_their_parameter_groups() -> None:
    model = create_model("test_efficientnet", 13, [8], 16, 0.0)
    module = LesionClassifierModule(model, lr=1e-3, backbone_lr=1e-5, weight_decay=0.0, warmup_epochs=0)
    optimizer = torch.optim.AdamW(module.parameter_groups())
    groups = {group["name"]: group for group in optimizer.param_groups}
    assert groups["backbone"]["lr"] == 1e-5 and groups["head"]["lr"] == 1e-3
    backbone_ids = {id(p) for p in groups["backbone"]["params"]}
    assert backbone_ids == {id(p) for p in model.image_net.parameters()}
    head_ids = {id(p) for p in groups["head"]["params"]}
    assert head_ids == {id(p) for p in model.parameters()} - backbone_ids
    assert any(id(p) in head_ids for p in model.metadata_net.parameters())


def test_resolve_fills_model_dependent_defaults() -> None:
    base = TrainConfig(data=Path("d"), out=Path("r"))
    basic = resolve(base)
    assert (basic.image_size, basic.crop_pct, basic.backbone_lr) == (512, 1.0, basic.lr)
    lite0 = resolve(TrainConfig(data=Path("d"), out=Path("r"), model="tf_efficientnet_lite0", pretrained=True))
    assert (lite0.image_size, lite0.crop_pct) == (224, 0.875)
    assert lite0.backbone_lr == lite0.lr / 10
    explicit = resolve(TrainConfig(data=Path("d"), out=Path("r"), image_size=416, crop_pct=0.8125, backbone_lr=3e-5))
    assert (explicit.image_size, explicit.crop_pct, explicit.backbone_lr) == (416, 0.8125, 3e-5)


def test_channels_last_changes_layout_not_results() -> None:
    torch.manual_seed(0)
    model = create_model("basic-cnn", 13, [8], 16, 0.0).eval()
    images, metadata = torch.randn(2, 3, 32, 32), torch.randn(2, 13)
    expected = model(images, metadata)
    module = LesionClassifierModule(model, 1e-3, 1e-3, 0.0, 0.0, channels_last=True).eval()
    assert model.image_net.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(module(images, metadata), expected, atol=1e-5, rtol=1e-4)
