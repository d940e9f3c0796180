from pathlib import Path

import pytest

from melanoma.config import SplitConfig, TrainConfig, build_config, write_yaml
from melanoma.errors import MelanomaError


def test_flags_override_yaml_which_overrides_defaults(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("data: d\nout: r\nepochs: 3\nlr: 0.01\n")
    config = build_config(TrainConfig, path, epochs=5)
    assert config.epochs == 5  # flag
    assert config.lr == 0.01  # file
    assert config.batch_size == 16  # default
    assert config.data == Path("d")


def test_a_run_config_yaml_is_read_from_its_train_section(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    write_yaml(path, {"train": {"data": "d", "out": "r", "epochs": 7}, "versions": {"torch": "x"}})
    assert build_config(TrainConfig, path).epochs == 7


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("data: d\nout: r\nepochz: 3\n", "unknown field(s) epochz"),
        ("data: d\nout: r\nepochs: three\n", "config field 'epochs'"),
        ("data: d\nout: r\nuse_metadata: maybe\n", "config field 'use_metadata'"),
        ("out: r\n", "missing required field(s) data"),
        ("[1, 2", "not valid YAML"),
    ],
)
def test_bad_config_files_give_one_line_naming_the_field(tmp_path: Path, yaml_text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(MelanomaError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_config(TrainConfig, path)


def test_types_are_coerced_from_strings() -> None:
    config = build_config(SplitConfig, data="d", test_size="0.3", seed="4")
    assert (config.test_size, config.seed) == (0.3, 4)
    assert build_config(TrainConfig, data="d", out="o", metadata_hidden="16,8").metadata_hidden == [16, 8]
