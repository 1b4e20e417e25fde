"""torchvision ResNets as staged networks: exact forward, curves, indices, coupling, trials."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import block_gradients, set_random_gradients

from models import ResNetConfig, build_model, parameter_count
from models.staged import StagedNetwork, block_counts
from models.torchvision_resnet import (
    TORCHVISION_LAYERS,
    TorchvisionResNet,
    stage_block_counts,
)
from pipeline.config import CouplingSection, TrialConfig
from pipeline.coupling import GradientCoupler, mixing_matrix
from pipeline.indices import iteration_indices, naive_perturbation_curves, perturbation_curves
from pipeline.tasks import task_for
from pipeline.train import run_trial
from vocabulary import ARCHS, CURVES, INDEX_NAMES, PREACT, TORCHVISION_RESNETS

pytestmark = pytest.mark.usefixtures("one_thread")

EXTRA = 3


def network(name: str, seed: int = 0, **kwargs) -> TorchvisionResNet:
    torch.manual_seed(seed)
    return TorchvisionResNet(name, num_classes=10, **kwargs)


def labelled_batches(model, sizes=(12, 4), correct_fraction=0.75):
    """Return smooth random images labelled mostly with the model's own answers."""
    # As tests/test_indices.py: agreeing labels put e_final well below chance, so the indices
    # are defined; smooth images (2x2 noise, upsampled) vary the answers more than pixel noise.
    generator = torch.Generator().manual_seed(3)
    batches = []
    model.eval()
    for size in sizes:
        x = F.interpolate(torch.randn(size, 3, 2, 2, generator=generator), size=32, mode="bilinear")
        with torch.no_grad():
            answers = model(x).argmax(dim=1)
        noise = torch.randint(0, 10, (size,), generator=generator)
        keep = torch.rand(size, generator=generator) < correct_fraction
        batches.append((x, torch.where(keep, answers, noise)))
    return batches


# ------------------------------------------------------------------- the stage protocol


def test_layer_table_names_every_torchvision_resnet():
    assert tuple(TORCHVISION_LAYERS) == TORCHVISION_RESNETS
    assert (PREACT, *(f"torchvision-{name}" for name in TORCHVISION_RESNETS)) == ARCHS


@pytest.mark.parametrize("name", TORCHVISION_RESNETS)
def test_stages_are_the_shape_preserving_blocks_behind_each_transition(name):
    with torch.device("meta"):  # shapes only: resnet152 in milliseconds
        model = TorchvisionResNet(name)
        reference = getattr(torchvision.models, name)()
    assert isinstance(model, StagedNetwork)
    assert block_counts(model) == list(stage_block_counts(name))
    for s, layer in enumerate(model.layers()):
        first_downsamples = layer[0].downsample is not None
        # A downsampling first block is the transition; all others keep their input's shape.
        assert len(layer) == block_counts(model)[s] + first_downsamples
        assert all(block.downsample is None for block in model.stage_blocks()[s])
    bottleneck = TORCHVISION_LAYERS[name][0]
    assert (model.layer1[0].downsample is not None) == bottleneck  # resnet50: 64 -> 256 channels
    last = "bn3.bias" if bottleneck else "bn2.bias"
    assert model.block_parameters()[-1] == last
    assert list(model.state_dict()) == list(reference.state_dict())
    assert parameter_count(ResNetConfig(arch=f"torchvision-{name}"), 3, 1000) == sum(
        p.numel() for p in reference.parameters()
    )


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_plain_forward_equals_torchvision_exactly(name):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None, num_classes=10)
    model = network(name)  # the same seed draws the same weights
    for mine, theirs in zip(
        model.state_dict().values(), reference.state_dict().values(), strict=True
    ):
        assert torch.equal(mine, theirs)
    x = torch.randn(6, 3, 32, 32)
    reference.eval(), model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    reference.train(), model.train()
    assert torch.equal(model(x), reference(x))
    # Training-mode BN updated the same running statistics in both.
    for mine, theirs in zip(
        model.state_dict().values(), reference.state_dict().values(), strict=True
    ):
        assert torch.equal(mine, theirs)
    # The protocol's pieces compose to the same pass: stem, stages, head.
    model.eval()
    with torch.no_grad():
        h = model.forward_stem(x)
        for s, n in enumerate(block_counts(model)):
            stage_input = z = model.forward_transition(s, h)
            for t in range(n):
                z = model.forward_block(s, t, z, stage_input)
            h = z
        assert torch.equal(model.forward_head(h), model(x))


