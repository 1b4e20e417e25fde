"""Soft gradient coupling against hand-computed values (docs/method.md)."""

from __future__ import annotations

import pytest
import torch
from helpers import block_gradients, set_random_gradients

from models import ResNetConfig, build_model
from pipeline.config import CouplingSection
from pipeline.coupling import BLOCK_PARAMETERS, GradientCoupler, coupling_kernel, mixing_matrix
from vocabulary import BLOCK_TYPES

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(blocks: int = 3, block: str = "ordinary", recurrent_init: bool = False):
    torch.manual_seed(0)
    cfg = ResNetConfig(width=4, blocks_per_stage=blocks, block=block, recurrent_init=recurrent_init)
    return build_model(cfg)


def backward_once(model) -> None:
    x = torch.randn(8, 3, 32, 32)
    y = torch.randint(0, 10, (8,))
    torch.nn.functional.cross_entropy(model(x), y).backward()


def check_against(model, before, weights: list[list[float]]) -> None:
    """Check g_t == sum_u weights[t][u] * g_u(before) for every stage and position."""
    after = block_gradients(model)
    for key, grads in before.items():
        for t, new in enumerate(after[key]):
            expected = sum(w * g for w, g in zip(weights[t], grads, strict=True))
            torch.testing.assert_close(new, expected, rtol=1e-5, atol=1e-6, msg=f"{key} t={t}")


def test_zero_coupling_leaves_gradients_bit_identical():
    model = tiny_model()
    backward_once(model)
    before = {name: p.grad.clone() for name, p in model.named_parameters()}
    GradientCoupler(model, CouplingSection(lam=0.0)).apply()
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, before[name]), name


def test_half_coupling_matches_formula():
    model = tiny_model(blocks=3)
    set_random_gradients(model)
    before = block_gradients(model)
    others = {name: p.grad.clone() for name, p in model.named_parameters() if "stages" not in name}
    GradientCoupler(model, CouplingSection(lam=0.5)).apply()
    # g_t <- 0.5 g_t + 0.5 (g_0 + g_1 + g_2) / 3
    third = 0.5 / 3
    weights = [[0.5 + third if u == t else third for u in range(3)] for t in range(3)]
    check_against(model, before, weights)
    for name, p in model.named_parameters():
        if name in others:
            assert torch.equal(p.grad, others[name]), f"{name} is not a block parameter"


def test_triangular_kernel_matches_hand_values():
    model = tiny_model(blocks=4)
    set_random_gradients(model)
    before = block_gradients(model)
    GradientCoupler(model, CouplingSection(lam=1.0, kernel="triangular", bandwidth=2.0)).apply()
    # K[t,u] = max(0, 1 - |t-u|/2): 1 on the diagonal, 0.5 next to it, 0 further away.
    weights = [
        [1 / 1.5, 0.5 / 1.5, 0, 0],
        [0.5 / 2, 1 / 2, 0.5 / 2, 0],
        [0, 0.5 / 2, 1 / 2, 0.5 / 2],
        [0, 0, 0.5 / 1.5, 1 / 1.5],
    ]
    check_against(model, before, weights)


def test_triangular_default_bandwidth_is_half_the_blocks():
    expected = torch.tensor(
        [[1.0, 0.5, 0.0, 0.0], [0.5, 1.0, 0.5, 0.0], [0.0, 0.5, 1.0, 0.5], [0.0, 0.0, 0.5, 1.0]],
        dtype=torch.float64,
    )
    assert torch.equal(coupling_kernel(4, "triangular"), expected)


def test_first_coupled_blocks_keep_their_gradients():
    model = tiny_model(blocks=4)
    set_random_gradients(model)
    before = block_gradients(model)
    GradientCoupler(model, CouplingSection(lam=0.5, first_coupled=2)).apply()
    # Blocks 0 and 1 untouched; blocks 2, 3: 0.5 g_t + 0.5 (g_2 + g_3) / 2.
    weights = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0.75, 0.25], [0, 0, 0.25, 0.75]]
    check_against(model, before, weights)
    after = block_gradients(model)
    for key, grads in before.items():
        for t in (0, 1):
            assert torch.equal(after[key][t], grads[t]), f"{key} block {t} changed"


