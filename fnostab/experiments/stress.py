"""Stage B (docs/method.md): depth and learning-rate stress with a memory plan before anything is built.

Each configuration (arm × depth × learning rate) gets a plan of parameters and memory (weights,
gradients, optimiser state, activations) computed on the meta device. A plan over the memory limit,
or a depth that N cannot be halved to, is recorded as ``infeasible`` with its numbers instead of
being built; a real out-of-memory is ``oom``. The learning-rate axis makes stability measurable on a
CPU in minutes: each arm's largest stable rate is one number that compares arms.
"""

from __future__ import annotations

import os
import re
from typing import Any

from fnostab.config import DataSource
from fnostab.errors import InputError
from fnostab.experiments.arms import Arm
from fnostab.experiments.store import RunSpec
from fnostab.experiments.sweep import ExecutionOptions, arm_run_config
from fnostab.rundir import stress_run_dir

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1e3,
    "kb": 1e3,
    "m": 1e6,
    "mb": 1e6,
    "g": 1e9,
    "gb": 1e9,
    "t": 1e12,
    "tb": 1e12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """``24GiB``, ``500MB``, ``1.5e9`` → bytes."""
    match = _SIZE.match(text)
    if not match or match.group(2).lower() not in _UNITS:
        raise InputError(f"invalid --memory-limit: expected a size such as 24GiB, 500MB or 1e9, found {text!r}")
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if value <= 0:
        raise InputError(f"invalid --memory-limit: expected a positive size, found {text!r}")
    return int(value)


def format_bytes(count: float | None) -> str:
    if count is None:
        return "—"
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{int(count)} B"


def default_memory_limit(accelerator: str) -> tuple[int, str]:
    """The device's free memory (CUDA), or 75% of the machine's RAM (CPU), and where it came from."""
    import torch

    if accelerator in ("cuda", "auto") and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return int(free), "free CUDA memory"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(0.75 * ram), "75% of RAM"


def run_memory_limit(memory_limit: str | None, accelerator: str | None, execution: ExecutionOptions) -> tuple[int, str]:
    """The memory one run may plan for, and where that figure came from: ``memory_limit`` (a size such
    as 24GiB) or the device's default, split between the runs that share the machine at once (local
    ``--jobs K``: a K-th each; Ray places each run on a node of its own choosing)."""
    limit, source = (
        (parse_bytes(memory_limit), "--memory-limit") if memory_limit else default_memory_limit(accelerator or "auto")
    )
    if execution.executor != "ray" and execution.jobs > 1:
        # K local runs at once share the machine (or the one GPU): each gets a K-th of the limit.
        limit, source = limit // execution.jobs, f"{source} / {execution.jobs} runs at once"
    return limit, source


def plan_stress(
    arms: list[Arm],
    seeds: list[int],
    depths: list[int],
    lrs: list[float],
    preset: str,
    data: DataSource,
    overrides: dict[str, dict[str, Any]],
    N: int,
    memory_limit: int,
) -> tuple[list[RunSpec], dict[str, str]]:
    """The sweep's runs with their memory plans, and {run dir: reason} for the infeasible ones."""
    from fnostab.training.runner import plan_run

    specs: list[RunSpec] = []
    infeasible: dict[str, str] = {}
    # A plan depends on the model, the batch and the optimizer, not on the seed or the lr: plan each
    # configuration once (a plan runs a meta-device training step, tens of milliseconds).
    plans: dict[tuple[Any, ...], Any] = {}
    for arm in arms:
        for depth in depths:
            for lr in lrs:
                extra_model = {"fno_blocks": depth} if depth is not None else {}
                arm_with_point = Arm(
                    arm.name, {**arm.model, **extra_model}, {**arm.train, **({"lr": lr} if lr is not None else {})}
                )
                for seed in seeds:
                    config = arm_run_config(arm_with_point, seed, preset, data, overrides)
                    t = config.train
                    key = (config.model, t.batch_size, t.optimizer, t.weight_decay, t.momentum)
                    model_plan = plans[key] if key in plans else plans.setdefault(key, plan_run(config, N))
                    plan_doc = {**model_plan.to_dict(), "memory_limit": memory_limit}
                    run_depth = config.model.fno_blocks
                    run_lr = config.train.lr
                    spec = RunSpec(
                        arm.name,
                        seed,
                        config,
                        stress_run_dir(arm.name, run_depth, run_lr, seed),
                        depth=run_depth,
                        lr=run_lr,
                        plan=plan_doc,
                    )
                    specs.append(spec)
                    if model_plan.geometry_error:
                        infeasible[spec.relative_dir] = f"geometry: {model_plan.geometry_error}"
                    elif model_plan.total_bytes > memory_limit:
                        infeasible[spec.relative_dir] = (
                            f"memory plan {format_bytes(model_plan.total_bytes)} > limit {format_bytes(memory_limit)} "
                            f"({model_plan.params:,} params; weights {format_bytes(model_plan.weight_bytes)}, "
                            f"activations {format_bytes(model_plan.activation_bytes)})"
                        )
    return specs, infeasible


def plan_table(specs: list[RunSpec], infeasible: dict[str, str]) -> tuple[str, list[dict[str, Any]]]:
    """A markdown table of one plan per (arm, depth) — plans do not depend on lr or seed."""
    rows: list[dict[str, Any]] = []
    seen = set()
    for spec in specs:
        key = (spec.arm, spec.depth)
        if key in seen:
            continue
        seen.add(key)
        p = spec.plan or {}
        rows.append(
            {
                "arm": spec.arm,
                "arch": spec.config.model.arch,
                "depth": spec.depth,
                "max_hidden_channels": spec.config.model.max_hidden_channels,
                "checkpointing": spec.config.model.checkpointing,
                "params": p.get("params"),
                "weight_bytes": p.get("weight_bytes"),
                "grad_bytes": p.get("grad_bytes"),
                "optimizer_bytes": p.get("optimizer_bytes"),
                "activation_bytes": p.get("activation_bytes"),
                "total_bytes": p.get("total_bytes"),
                "memory_limit": p.get("memory_limit"),
                "geometry_error": p.get("geometry_error"),
                "feasible": spec.relative_dir not in infeasible,
                "reason": infeasible.get(spec.relative_dir),
            }
        )
    lines = [
        "| arm | arch | depth | cap | ckpt | params | weights | grads | optimizer | activations | total | feasible |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['arch']} | {r['depth']} | {r['max_hidden_channels'] or '—'} "
            f"| {'yes' if r['checkpointing'] else 'no'} "
            f"| {r['params']:,} | {format_bytes(r['weight_bytes'])} | {format_bytes(r['grad_bytes'])} "
            f"| {format_bytes(r['optimizer_bytes'])} "
            f"| {format_bytes(r['activation_bytes']) if not r['geometry_error'] else '—'} "
            f"| {format_bytes(r['total_bytes'])} | {'yes' if r['feasible'] else 'NO: ' + r['reason']} |"
        )
    return "\n".join(lines), rows
