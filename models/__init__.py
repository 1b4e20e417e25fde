"""ResNets whose stages run block schedules: ordinary, ICR and PCR blocks."""

from models.resnet import (
    IMAGE_SIZE,
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
    "IMAGE_SIZE",
    "ResNet",
    "ResNetConfig",
    "ResidualBlock",
    "Stage",
    "build_model",
    "converge_power_iteration",
    "normalised_blocks",
    "parameter_count",
]