def test_a_stage_runs_its_schedule_and_bad_schedules_raise():
    model = network("resnet50").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        repeated = model(x, {2: [0, 1, 2, 3, 4, 4]})
        h = model.forward_stage(1, model.forward_stage(0, model.forward_stem(x)))
        z = model.forward_stage(2, h, [0, 1, 2, 3, 4, 4])
        assert torch.equal(model.forward_from(2, z), repeated)
    with pytest.raises(ValueError, match=r"stages are 0\.\.3"):
        model(x, {4: [0]})
    with pytest.raises(ValueError, match=r"block indices must be in 0\.\.1"):
        model(x, {0: [2]})


def test_grey_inputs_replace_conv1():
    model = network("resnet18", in_channels=1)
    assert model.conv1.in_channels == 1 and model.conv1.out_channels == 64
    assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 10)


# ------------------------------------------------------------------- curves and indices


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_random_network_curves_are_complete_and_indices_in_range(name):
    task = task_for("cifar10")
    model = network(name)
    batches = labelled_batches(model, sizes=(12, 4) if name == "resnet18" else (12,))
    curves = perturbation_curves(model, batches, task, extra_evaluations=EXTRA)
    assert list(curves.columns) == ["stage", "curve", "step", "error"]
    counts = block_counts(model)
    assert sorted(set(curves["stage"])) == [1, 2, 3, 4]
    for stage, n in enumerate(counts, start=1):
        rows = curves[curves["stage"] == stage]
        assert set(rows["curve"]) == set(CURVES)
        assert rows[rows["curve"] == "readout"]["step"].tolist() == list(range(1, n + 1))
        assert rows[rows["curve"] == "dropout"]["step"].tolist() == list(range(1, n + 1))
        assert rows[rows["curve"] == "extra"]["step"].tolist() == list(range(EXTRA + 1))
    assert curves["error"].between(0, 1).all()
    if name == "resnet18":  # the reference, one forward pass per perturbation (slow)
        naive = naive_perturbation_curves(model, batches, task, extra_evaluations=EXTRA)
        pd.testing.assert_frame_equal(curves, naive, check_exact=True)
    indices = iteration_indices(curves, task.chance_error, num_stages=len(counts))
    assert set(indices) == {
        f"{i}{s}" for i in INDEX_NAMES for s in ("", "_stage1", "_stage2", "_stage3", "_stage4")
    }
    e_final = curves[(curves["curve"] == "extra") & (curves["step"] == 0)]["error"].iloc[0]
    assert e_final < task.chance_error, "labels from the network's answers put it below chance"
    assert all(0.0 <= v <= 1.0 for v in indices.values()), indices
    with pytest.raises(ValueError, match=r"stages \[4\] outside 1\.\.3"):
        iteration_indices(curves, task.chance_error)  # a 4-stage table needs num_stages=4


def test_at_chance_every_index_is_nan():
    task = task_for("cifar10")
    model = network("resnet18")
    x, _ = labelled_batches(model, sizes=(8,))[0]
    with torch.no_grad():
        wrong = (model(x).argmax(dim=1) + 1) % 10  # every label differs from the answer
    curves = perturbation_curves(model, [(x, wrong)], task, extra_evaluations=EXTRA)
    indices = iteration_indices(curves, task.chance_error, num_stages=4)
    assert all(math.isnan(v) for v in indices.values())


def test_at_chance_by_float_rounding_is_at_chance():
    # 8 of 12 wrong with 3 classes: 8/12 is one ulp below 1 - 1/3, still no better than chance.
    rows = [(s, c, step, 8 / 12) for s in (1, 2, 3) for c, step in (("readout", 1), ("dropout", 1))]
    rows += [(s, "extra", k, 8 / 12) for s in (1, 2, 3) for k in (0, 1)]
    curves = pd.DataFrame(rows, columns=["stage", "curve", "step", "error"])
    assert 8 / 12 < 1 - 1 / 3
    assert all(math.isnan(v) for v in iteration_indices(curves, 1 - 1 / 3).values())


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_identity_blocks_give_perfect_convergence_and_recurrence(name):
    # Each shape-preserving block is relu(bn_last(...) + z); with the last BN's weight and bias
    # zero it returns relu(z) = z, since z comes out of a ReLU. No perturbation changes anything.
    task = task_for("cifar10")
    model = network(name)
    with torch.no_grad():
        for blocks in model.stage_blocks():
            for block in blocks:
                last = block.bn3 if hasattr(block, "bn3") else block.bn2
                last.weight.zero_()
                last.bias.zero_()
    model.eval()
    batches = labelled_batches(model, sizes=(12,))
    curves = perturbation_curves(model, batches, task, extra_evaluations=EXTRA)
    e_final = curves["error"].iloc[0]
    assert 0 < e_final < task.chance_error
    assert (curves["error"] == e_final).all()
    indices = iteration_indices(curves, task.chance_error, num_stages=4)
    for stage in ("_stage1", "_stage2", "_stage3", "_stage4", ""):
        assert indices[f"ci{stage}"] == 1.0
        assert indices[f"ri{stage}"] == 1.0
        assert indices[f"di{stage}"] == 0.0


