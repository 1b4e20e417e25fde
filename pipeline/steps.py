"""One training step (forward, backward, coupling, SGD) in one of three execution modes.

- `eager`: plain PyTorch, one kernel launch per operation.
- `compile`: the model's forward (and with it the backward) compiled by `torch.compile`.
- `cuda_graph`: the whole step (forward, backward, coupling and the SGD update) captured once
  as a CUDA graph and replayed; the learning rate lives in a device tensor, so the schedule
  keeps working without a new capture. CUDA only.

`make gpu-check` measures the modes, checks each against eager, and writes the fastest that
matches into the calibration (`pipeline/calibration.py`); a trial on CUDA runs that mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from pipeline.calibration import STEP_MODES
from pipeline.coupling import GradientCoupler
from pipeline.tasks import Task

GRAPH_WARMUP_STEPS = 3  # eager steps before capture: cuDNN picks its kernels, buffers exist


def check_step_mode(mode: str, device: torch.device) -> None:
    """Raise ValueError if `mode` is unknown or cannot run on `device`."""
    if mode not in STEP_MODES:
        raise ValueError(f"step mode {mode!r}: allowed are {STEP_MODES}")
    if mode == "cuda_graph" and device.type != "cuda":
        raise ValueError(f"step mode 'cuda_graph' needs a CUDA device, not {device.type!r}")


def sgd_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    buffers: list[torch.Tensor],
    lr: torch.Tensor,
    momentum: float,
    weight_decay: float,
    nesterov: bool,
) -> None:
    """Apply torch.optim.SGD's update (dampening 0) with a learning rate held in a tensor."""
    # The same sequence of foreach operations as torch.optim.SGD's multi-tensor path, except
    # that the step is scaled by a device tensor: a Python float would be frozen into a graph.
    decayed: list[torch.Tensor] | tuple[torch.Tensor, ...] = grads
    if weight_decay != 0:
        decayed = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_mul_(buffers, momentum)
    torch._foreach_add_(buffers, decayed)
    steps = torch._foreach_add(decayed, buffers, alpha=momentum) if nesterov else buffers
    torch._foreach_add_(params, torch._foreach_mul(steps, -lr))


class TrainStep:
    """`step(inputs, targets) -> (loss, logits)`: one SGD step; outputs valid until the next."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        coupler: GradientCoupler | None,
        task: Task,
        mixed_precision: bool,
        mode: str = "eager",
    ) -> None:
        device = next(model.parameters()).device
        check_step_mode(mode, device)
        if mode == "cuda_graph":
            _check_graphable(optimizer)
        self.model = model
        self.optimizer = optimizer
        self.coupler = coupler
        self.task = task
        self.mixed_precision = mixed_precision  # bf16 autocast of the forward pass
        self.mode = mode
        self.device = device
        forward: Callable[[torch.Tensor], torch.Tensor] = model
        if mode == "compile":
            # Only the training forward is compiled: evaluation and the perturbation curves
            # call the model itself, with their many batch shapes.
            forward = torch.compile(model, dynamic=False)
        self._forward = forward
        self._steps = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static: dict[str, torch.Tensor] = {}

    def _autocast(self, cache_enabled: bool = True) -> contextlib.AbstractContextManager:
        if self.mixed_precision:
            return torch.autocast(
                self.device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled
            )
        return contextlib.nullcontext()

    def _eager(self, inputs: torch.Tensor, targets: torch.Tensor):
        with self._autocast():
            logits = self._forward(inputs)
        loss = self.task.loss(logits, targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.coupler is not None:
            self.coupler.apply()
        self.optimizer.step()
        return loss.detach(), logits.detach()

    def __call__(
        self, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one training step on a batch; return its loss and logits (detached)."""
        self._steps += 1
        if self.mode != "cuda_graph":
            return self._eager(inputs, targets)
        if self._graph is not None and inputs.shape == self._static["inputs"].shape:
            return self._replay(inputs, targets)
        if self._graph is None and self._steps > GRAPH_WARMUP_STEPS:
            self._capture(inputs, targets)
            return self._replay(inputs, targets)
        # Warm-up (and a batch of another shape): eager, on a side stream as capture requires.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            result = self._eager(inputs, targets)
        torch.cuda.current_stream(self.device).wait_stream(side)
        return result

    def _capture(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Record forward, backward, coupling and the SGD update as one CUDA graph."""
        group = self.optimizer.param_groups[0]
        params = [p for p in group["params"] if p.requires_grad]
        buffers = [self.optimizer.state[p]["momentum_buffer"] for p in params]
        static = {
            "inputs": inputs.clone(),
            "targets": targets.clone(),
            "lr": torch.tensor(float(group["lr"]), device=self.device),
        }
        torch.cuda.synchronize(self.device)
        self.optimizer.zero_grad(set_to_none=True)  # gradients come from the graph's pool
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            with self._autocast(cache_enabled=False):
                logits = self._forward(static["inputs"])
            loss = self.task.loss(logits, static["targets"])
            loss.backward()
            if self.coupler is not None:
                self.coupler.apply()
            sgd_update(
                params,
                [p.grad for p in params],
                buffers,
                static["lr"],
                group["momentum"],
                group["weight_decay"],
                group["nesterov"],
            )
        static["loss"], static["logits"] = loss.detach(), logits.detach()
        self._static, self._graph = static, graph

    def _replay(self, inputs: torch.Tensor, targets: torch.Tensor):
        static = self._static
        static["inputs"].copy_(inputs)
        static["targets"].copy_(targets)
        static["lr"].fill_(float(self.optimizer.param_groups[0]["lr"]))
        assert self._graph is not None
        self._graph.replay()
        return static["loss"], static["logits"]


def _check_graphable(optimizer: torch.optim.Optimizer) -> None:
    """Raise ValueError unless the optimiser is what sgd_update reproduces."""
    groups = optimizer.param_groups
    if not isinstance(optimizer, torch.optim.SGD) or len(groups) != 1:
        raise ValueError("step mode 'cuda_graph' needs torch.optim.SGD with one parameter group")
    group = groups[0]
    if group["momentum"] == 0 or group["dampening"] != 0 or group["maximize"]:
        raise ValueError(
            "step mode 'cuda_graph' needs SGD with momentum > 0, dampening 0, maximize False"
        )
