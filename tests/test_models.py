"""Every block type x initialisation builds, runs, and has the expected shape and size."""

from __future__ import annotations

import itertools
import re

import pytest
import torch

from models import ResNetConfig, build_model, parameter_count
from vocabulary import BLOCK_TYPES

VARIANTS = list(itertools.product(BLOCK_TYPES, (False, True)))


def _tiny(block: str, recurrent_init: bool, **kwargs) -> ResNetConfig:
    return ResNetConfig(
        width=4, blocks_per_stage=3, block=block, recurrent_init=recurrent_init, **kwargs
    )


def _grey(cfg: ResNetConfig) -> torch.nn.Module:
    return build_model(cfg, in_channels=1)


@pytest.mark.parametrize(("block", "recurrent_init"), VARIANTS)
def test_variant_builds_runs_forward_and_backward(block: str, recurrent_init: bool) -> None:
    torch.manual_seed(0)
    cfg = _tiny(block, recurrent_init)
    model = build_model(cfg, in_channels=1, num_classes=7)
    logits = model(torch.randn(4, 1, 32, 32))
    assert logits.shape == (4, 7)
    logits.square().mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    assert sum(p.numel() for p in model.parameters()) == parameter_count(cfg, 1, 7)


@pytest.mark.parametrize(("block", "recurrent_init"), VARIANTS)
def test_initialisation_is_recurrent_only_when_asked(block: str, recurrent_init: bool) -> None:
    torch.manual_seed(0)
    model = _grey(_tiny(block, recurrent_init))
    for stage in model.stages:
        first = stage.blocks[0].state_dict()
        for other in stage.blocks[1:]:
            same = all(torch.equal(first[k], v) for k, v in other.state_dict().items())
            assert same == recurrent_init


def test_parameter_count_matches_paper_width16() -> None:
    # ResNet-101 of the paper: three stages of 16 blocks, 16/32/64 channels, CIFAR-10.
    cfg = ResNetConfig(width=16, blocks_per_stage=16)
    assert sum(p.numel() for p in build_model(cfg).parameters()) == parameter_count(cfg)
    assert 1.5e6 < parameter_count(cfg) < 1.8e6


def test_bn_gamma_init_sets_block_gammas_only() -> None:
    model = _grey(_tiny("ordinary", False, bn_gamma_init=0.1))
    for stage in model.stages:
        for block in stage.blocks:
            assert torch.all(block.bn1.weight == 0.1)
            assert torch.all(block.bn2.weight == 0.1)
    assert torch.all(model.head.bn.weight == 1.0)


def test_schedules_select_blocks() -> None:
    torch.manual_seed(0)
    model = _grey(_tiny("ordinary", False)).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        full = model(x)
        assert torch.equal(model(x, {0: [0, 1, 2], 1: [0, 1, 2]}), full)
        assert not torch.allclose(model(x, {1: [0, 2]}), full)
        # Extra evaluations repeat the last block.
        assert not torch.allclose(model(x, {2: [0, 1, 2, 2]}), full)
        # The split forward agrees with the whole forward.
        h = model.forward_stage(0, model.stem(x))
        assert torch.allclose(model.forward_from(0, h), full)


def test_eval_forward_leaves_power_iteration_vectors_alone() -> None:
    torch.manual_seed(0)
    model = _grey(_tiny("icr", False))
    model(torch.randn(4, 1, 32, 32))  # training step moves the vectors
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items() if "spectral" in k}
    model(torch.randn(4, 1, 32, 32))
    after = {k: v for k, v in model.state_dict().items() if "spectral" in k}
    assert before and all(torch.equal(before[k], after[k]) for k in before)


def test_pcr_block_needs_stage_input() -> None:
    model = _grey(_tiny("pcr", False))
    with pytest.raises(ValueError, match="stage input"):
        model.stages[0].blocks[0](torch.randn(1, 4, 32, 32))


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("block", "dense", "allowed are"),
        ("width", 0, ">= 1"),
        ("mu", 1.5, r"\(0, 1\]"),
        ("blocks_per_stage", 2.5, "expected int"),
        ("recurrent_init", "yes", "expected bool"),
        ("bn_gamma_init", -1.0, "> 0"),
    ],
)
def test_invalid_config_names_field_and_allowed_values(field, value, allowed) -> None:
    with pytest.raises(ValueError, match=re.escape(f"model.{field}={value!r}")) as err:
        ResNetConfig(**{field: value})
    assert err.match(allowed)


def test_bad_schedule_is_rejected() -> None:
    model = _grey(_tiny("ordinary", False))
    with pytest.raises(ValueError, match="block indices"):
        model(torch.randn(1, 1, 32, 32), {0: [0, 7]})
