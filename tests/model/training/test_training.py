"""The training loop: runs, resumes exactly, refuses a mixed-up run folder, and starts from provisioned weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from radtriage.model.training.config import TrainingConfig
from radtriage.model.training.trainer import (
    CHECKPOINT_FILE,
    MODEL_FILE,
    RunFolderError,
    build_training_network,
    masked_bce,
    train,
)

from .conftest import tiny_config


def test_tiny_run_writes_everything_a_run_needs(tiny_run: Path) -> None:
    for name in ("config.json", "split.csv", "split_counts.json", CHECKPOINT_FILE, MODEL_FILE, "history.json",
                 "training.json"):
        assert (tiny_run / name).is_file(), name
    history = json.loads((tiny_run / "history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2]
    assert all(record["train_loss"] > 0 for record in history)
    # The run is reproducible from its config.
    assert TrainingConfig.load(tiny_run / "config.json") == tiny_config(*_data_of(tiny_run))


def _data_of(run: Path) -> tuple[Path, Path]:
    site, ext = json.loads((run / "config.json").read_text())["data"]
    return Path(site), Path(ext)


def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(
    tiny_data: tuple[Path, Path], tiny_run: Path, tmp_path: Path
) -> None:
    config = tiny_config(*tiny_data)  # the recipe of `tiny_run`, which ran both epochs in one go
    first = train(config, tmp_path / "resumed", stop_after_epochs=1)
    assert first.epochs_run == 1
    assert train(config, tmp_path / "resumed").epochs_run == 2

    straight = torch.load(tiny_run / CHECKPOINT_FILE, weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / CHECKPOINT_FILE, weights_only=True)
    assert straight["history"][-1]["train_loss"] == resumed["history"][-1]["train_loss"]
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name


def test_a_run_folder_with_another_config_is_refused(tiny_run: Path) -> None:
    config = TrainingConfig.load(tiny_run / "config.json")
    with pytest.raises(RunFolderError, match="another config"):
        train(config.replace(learning_rate=0.5), tiny_run)


def test_config_round_trips_and_refuses_nonsense(tmp_path: Path) -> None:
    config = TrainingConfig(data=("a",), labels=("Pneumonia", "Lung Opacity"))
    config.save(tmp_path / "c.json")
    assert TrainingConfig.load(tmp_path / "c.json") == config
    with pytest.raises(ValueError, match="torchxrayvision label names; unknown: Pneumonitis"):
        TrainingConfig(labels=("Pneumonitis",))
    with pytest.raises(ValueError, match="unknown training config keys: colour"):
        TrainingConfig.from_dict({"colour": "blue"})


def test_masked_loss_ignores_unknown_labels() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    known = masked_bce(logits, torch.tensor([[1.0, float("nan")], [0.0, float("nan")]]))
    only_first = masked_bce(logits[:, :1], torch.tensor([[1.0], [0.0]]))
    assert torch.isclose(known, only_first)


def test_densenet_fine_tunes_from_torchxrayvision_weights_on_disk(tiny_data: tuple[Path, Path], tmp_path: Path) -> None:
    """An air-gapped site provisions torchxrayvision's file; here a stand-in in the same format (a pickled model)."""
    from radtriage.model._xrv import import_xrv

    xrv = import_xrv()
    torch.manual_seed(0)
    stand_in = xrv.models.DenseNet(weights=None, num_classes=18, in_channels=1)
    weights_file = tmp_path / "densenet121-res224-all.pt"
    torch.save(stand_in, weights_file)  # torchxrayvision publishes whole pickled models like this

    site, _ = tiny_data
    config = tiny_config(site, architecture="xrv-densenet121", pretrained=str(weights_file), epochs=1,
                         batch_size=32, cache_dir=str(tmp_path / "cache"))
    network = build_training_network(config)
    assert torch.equal(network.features.conv0.weight, stand_in.features.conv0.weight)
    assert network.classifier.out_features == 2

    train(config, tmp_path / "densenet")
    tuned = torch.load(tmp_path / "densenet" / MODEL_FILE, weights_only=True)
    assert tuned["classifier.weight"].shape == (2, 1024)
    assert not torch.equal(tuned["features.denseblock4.denselayer16.conv2.weight"],
                           stand_in.features.denseblock4.denselayer16.conv2.weight)


def test_a_corrupt_image_stops_training_with_its_file_name(tmp_path: Path) -> None:
    from radtriage.model.datasets import DatasetError

    from .conftest import make_site_folder

    site = make_site_folder(tmp_path, patients=6)
    (site / "images" / "002_1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DatasetError, match="002_1.png: cannot be used"):
        train(tiny_config(site, split_fractions=(1.0, 0.0, 0.0)), tmp_path / "run")
    assert not (tmp_path / "run" / MODEL_FILE).exists()
