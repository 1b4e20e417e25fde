"""analysis.toy: the error-corrective algorithm and the tiny networks of Fig 1."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis import toy
from analysis.toy import ToyConfig, error_corrective, forward_model


def test_error_corrective_algorithm_converges_to_the_true_latent() -> None:
    config = ToyConfig()
    z = np.random.default_rng(0).uniform(-2, 2, size=(100, 2))
    estimates = error_corrective(forward_model(z, config.alphas), config.alphas, config.eps, 40)
    assert estimates.shape == (41, 100, 2)
    np.testing.assert_allclose(estimates[0], forward_model(z, config.alphas))  # starts at x
    np.testing.assert_allclose(estimates[-1], z, atol=1e-9)
    distance = np.linalg.norm(estimates - z, axis=-1)
    assert np.all(np.diff(distance, axis=0) <= 1e-12)  # every step gets closer


def test_error_corrective_step_matches_the_paper_update() -> None:
    # z1 <- z1 - 0.3 (1.5 z1 - x1): from z = x = (1.5, 0.75) one step gives 1.5 - 0.3 * 0.75.
    estimates = error_corrective(np.array([1.5, 0.75]), (1.5, 0.75), (0.3, 0.8), 1)
    np.testing.assert_allclose(estimates[1], [1.5 - 0.3 * 0.75, 0.75 - 0.8 * (0.5625 - 0.75)])


def test_error_corrective_rejects_bad_step_sizes() -> None:
    with pytest.raises(ValueError, match="eps"):
        error_corrective(np.zeros(2), (1.5, 0.75), (0.3, 0.0), 3)
    with pytest.raises(ValueError, match="steps"):
        error_corrective(np.zeros(2), (1.5, 0.75), (0.3, 0.8), -1)


@pytest.fixture(scope="module")
def nets() -> dict[str, toy.ToyNet]:
    """The three networks of Fig 1, trained once with the default config."""
    return {kind: toy.train_network(kind, ToyConfig()) for kind in toy.NETWORKS}


@pytest.mark.parametrize("kind", toy.NETWORKS)
def test_trained_networks_recover_z_after_their_blocks(nets: dict, kind: str) -> None:
    config = ToyConfig()
    assert toy.recovery_error(nets[kind], config) < 0.06
    x = forward_model(np.asarray(config.example), config.alphas)
    with torch.no_grad():
        estimate = nets[kind](torch.tensor(x, dtype=torch.float32)[None])[0].numpy()
    np.testing.assert_allclose(estimate, config.example, atol=0.06)


def test_recurrent_network_shares_one_block() -> None:
    net = toy.ToyNet("recurrent", ToyConfig())
    resnet = toy.ToyNet("resnet", ToyConfig())
    assert len(net.blocks) == 1 and len(resnet.blocks) == ToyConfig().blocks
    with pytest.raises(ValueError, match="kind='rnn'"):
        toy.ToyNet("rnn", ToyConfig())


def test_trajectories_have_every_condition_and_residual_nets_overshoot(nets: dict) -> None:
    config = ToyConfig()
    paths = toy.trajectories(config, nets)
    assert list(paths.columns) == ["method", "condition", "step", "z1", "z2"]
    counts = paths.groupby(["method", "condition"])["step"].count().to_dict()
    n, k = config.blocks, config.extra_evaluations
    assert counts[("error-corrective", "normal")] == n + 1
    assert counts[("error-corrective", "extra")] == n + k + 1
    for kind in toy.NETWORKS:
        assert counts[(kind, "normal")] == n + 1
        assert counts[(kind, "dropped")] == n  # one block fewer
        assert counts[(kind, "extra")] == n + k + 1

    def distance(method: str, condition: str, step: int) -> float:
        row = paths[(paths.method == method) & (paths.condition == condition)]
        row = row[row.step == step].iloc[0]
        return float(np.hypot(row.z1 - config.example[0], row.z2 - config.example[1]))

    # Fig 1d: the algorithm stays at z; the trained ResNets move past it (paper, Results).
    assert distance("error-corrective", "extra", n + k) < 1e-3
    for kind in ("resnet", "recurrent"):
        assert distance(kind, "extra", n + k) > 5 * distance(kind, "normal", n)
