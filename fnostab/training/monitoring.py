"""Per-block monitors inside training (``fnostab train --monitor-every N``).

On a monitored step the generator's residual blocks get a :class:`GradientGainMonitor` (gradient
norm ‖∂L/∂h_i‖ at each block output) and a forward hook reading mean |h_i|; the values are logged
to metrics.csv as ``block_grad_norm/i`` and ``block_act_mean/i`` so that ``summarize`` can show
which block blew up first in a diverged run. Hooks exist only during monitored steps, so the other
steps run at full speed.
"""

from __future__ import annotations

from typing import Any

import torch

from fnostab.hooks import GradientGainMonitor


class BlockMonitor:
    def __init__(self, generator: torch.nn.Module) -> None:
        blocks = getattr(generator, "blocks", None)
        if blocks is None or len(blocks) == 0:
            raise ValueError("--monitor-every needs a generator with residual blocks (attribute 'blocks')")
        self.blocks = list(blocks)
        self._gradients: GradientGainMonitor | None = None
        self._handles: list[Any] = []
        self._activation_means: list[torch.Tensor | None] = []

    def attach(self) -> None:
        self._gradients = GradientGainMonitor(self.blocks, norm_type="l2", strict_single_backward=False)
        self._activation_means = [None] * len(self.blocks)
        for index, block in enumerate(self.blocks):
            self._handles.append(block.register_forward_hook(self._activation_hook(index)))

    def _activation_hook(self, index: int):
        def hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                self._activation_means[index] = output.detach().abs().mean()

        return hook

    def detach(self) -> dict[str, float]:
        """Remove the hooks and return this step's values (NaN where a block saw no gradient)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        stats: dict[str, float] = {}
        if self._gradients is not None:
            # A forward that raised before the first block (e.g. out of memory) leaves nothing to
            # read; reading would raise and hide the original error from the failure record.
            if self._gradients.saw_forward:
                for index, norm in enumerate(self._gradients.norms()):
                    stats[f"block_grad_norm/{index}"] = float("nan") if norm is None else norm
            self._gradients.close()
            self._gradients = None
        means = [m for m in self._activation_means if m is not None]
        if means:
            values = torch.stack(means).double().tolist()  # one transfer for all blocks
            present = [i for i, m in enumerate(self._activation_means) if m is not None]
            for index, value in zip(present, values):
                stats[f"block_act_mean/{index}"] = value
        return stats