# ------------------------------------------------------------------- soft gradient coupling


def check_stage_mixing(model, before, weights_of) -> None:
    """Check g_t == sum_u W[t][u] g_u(before) with W = weights_of(N) in every stage."""
    after = block_gradients(model)
    for key, grads in before.items():
        weights = weights_of(len(grads))
        for t, new in enumerate(after[key]):
            expected = sum(w * g for w, g in zip(weights[t], grads, strict=True))
            torch.testing.assert_close(new, expected, rtol=1e-5, atol=1e-6, msg=f"{key} t={t}")


@pytest.fixture(scope="module")
def resnet50() -> TorchvisionResNet:
    """Return a random resnet50: Bottleneck blocks, stages of 2, 3, 5, 2 blocks."""
    return network("resnet50")


def test_zero_coupling_leaves_gradients_bit_identical(resnet50):
    set_random_gradients(resnet50)
    before = {name: p.grad.clone() for name, p in resnet50.named_parameters()}
    GradientCoupler(resnet50, CouplingSection(lam=0.0)).apply()
    for name, p in resnet50.named_parameters():
        assert torch.equal(p.grad, before[name]), name


@pytest.mark.parametrize("lam", [0.5, 1.0])
def test_coupling_mixes_each_stage_towards_its_own_mean(resnet50, lam):
    set_random_gradients(resnet50)
    before = block_gradients(resnet50)
    in_blocks = {id(b.get_parameter(n)) for (s, n) in before for b in resnet50.stage_blocks()[s]}
    others = {n: p.grad.clone() for n, p in resnet50.named_parameters() if id(p) not in in_blocks}
    assert any(n.startswith("layer2.0.") for n in others)  # the transitions are not coupled
    GradientCoupler(resnet50, CouplingSection(lam=lam)).apply()
    # g_t <- (1 - lam) g_t + lam * mean_u g_u over the N blocks of the stage (lam 1: the mean).
    check_stage_mixing(
        resnet50,
        before,
        lambda n: [[(1 - lam) * (t == u) + lam / n for u in range(n)] for t in range(n)],
    )
    for name, p in resnet50.named_parameters():
        if name in others:
            assert torch.equal(p.grad, others[name]), f"{name} is not a stage block's"
    if lam == 1.0:
        for (_, name), _ in before.items():
            for blocks in resnet50.stage_blocks():
                grads = [b.get_parameter(name).grad for b in blocks]
                for g in grads[1:]:
                    torch.testing.assert_close(g, grads[0], rtol=1e-5, atol=1e-6)


def test_triangular_and_partial_coupling_use_each_stage_n(resnet50):
    set_random_gradients(resnet50)
    before = block_gradients(resnet50)
    settings = CouplingSection(lam=0.5, kernel="triangular", first_coupled=1)
    GradientCoupler(resnet50, settings).apply()
    # Bandwidth N/2 of each stage's own N; block 0 keeps its own gradient.
    check_stage_mixing(
        resnet50, before, lambda n: mixing_matrix(n, 0.5, "triangular", first_coupled=1).tolist()
    )
    with pytest.raises(ValueError, match=r"coupling\.first_coupled=2: allowed is 0\.\.1"):
        GradientCoupler(resnet50, CouplingSection(first_coupled=2))


def max_block_difference(model) -> float:
    """Return the largest |difference| of any block's parameters from its stage's first."""
    worst = 0.0
    for blocks in model.stage_blocks():
        first = dict(blocks[0].named_parameters())
        for block in blocks[1:]:
            for name, p in block.named_parameters():
                worst = max(worst, float((p.detach() - first[name].detach()).abs().max()))
    return worst