def test_partial_triangular_mixing_matrix():
    # N = 4, h = N/2 = 2, blocks >= 1 coupled, coupling 1: rows 1..3 of K cut to columns 1..3.
    expected = torch.tensor(
        [
            [1, 0, 0, 0],
            [0, 1 / 1.5, 0.5 / 1.5, 0],
            [0, 0.5 / 2, 1 / 2, 0.5 / 2],
            [0, 0, 0.5 / 1.5, 1 / 1.5],
        ],
        dtype=torch.float64,
    )
    actual = mixing_matrix(4, 1.0, "triangular", first_coupled=1)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-15)


def test_missing_gradient_counts_as_zero():
    model = tiny_model(blocks=3)
    set_random_gradients(model)
    for stage in model.stages:
        for p in stage.blocks[1].parameters():
            p.grad = None
    before = {
        (s, name): [
            b.get_parameter(name).grad.clone()
            if i != 1
            else torch.zeros_like(b.get_parameter(name))
            for i, b in enumerate(stage.blocks)
        ]
        for s, stage in enumerate(model.stages)
        for name in BLOCK_PARAMETERS
    }
    GradientCoupler(model, CouplingSection(lam=1.0)).apply()
    check_against(model, before, [[1 / 3] * 3] * 3)


def max_block_difference(model) -> float:
    """Return the largest |difference| between any block's parameters and block 0's."""
    worst = 0.0
    for stage in model.stages:
        first = dict(stage.blocks[0].named_parameters())
        for block in stage.blocks[1:]:
            for name, p in block.named_parameters():
                worst = max(worst, float((p.detach() - first[name].detach()).abs().max()))
    return worst


def train_steps(model, coupling: float, steps: int = 20) -> None:
    generator = torch.Generator().manual_seed(2)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    coupler = GradientCoupler(model, CouplingSection(lam=coupling))
    model.train()
    for _ in range(steps):
        x = torch.randn(16, 3, 32, 32, generator=generator)
        y = torch.randint(0, 10, (16,), generator=generator)
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        coupler.apply()
        optimiser.step()


@pytest.mark.parametrize("block", BLOCK_TYPES)
def test_full_coupling_keeps_recurrent_blocks_identical(block):
    model = tiny_model(blocks=3, block=block, recurrent_init=True)
    assert max_block_difference(model) == 0.0
    train_steps(model, 1.0)
    assert max_block_difference(model) <= 1e-6


def test_without_coupling_recurrent_blocks_drift_apart():
    # The control for the test above: the blocks get different gradients, so it can fail.
    model = tiny_model(blocks=3, recurrent_init=True)
    train_steps(model, 0.0, steps=3)
    assert max_block_difference(model) > 1e-4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lam": -0.1}, "coupling.lam=-0.1: must be in [0, 1]"),
        ({"lam": 1.5}, "coupling.lam=1.5: must be in [0, 1]"),
        ({"lam": "0.5"}, "coupling.lam='0.5': expected float"),
        ({"kernel": "gaussian"}, "coupling.kernel='gaussian': allowed are"),
        ({"bandwidth": 0}, "coupling.bandwidth=0.0: must be None or a number > 0"),
        ({"bandwidth": -2.0}, "coupling.bandwidth=-2.0: must be None or a number > 0"),
        ({"first_coupled": -1}, "coupling.first_coupled=-1: must be an integer >= 0"),
        ({"first_coupled": 1.0}, "coupling.first_coupled=1.0: expected int"),
    ],
)
def test_bad_settings_raise(kwargs, message):
    with pytest.raises(ValueError) as error:
        CouplingSection(**kwargs)
    assert message in str(error.value)


def test_first_coupled_beyond_the_model_raises():
    model = tiny_model(blocks=3)
    with pytest.raises(ValueError, match=r"coupling\.first_coupled=3: allowed is 0\.\.2"):
        GradientCoupler(model, CouplingSection(first_coupled=3))
