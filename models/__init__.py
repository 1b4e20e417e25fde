"""ResNets whose stages run block schedules: ordinary, ICR and PCR blocks."""

from models.resnet import (
    ResidualBlock,
    ResNet,
    ResNetConfig,
    Stage,
    build_model,
    converge_power_iteration,
    normalised_blocks,
    parameter_count,
)

__all__ = [
    "ResNet",
    "ResNetConfig",
    "ResidualBlock",
    "Stage",
    "build_model",
    "converge_power_iteration",
    "normalised_blocks",
    "parameter_count",
]