@pytest.mark.parametrize(("lam", "identical"), [(1.0, True), (0.0, False)])
def test_full_coupling_keeps_recurrent_blocks_identical(lam, identical):
    torch.manual_seed(0)
    model = build_model(ResNetConfig(arch="torchvision-resnet18", recurrent_init=True))
    assert max_block_difference(model) == 0.0
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    coupler = GradientCoupler(model, CouplingSection(lam=lam))
    generator = torch.Generator().manual_seed(2)
    model.train()
    for _ in range(3):
        x = torch.randn(8, 3, 32, 32, generator=generator)
        y = torch.randint(0, 10, (8,), generator=generator)
        optimiser.zero_grad()
        F.cross_entropy(model(x), y).backward()
        coupler.apply()
        optimiser.step()
    if identical:
        assert max_block_difference(model) <= 1e-6
    else:  # the control: uncoupled blocks drift apart, so the check above can fail
        assert max_block_difference(model) > 1e-4


# ------------------------------------------------------------------- config and trials


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        ({"model.arch": "resnet18"}, "model.arch='resnet18': allowed are ('preact', "),
        (
            {"model.arch": "torchvision-resnet18", "model.block": "icr"},
            "model.block='icr': spectral normalisation is specific to the project's "
            "pre-activation blocks",
        ),
        (
            {"model.arch": "torchvision-resnet50", "model.width": 8},
            "model.width=8: does not apply to model.arch='torchvision-resnet50'",
        ),
        (
            {"model.arch": "torchvision-resnet50", "model.blocks_per_stage": 4},
            "model.blocks_per_stage=4: does not apply",
        ),
        (
            {"model.arch": "torchvision-resnet18", "coupling.first_coupled": 1},
            "coupling.first_coupled=1: must be in 0..0 (the stages of "
            "model.arch='torchvision-resnet18' have [2, 1, 1, 1] blocks)",
        ),
    ],
)
def test_torchvision_configs_refuse_what_does_not_apply(updates, message):
    with pytest.raises(ValueError) as error:
        TrialConfig.from_dict(updates)
    assert message in str(error.value)


def test_torchvision_config_builds_its_network():
    config = TrialConfig.from_dict(
        {"model.arch": "torchvision-resnet50", "model.recurrent_init": True, "coupling.lam": 1}
    )
    assert config.to_flat_dict()["model.arch"] == "torchvision-resnet50"
    assert TrialConfig().model.arch == "preact"
    model = build_model(config.model, in_channels=1, num_classes=7)
    assert isinstance(model, TorchvisionResNet) and model.fc.out_features == 7
    assert max_block_difference(model) == 0.0
    gamma = build_model(ResNetConfig(arch="torchvision-resnet18", bn_gamma_init=0.1))
    assert all((b.bn2.weight == 0.1).all() for blocks in gamma.stage_blocks() for b in blocks)
    assert (gamma.layer2[0].bn2.weight == 1.0).all()  # a transition is not a stage's block


def test_tiny_trial_with_a_torchvision_resnet(mnist_root):
    # MNIST is grey: the trial's network has a one-channel conv1.
    config = TrialConfig.from_dict(
        {
            "model.arch": "torchvision-resnet18",
            "model.recurrent_init": True,
            "coupling.lam": 0.5,
            "data.dataset": "mnist",
            "data.root": str(mnist_root),
            "data.index_examples": 32,
            "optim.batch_size": 64,
            "optim.lr": 0.4,
            "optim.epochs": 2,
            "run.device": "cpu",
            "run.extra_evaluations": EXTRA,
            "run.threads": 1,
        }
    )
    result = run_trial(config)
    assert isinstance(result.model, TorchvisionResNet)
    for key in ("final_test_error", "final_test_loss", "final_train_loss", "parameters"):
        assert math.isfinite(result.metrics[key]), key
    assert all(math.isfinite(v) for h in result.history for v in h.values())
    assert sorted(set(result.curves["stage"])) == [1, 2, 3, 4]
    assert set(result.indices) == {
        f"{i}{s}" for i in INDEX_NAMES for s in ("", "_stage1", "_stage2", "_stage3", "_stage4")
    }
    assert all(math.isnan(v) or 0 <= v <= 1 for v in result.indices.values())
    # The stored network description rebuilds it (as pipeline.trained_model does).
    rebuilt = build_model(
        ResNetConfig(**result.network["model"]),
        result.network["in_channels"],
        result.network["num_classes"],
    )
    rebuilt.load_state_dict(result.model.state_dict())
    assert rebuilt.conv1.in_channels == 1
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        # The trial's network is channels-last: other kernels, other rounding.
        torch.testing.assert_close(rebuilt.eval()(x), result.model.eval()(x), rtol=1e-4, atol=0)
