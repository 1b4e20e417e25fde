"""python -m pipeline.measure: curves, indices and Fig 2 of a torchvision ResNet; clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from models.torchvision_resnet import TorchvisionResNet
from pipeline.measure import EXIT_USAGE, Measurement, draw_fig2, main
from pipeline.tasks import Task
from vocabulary import CURVE_COLUMNS, CURVES, INDEX_NAMES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = 3
FAST = ["--examples", "12", "--extra-evaluations", "2", "--workers", "0", "--quiet"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return an ImageFolder of 3 classes x 6 PNG images of 40x48 px, each class its colour."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        (root / f"class{c}").mkdir()
        for i in range(6):
            level = 40 + 80 * c
            pixels = np.clip(level + rng.normal(0, 20, (40, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


def check_outputs(out: Path, stages: int = 4) -> dict:
    """Check the three files and return indices.json."""
    curves = pd.read_parquet(out / "curves.parquet")
    assert tuple(curves.columns) == CURVE_COLUMNS
    assert sorted(set(curves["stage"])) == list(range(1, stages + 1))
    document = json.loads((out / "indices.json").read_text())
    keys = {f"{i}_stage{s}" for i in INDEX_NAMES for s in range(1, stages + 1)} | set(INDEX_NAMES)
    assert set(document["indices"]) == keys
    # NaN (a network at chance) is written as null: JSON has no NaN.
    assert all(v is None or 0 <= v <= 1 for v in document["indices"].values())
    assert [row["blocks"] for row in document["stages"]] == [
        int(curves[(curves["stage"] == s) & (curves["curve"] == "readout")]["step"].max())
        for s in range(1, stages + 1)
    ]
    assert (out / "fig2.png").read_bytes()[:8] == PNG_MAGIC
    return document


def test_measures_a_random_resnet18_on_an_image_folder(image_folder, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--arch", "resnet18", "--image-folder", str(image_folder), "--image-size", "32"]
    assert main([*argv, *FAST, "--out", str(out)]) == 0
    document = check_outputs(out)
    assert document["arch"] == "resnet18" and document["examples"] == 12
    assert document["num_classes"] == CLASSES
    assert document["chance_error"] == pytest.approx(1 - 1 / CLASSES)
    assert [row["transition"] for row in document["stages"]] == [False, True, True, True]
    assert "overall" in capsys.readouterr().err


def test_loads_a_state_dict_and_refuses_one_that_does_not_fit(image_folder, tmp_path, capsys):
    argv = ["--arch", "resnet18", "--image-folder", str(image_folder), "--image-size", "32"]
    fitting, other = tmp_path / "fitting.pt", tmp_path / "other.pt"
    torch.manual_seed(1)
    torch.save(TorchvisionResNet("resnet18", num_classes=CLASSES).state_dict(), fitting)
    torch.save(TorchvisionResNet("resnet18", num_classes=10).state_dict(), other)
    out = tmp_path / "out"
    assert main([*argv, *FAST, "--weights", str(fitting), "--out", str(out)]) == 0
    assert check_outputs(out)["weights"] == str(fitting)
    capsys.readouterr()
    assert main([*argv, *FAST, "--weights", str(other), "--out", str(tmp_path / "x")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0, "one line"
    assert "does not fit torchvision-resnet18" in error
    assert "fc.weight [10, 512] vs [3, 512]" in error
    assert not (tmp_path / "x").exists()


def test_refuses_missing_files_and_weights_that_would_run_code(image_folder, tmp_path, capsys):
    argv = ["--arch", "resnet18", "--image-folder", str(image_folder), "--out", str(tmp_path)]
    assert main([*argv, "--weights", str(tmp_path / "absent.pt")]) == EXIT_USAGE
    assert "absent.pt: no such file" in capsys.readouterr().err
    # A pickle that would create a file when loaded: weights_only=True refuses to run it.
    marker = tmp_path / "code-ran"
    torch.save(_Opener(str(marker)), tmp_path / "evil.pt")
    assert main([*argv, "--weights", str(tmp_path / "evil.pt")]) == EXIT_USAGE
    assert "not a state_dict of plain tensors" in capsys.readouterr().err
    assert not marker.exists()
    folder = ["--arch", "resnet18", "--image-folder", str(tmp_path / "none"), "--out", "x"]
    assert main(folder) == EXIT_USAGE
    assert "no such directory" in capsys.readouterr().err


class _Opener:
    """Pickles as a call of open(path, "w"): code a malicious weights file could run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_measures_on_a_project_dataset(mnist_root, tmp_path):
    # MNIST is grey: the network's conv1 takes one channel; the images are a trial's index set.
    out = tmp_path / "out"
    argv = ["--arch", "resnet18", "--dataset", "mnist", "--data-root", str(mnist_root)]
    assert main([*argv, *FAST, "--out", str(out)]) == 0
    document = check_outputs(out)
    assert document["data"] == "MNIST" and document["num_classes"] == 10


def test_a_bad_arch_exits_2_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--arch", "resnet19", "--dataset", "cifar10", "--out", str(tmp_path)])
    assert exit_.value.code == EXIT_USAGE
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --arch: invalid choice: 'resnet19'" in error
    assert "wide_resnet50_2" in error  # the allowed names


def test_fig2_is_the_paper_s_drawing_with_a_row_per_stage() -> None:
    # Four stages (torchvision's layers); one network: panels a and b, no c.
    curves = pd.DataFrame(
        [(stage, curve, step, 0.2 + 0.1 * step) for stage in range(1, 5) for curve in CURVES
         for step in range(3)],
        columns=list(CURVE_COLUMNS),
    )  # fmt: skip
    indices = {f"{i}_stage{s}": 0.5 for i in INDEX_NAMES for s in range(1, 5)}
    indices |= {"ci": 0.5, "ri": 0.5, "di": float("nan")}
    stages = [
        {"stage": s, "layer": f"layer{s}", "transition": s > 1, "blocks": 2} for s in range(1, 5)
    ]
    result = Measurement("resnet18", "test", Task("test", 10), 8, curves, indices, stages, 0.1)
    fig = draw_fig2(result)
    assert sorted(k for k in fig.data if k.startswith("a ")) == sorted(
        f"a {curve} stage{s}" for curve in CURVES for s in range(1, 5)
    )
    assert fig.data["a extra stage4"]["error"].tolist() == pytest.approx([0.2, 0.3, 0.4])
    assert set(fig.data["b ci"]["position"]) == {"stage 1", "stage 2", "stage 3", "stage 4", "mean"}
    assert fig.data["b di"]["position"].tolist() == ["stage 1", "stage 2", "stage 3", "stage 4"]
    assert not any(k.startswith("c ") for k in fig.data)
    assert "undefined (error at chance): di" in [
        t.get_text() for sub in fig.subfigs for t in sub.texts
    ]
