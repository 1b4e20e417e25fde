"""Perturbation curves and iterative convergence indices (docs/method.md)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from helpers import labelled_batches, trained_statistics_model

from pipeline.indices import (
    iteration_indices,
    naive_perturbation_curves,
    perturbation_curves,
    perturbation_schedules,
)
from pipeline.tasks import task_for
from vocabulary import BLOCK_TYPES

EXTRA = 3


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("dataset", ["cifar10", "digitclutter-3"])
@pytest.mark.parametrize("block", BLOCK_TYPES)
def test_cached_curves_equal_naive_curves(block, dataset):
    task = task_for(dataset)
    model = trained_statistics_model(block)
    batches = labelled_batches(model, task)
    naive = naive_perturbation_curves(model, batches, task, extra_evaluations=EXTRA)
    assert naive["error"].nunique() > 1, "degenerate curves would make this test vacuous"
    # None: the default (one branch at a time on a CPU); 20: a few branches per batch; 4096: all.
    for budget in (None, 20, 4096):
        cached = perturbation_curves(
            model, batches, task, extra_evaluations=EXTRA, max_branch_examples=budget
        )
        pd.testing.assert_frame_equal(cached, naive, check_exact=True)


def test_cached_curves_with_a_single_block():
    task = task_for("cifar10")
    model = trained_statistics_model("ordinary", blocks=1)
    batches = labelled_batches(model, task)
    naive = naive_perturbation_curves(model, batches, task, extra_evaluations=2)
    cached = perturbation_curves(model, batches, task, extra_evaluations=2)
    pd.testing.assert_frame_equal(cached, naive, check_exact=True)


def test_curve_table_layout():
    task = task_for("cifar10")
    model = trained_statistics_model("ordinary")
    curves = perturbation_curves(model, labelled_batches(model, task), task, extra_evaluations=2)
    assert list(curves.columns) == ["stage", "curve", "step", "error"]
    for stage in (1, 2, 3):
        rows = curves[curves["stage"] == stage]
        assert rows[rows["curve"] == "readout"]["step"].tolist() == [1, 2, 3]
        assert rows[rows["curve"] == "dropout"]["step"].tolist() == [1, 2, 3]
        assert rows[rows["curve"] == "extra"]["step"].tolist() == [0, 1, 2]
        final = rows[(rows["curve"] == "readout") & (rows["step"] == 3)]["error"].item()
        assert rows[(rows["curve"] == "extra") & (rows["step"] == 0)]["error"].item() == final


def test_schedules_are_one_indexed():
    by_key = {(c, s): schedule for c, s, schedule in perturbation_schedules(3, 2)}
    assert by_key[("readout", 1)] == [0]
    assert by_key[("readout", 3)] == [0, 1, 2]
    assert by_key[("dropout", 1)] == [1, 2]
    assert by_key[("dropout", 3)] == [0, 1]
    assert by_key[("extra", 0)] == [0, 1, 2]
    assert by_key[("extra", 2)] == [0, 1, 2, 2, 2]


def test_model_mode_is_restored():
    task = task_for("cifar10")
    model = trained_statistics_model("icr")
    batches = labelled_batches(model, task, sizes=(4,))
    model.train()
    model.head.eval()  # a mixed state must come back as it was
    perturbation_curves(model, batches, task, extra_evaluations=1)
    assert model.training and model.stages[0].training and not model.head.training
    model.eval()
    perturbation_curves(model, batches, task, extra_evaluations=1)
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("block", BLOCK_TYPES)
def test_identity_network_indices(block):
    # With conv2 = 0 every residual function is 0: ordinary and ICR blocks return z, PCR
    # blocks return the stage input, so no perturbation changes any stage's output.
    task = task_for("cifar10")
    model = trained_statistics_model(block, blocks=4)
    with torch.no_grad():
        for stage in model.stages:
            for b in stage.blocks:
                b.conv2.weight.zero_()
    curves = perturbation_curves(model, labelled_batches(model, task), task, extra_evaluations=4)
    e_final = curves["error"].iloc[0]
    assert 0 < e_final < task.chance_error
    assert (curves["error"] == e_final).all()
    indices = iteration_indices(curves, task.chance_error)
    for stage in ("_stage1", "_stage2", "_stage3", ""):
        assert indices[f"ci{stage}"] == 1.0
        assert indices[f"ri{stage}"] == 1.0
        assert indices[f"di{stage}"] == 0.0


def curve_table(stages: dict[int, dict[str, list[float]]]) -> pd.DataFrame:
    rows = []
    for stage, curves in stages.items():
        for curve, errors in curves.items():
            first = 0 if curve == "extra" else 1
            rows += [(stage, curve, first + i, e) for i, e in enumerate(errors)]
    return pd.DataFrame(rows, columns=["stage", "curve", "step", "error"])


HAND_CURVES = {
    # e_final = 0.1, chance 0.9: the normalising distance is 0.8.
    1: {
        "readout": [0.9, 0.5, 0.3, 0.1],  # n = 1, 0.5, 0.25 -> CI = 1 - 1.75/3 = 5/12
        "dropout": [0.9, 0.3, 0.1, 0.3],  # |d - d(N)|/0.8 = 0.75, 0, 0.25 -> RI = 2/3
        "extra": [0.1, 0.5, 1.0],  # n = 0.5, 1 (clipped) -> DI = 3/4
    },
    2: {
        "readout": [0.05, 0.2, 0.1, 0.1],  # n = 0 (clipped), 0.125, 0 -> CI = 23/24
        "dropout": [0.1, 0.1, 0.1, 0.1],  # RI = 1
        "extra": [0.1, 0.1, 0.1],  # DI = 0
    },
    3: {
        "readout": [0.9, 0.9, 0.9, 0.1],  # CI = 0
        "dropout": [0.9, 0.9, 0.9, 0.1],  # RI = 0
        "extra": [0.1, 0.9, 0.95],  # DI = 1
    },
}
HAND_INDICES = {
    "ci_stage1": 5 / 12,
    "ri_stage1": 2 / 3,
    "di_stage1": 3 / 4,
    "ci_stage2": 23 / 24,
    "ri_stage2": 1.0,
    "di_stage2": 0.0,
    "ci_stage3": 0.0,
    "ri_stage3": 0.0,
    "di_stage3": 1.0,
    "ci": (5 / 12 + 23 / 24) / 3,
    "ri": (2 / 3 + 1) / 3,
    "di": (3 / 4 + 1) / 3,
}


def test_hand_written_curves_give_hand_computed_indices():
    curves = curve_table(HAND_CURVES)
    indices = iteration_indices(curves, 0.9)
    assert indices.keys() == HAND_INDICES.keys()
    for key, expected in HAND_INDICES.items():
        assert indices[key] == pytest.approx(expected, abs=1e-12), key
    shuffled = curves.sample(frac=1.0, random_state=0)
    assert iteration_indices(shuffled, 0.9) == pytest.approx(indices, abs=1e-12)


def test_network_at_or_worse_than_chance_has_undefined_indices():
    # e_chance - e_final <= 0: nothing to normalise by. A finite value would claim a network
    # that never left chance is perfectly convergent.
    for final in (0.9, 0.95):
        curves = curve_table(
            {
                s: {"readout": [0.95, final], "dropout": [0.9, 0.9], "extra": [final, 0.85, 0.92]}
                for s in (1, 2, 3)
            }
        )
        indices = iteration_indices(curves, 0.9)
        assert indices.keys() == HAND_INDICES.keys()
        assert all(math.isnan(v) for v in indices.values()), indices
    # Just below chance the indices are defined again.
    curves = curve_table(
        {
            s: {"readout": [0.95, 0.8], "dropout": [0.9, 0.9], "extra": [0.8, 0.85]}
            for s in (1, 2, 3)
        }
    )
    indices = iteration_indices(curves, 0.9)
    assert (indices["ci"], indices["ri"], indices["di"]) == pytest.approx((0.0, 1.0, 0.5))


def test_single_block_and_no_extra_evaluations():
    # No block before the last and no extra evaluation: nothing can deviate.
    one = {"readout": [0.3], "dropout": [0.5], "extra": [0.3]}
    indices = iteration_indices(curve_table({1: one, 2: one, 3: one}), 0.9)
    assert (indices["ci"], indices["ri"], indices["di"]) == (1.0, 1.0, 0.0)


def test_bad_curve_tables_raise():
    curves = curve_table(HAND_CURVES)
    gap = curves[~((curves["stage"] == 2) & (curves["curve"] == "readout") & (curves["step"] == 2))]
    with pytest.raises(ValueError, match="stage 2"):
        iteration_indices(gap, 0.9)
    with pytest.raises(ValueError, match="error"):
        iteration_indices(curves.drop(columns="error"), 0.9)
    with pytest.raises(ValueError, match=r"chance_error=1\.5"):
        iteration_indices(curves, 1.5)


def test_bad_arguments_raise():
    task = task_for("cifar10")
    model = trained_statistics_model("ordinary", blocks=1)
    batches = labelled_batches(model, task, sizes=(2,))
    with pytest.raises(ValueError, match="extra_evaluations=-1"):
        perturbation_curves(model, batches, task, extra_evaluations=-1)
    with pytest.raises(ValueError, match="max_branch_examples=0"):
        perturbation_curves(model, batches, task, max_branch_examples=0)
    with pytest.raises(ValueError, match="no examples"):
        perturbation_curves(model, [], task)
