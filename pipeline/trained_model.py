"""A trial's trained network as its run stores it: weights and build_model's arguments."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipeline.run_contents import NETWORK_ARTIFACT, WEIGHTS_ARTIFACT

if TYPE_CHECKING:
    from torch import nn

# torch is imported on use: pipeline.tracking imports this module and loads without torch.


def write_trained_model(directory: str, model: nn.Module, network: Mapping[str, Any]) -> None:
    """Write the weights (a state_dict) and the build_model arguments that fit them."""
    import torch

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, os.path.join(directory, os.path.basename(WEIGHTS_ARTIFACT)))
    with open(os.path.join(directory, os.path.basename(NETWORK_ARTIFACT)), "w") as f:
        json.dump(dict(network), f, indent=2, sort_keys=True)


def load_trial_model(run_id: str, tracking_uri: str | None = None) -> nn.Module:
    """Return the trained network of a finished run: models.build_model with its weights."""
    import mlflow.artifacts
    import torch

    from models import ResNetConfig, build_model

    def fetch(path: str) -> str:
        return mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=path, tracking_uri=tracking_uri
        )

    with open(fetch(NETWORK_ARTIFACT)) as file:
        network = json.load(file)
    model = build_model(
        ResNetConfig(**network["model"]), network["in_channels"], network["num_classes"]
    )
    model.load_state_dict(torch.load(fetch(WEIGHTS_ARTIFACT), weights_only=True))
    return model.eval()
