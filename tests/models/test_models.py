import pytest
import torch

from melanoma.errors import MelanomaError
from melanoma.models import BasicCNN, create_model


@pytest.mark.parametrize("size", [32, 64, 96])
def test_basic_cnn_gives_a_feature_vector_at_any_size(size: int) -> None:
    net = BasicCNN(num_features=24)
    assert net(torch.randn(2, 3, size, size)).shape == (2, 24) == (2, net.num_features)


def test_basic_cnn_has_the_founding_architecture() -> None:
    net = BasicCNN()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size[0] for c in convs] == [7, 7, 5, 5, 5, 5]
    assert sum(isinstance(m, torch.nn.Linear) for m in net.modules()) == 3
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 6


def test_fused_model_uses_both_inputs() -> None:
    torch.manual_seed(0)
    model = create_model("basic-cnn", 13, [8], 16, 0.0).eval()
    images, metadata = torch.randn(4, 3, 32, 32), torch.randn(4, 13)
    logits = model(images, metadata)
    assert logits.shape == (4,)
    assert not torch.allclose(logits, model(images, metadata + 1.0))
    model.train()
    model(images, metadata).sum().backward()
    assert model.metadata_net.layers[0].weight.grad.abs().sum() > 0
    assert model.image_net.features[0][0].weight.grad.abs().sum() > 0


def test_image_only_model_ignores_metadata() -> None:
    model = create_model("basic-cnn", 0, [8], 16, 0.0).eval()
    images = torch.randn(2, 3, 32, 32)
    assert model.metadata_net is None
    torch.testing.assert_close(model(images, torch.zeros(2, 0)), model(images, torch.zeros(2, 0)))


def test_unknown_model_suggests_similar_names() -> None:
    with pytest.raises(MelanomaError, match=r"--model resnest9000: neither basic-cnn nor a timm model.*resnest50d"):
        create_model("resnest9000", 0, [8], 16, 0.0)
