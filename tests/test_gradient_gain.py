"""GradientGainMonitor: gains, norms and bookkeeping pinned to analytic values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from fnostab.hooks import GradientGainMonitor
from fnostab.hooks.gradient_gain import (
    NoForwardPassError,
    RepeatedBackwardError,
    chain_gains,
    gain_label,
    gain_ratio,
    log_gain_ratio,
)

NORM_TYPES = ["l2", "l1", "linf", "mean"]
SEED_KEYS = {
    "mean_gain",
    "min_gain",
    "max_gain",
    "mean_log_gain",
    "num_amplifying",
    "num_damping",
    "num_healthy",
    "num_vanishing",
    "num_missing",
}


class Scale(nn.Module):
    """h = c · x with a learnable scalar c: ∂L/∂x = c · ∂L/∂h, so the backward gain is exactly |c|."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = nn.Parameter(torch.tensor(float(c)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c * x


def run_chain(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for b in blocks:
        x = b(x)
    return x


def reference_norm(g: torch.Tensor, norm_type: str) -> float:
    a = g.abs().double()
    return {
        "l2": lambda: a.pow(2).sum().sqrt(),
        "l1": lambda: a.sum(),
        "linf": lambda: a.max(),
        "mean": lambda: a.mean(),
    }[norm_type]().item()


@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_gains_equal_the_block_scales_for_every_norm_type(norm_type: str) -> None:
    torch.manual_seed(0)
    cs = [1.5, -0.5, 2.0, 0.25, 3.0]
    blocks = nn.ModuleList(Scale(c) for c in cs)
    x = torch.randn(2, 3, 4)
    w = torch.randn(2, 3, 4)  # loss = Σ w·h_last, so ∂L/∂h_i = (Π_{j>i} c_j) · w
    with GradientGainMonitor(blocks, norm_type=norm_type) as mon:
        (w * run_chain(blocks, x)).sum().backward()
        norms, gains, logs = mon.norms(), mon.gains(), mon.log_gains()

    w_norm = reference_norm(w, norm_type)
    for i, n in enumerate(norms):
        expected = abs(math.prod(cs[i + 1 :])) * w_norm
        assert n == pytest.approx(expected, rel=1e-5)
    assert len(gains) == len(cs) - 1
    assert gains == pytest.approx([abs(c) for c in cs[1:]], rel=1e-5)
    assert logs == pytest.approx([math.log(abs(c)) for c in cs[1:]], abs=1e-5)


@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_norm_type_decides_gains_when_gradient_shape_changes(norm_type: str) -> None:
    # Block 1 maps x (4 elements) to [x, x] (8 elements). With loss = Σ h_1 the gradient at h_1 is 8
    # ones and at h_0 is 4 twos, so the gain depends on the norm in a known way.
    class Dup(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, x])

    blocks = nn.ModuleList([Scale(1.0), Dup()])
    with GradientGainMonitor(blocks, norm_type=norm_type) as mon:
        run_chain(blocks, torch.randn(4)).sum().backward()
        gain = mon.gains()[0]
    expected = {"l2": 4.0 / math.sqrt(8.0), "l1": 1.0, "linf": 2.0, "mean": 2.0}[norm_type]
    assert gain == pytest.approx(expected, rel=1e-6)


def test_summary_stats_has_the_seed_keys_and_counts_a_planted_chain() -> None:
    blocks = nn.ModuleList([Scale(1.0), Scale(3.0), Scale(1.0), Scale(0.25)])
    with GradientGainMonitor(blocks) as mon:
        run_chain(blocks, torch.randn(5)).sum().backward()
        stats = mon.summary_stats()
        report = mon.report()
    assert set(stats) == SEED_KEYS
    assert stats["num_amplifying"] == 1
    assert stats["num_healthy"] == 1
    assert stats["num_damping"] == 1
    assert stats["num_vanishing"] == 0
    assert stats["num_missing"] == 0
    assert stats["mean_gain"] == pytest.approx((3 + 1 + 0.25) / 3, rel=1e-6)
    assert stats["min_gain"] == pytest.approx(0.25, rel=1e-6)
    assert stats["max_gain"] == pytest.approx(3.0, rel=1e-6)
    assert stats["mean_log_gain"] == pytest.approx((math.log(3) + 0 + math.log(0.25)) / 3, abs=1e-6)
    assert "[AMPLIFYING]" in report and "[DAMPING]" in report and "[Healthy]" in report
    assert "heuristic" in report


def test_zero_gradient_downstream_gives_inf_and_zero_over_zero_gives_none() -> None:
    blocks = nn.ModuleList([Scale(2.0), Scale(3.0), Scale(5.0)])
    x = torch.randn(6)
    with GradientGainMonitor(blocks) as mon:
        h0 = blocks[0](x)
        h1 = blocks[1](h0)
        h2 = blocks[2](h1)
        # ∂L/∂h2 = 0 and ∂L/∂h1 = 0 (zero weight), ∂L/∂h0 = 1 through the direct term.
        (h0.sum() + 0.0 * h2.sum()).backward()
        norms, gains, logs, stats = mon.norms(), mon.gains(), mon.log_gains(), mon.summary_stats()
    assert norms[1] == 0.0 and norms[2] == 0.0 and norms[0] == pytest.approx(math.sqrt(6))
    assert gains == [math.inf, None]  # γ_1: 0 below eps, numerator > eps; γ_2: 0/0
    assert logs == [math.inf, None]
    assert stats["num_vanishing"] == 1
    assert stats["num_missing"] == 1
    assert stats["mean_gain"] is None and stats["mean_log_gain"] is None


def test_non_finite_norms_give_nan_gain_counted_nowhere() -> None:
    blocks = nn.ModuleList([Scale(2.0), Scale(3.0)])
    with GradientGainMonitor(blocks) as mon:
        (run_chain(blocks, torch.ones(3)) * math.inf).sum().backward()
        gain = mon.gains()[0]
        stats = mon.summary_stats()
    assert gain is not None and math.isnan(gain)
    counts = [stats[k] for k in SEED_KEYS if k.startswith("num_")]
    assert sum(counts) == 0


def test_norms_equal_autograd_grad_on_a_nonlinear_chain() -> None:
    torch.manual_seed(1)
    blocks = nn.ModuleList(nn.Sequential(nn.Linear(6, 6), nn.GELU()) for _ in range(4))
    x = torch.randn(3, 6)
    with GradientGainMonitor(blocks, norm_type="l2") as mon:
        run_chain(blocks, x).pow(2).sum().backward()
        norms = mon.norms()
    hs = []
    h = x
    for b in blocks:
        h = b(h)
        hs.append(h)
    grads = torch.autograd.grad(h.pow(2).sum(), hs)
    assert norms == pytest.approx([g.norm().item() for g in grads], rel=1e-5)


class MultiOut(nn.Module):
    """Returns a dict nesting a tuple and a list: {'a': 2x, 'b': (3x, [4x])}."""

    def forward(self, x: torch.Tensor) -> dict:
        return {"a": 2 * x, "b": (3 * x, [4 * x])}


@pytest.mark.parametrize(
    ("norm_type", "expected"),
    # loss = Σ a + Σ b[0] (b[1][0] unused, zero gradient): two leaves of 4 ones, one of 4 zeros.
    [("l2", math.sqrt(8)), ("l1", 8.0), ("linf", 1.0), ("mean", 8.0 / 12.0)],
)
def test_dict_tuple_and_list_outputs_are_measured_over_all_tensor_leaves(norm_type: str, expected: float) -> None:
    blocks = [Scale(1.0), MultiOut()]
    x = torch.randn(4)
    with GradientGainMonitor(blocks, norm_type=norm_type) as mon:
        out = blocks[1](blocks[0](x))
        (out["a"].sum() + out["b"][0].sum()).backward()
        norms = mon.norms()
    assert norms[1] == pytest.approx(expected, rel=1e-6)
    # ∂L/∂h_0 = 2 + 3 = 5 everywhere on 4 elements
    assert norms[0] == pytest.approx(reference_norm(torch.full((4,), 5.0), norm_type), rel=1e-6)


def test_tuple_output_listing_the_same_tensor_twice_is_counted_once() -> None:
    class Twice(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = 2 * x
            return y, y

    block = Twice()
    x = torch.randn(5, requires_grad=True)
    with GradientGainMonitor([block], norm_type="l1") as mon:
        y, _ = block(x)
        y.sum().backward()
        assert mon.norms() == [pytest.approx(5.0)]


def test_complex_outputs_are_measured_through_the_modulus() -> None:
    class ToComplex(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.complex(x, 2 * x) * (3 - 1j)

    torch.manual_seed(2)
    block = ToComplex()
    x = torch.randn(7, requires_grad=True)
    a, b = torch.randn(7), torch.randn(7)
    with GradientGainMonitor([block], norm_type="l2") as mon:
        z = block(x)
        (a * z.real + b * z.imag).sum().backward()
        measured = mon.norms()[0]
    z = block(x)
    (g,) = torch.autograd.grad((a * z.real + b * z.imag).sum(), z)
    assert g.is_complex()
    assert measured == pytest.approx(g.abs().norm().item(), rel=1e-6)
    assert measured == pytest.approx(torch.sqrt(a**2 + b**2).norm().item(), rel=1e-6)


def test_frozen_block_without_grad_input_is_missing() -> None:
    blocks = nn.ModuleList([Scale(2.0), Scale(3.0), Scale(0.5)])
    blocks[0].c.requires_grad_(False)
    with GradientGainMonitor(blocks) as mon:
        run_chain(blocks, torch.randn(4)).sum().backward()  # x does not require grad
        norms, gains, stats = mon.norms(), mon.gains(), mon.summary_stats()
    assert norms[0] is None
    assert norms[1] == pytest.approx(0.5 * 2.0)  # Σ over 4 ones scaled by 0.5 → l2 = 0.5·√4
    assert gains[0] is None and gains[1] == pytest.approx(0.5)
    assert stats["num_missing"] == 1
    assert "no gradient" in mon.report()


def test_in_place_op_after_the_block_still_gives_the_gradient_of_the_block_output() -> None:
    torch.manual_seed(3)
    blocks = nn.ModuleList([Scale(1.5), Scale(2.0)])
    x = torch.randn(6)
    w = torch.randn(6)
    with GradientGainMonitor(blocks) as mon:
        h0 = blocks[0](x)
        h0.mul_(3.0)  # in place, downstream of block 0: breaks register_full_backward_hook
        h1 = blocks[1](h0)
        (w * h1).sum().backward()
        norms = mon.norms()
    # ∂L/∂h1 = w; ∂L/∂h0 (value the block returned) = 3 · 2 · w
    assert norms[1] == pytest.approx(w.norm().item(), rel=1e-6)
    assert norms[0] == pytest.approx(6.0 * w.norm().item(), rel=1e-6)


def test_strict_mode_raises_on_second_backward_without_reset() -> None:
    blocks = nn.ModuleList([Scale(2.0), Scale(3.0)])
    mon = GradientGainMonitor(blocks)
    loss = run_chain(blocks, torch.randn(3)).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="reset"):
        loss.backward()
    mon.reset()
    run_chain(blocks, torch.ones(3)).sum().backward()  # new forward after reset: accepted
    assert mon.norms()[1] == pytest.approx(math.sqrt(3))
    with pytest.raises(RepeatedBackwardError, match="strict_single_backward=False"):
        run_chain(blocks, torch.ones(3)).sum().backward()  # new forward, no reset
    mon.close()


def test_non_strict_mode_overwrites_instead_of_accumulating() -> None:
    blocks = nn.ModuleList([Scale(2.0), Scale(3.0)])
    with GradientGainMonitor(blocks, strict_single_backward=False) as mon:
        out = run_chain(blocks, torch.ones(4))
        out.sum().backward(retain_graph=True)
        assert mon.norms() == pytest.approx([6.0, 2.0])
        (5 * out.sum()).backward()
        assert mon.norms() == pytest.approx([30.0, 10.0])  # the latest pass, not the sum
        run_chain(blocks, torch.ones(4)).sum().backward()
        assert mon.norms() == pytest.approx([6.0, 2.0])
        mon.reset()
        assert mon.norms() == [None, None]


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_in_non_strict_mode_matches_a_plain_run(use_reentrant: bool) -> None:
    torch.manual_seed(4)
    blocks = nn.ModuleList(nn.Sequential(nn.Linear(5, 5), nn.GELU()) for _ in range(4))
    x = torch.randn(2, 5, requires_grad=True)
    with GradientGainMonitor(blocks) as mon:
        run_chain(blocks, x).pow(2).sum().backward()
        expected = mon.norms()

    fired = []
    with GradientGainMonitor(blocks, strict_single_backward=False) as mon:
        real_record = mon._record
        mon._record = lambda *a: (fired.append(a[0]), real_record(*a))  # type: ignore[method-assign]
        h = checkpoint(lambda t: blocks[1](blocks[0](t)), x, use_reentrant=use_reentrant)
        h = checkpoint(lambda t: blocks[3](blocks[2](t)), h, use_reentrant=use_reentrant)
        h.pow(2).sum().backward()
        got = mon.norms()
    assert got == pytest.approx(expected, rel=1e-6)
    assert sorted(fired) == [0, 1, 2, 3]  # each block's gradient recorded once, recomputation or not


def test_close_removes_forward_hooks_and_disarms_pending_tensor_hooks() -> None:
    blocks = nn.ModuleList([Scale(2.0), Scale(3.0)])
    mon = GradientGainMonitor(blocks)
    assert all(len(b._forward_hooks) == 1 for b in blocks)
    fired = []
    mon._record = lambda *a: fired.append(a)  # type: ignore[method-assign]
    pending = run_chain(blocks, torch.randn(3)).sum()  # tensor hooks registered on this graph
    mon.close()
    mon.close()  # idempotent
    assert all(len(b._forward_hooks) == 0 for b in blocks)
    pending.backward()
    run_chain(blocks, torch.randn(3)).sum().backward()
    assert fired == []
    assert mon.norms() == [None, None]


def test_context_manager_removes_hooks_also_on_exception() -> None:
    blocks = nn.Sequential(Scale(2.0), Scale(3.0))
    with pytest.raises(KeyError):
        with GradientGainMonitor(blocks) as mon:
            assert all(len(b._forward_hooks) == 1 for b in blocks)
            raise KeyError("boom")
    assert all(len(b._forward_hooks) == 0 for b in blocks)
    blocks(torch.randn(3)).sum().backward()
    # The only forward ran after the hooks were gone, so the monitor never saw one.
    assert not mon.saw_forward
    with pytest.raises(NoForwardPassError):
        mon.norms()


def test_a_loss_built_before_the_monitor_raises_instead_of_reporting_all_none() -> None:
    torch.manual_seed(6)
    blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
    loss = run_chain(blocks, torch.randn(2, 4)).pow(2).sum()  # graph built with no monitor attached
    with GradientGainMonitor(blocks) as mon:
        loss.backward()
        assert not mon.saw_forward
        for read in (mon.norms, mon.gains, mon.log_gains, mon.summary_stats, mon.report):
            with pytest.raises(NoForwardPassError, match="Run the forward pass inside the monitor"):
                read()
    assert issubclass(NoForwardPassError, RuntimeError)


def test_a_forward_without_gradient_still_counts_as_a_forward() -> None:
    # A no-grad forward (evaluation, or a frozen stack) is a real pass: its blocks are missing, no error.
    blocks = nn.ModuleList([Scale(2.0), Scale(3.0)])
    with GradientGainMonitor(blocks) as mon:
        with torch.no_grad():
            run_chain(blocks, torch.randn(3))
        assert mon.saw_forward
        assert mon.norms() == [None, None]
        assert mon.gains() == [None]
        mon.reset()  # reset forgets gradients, not that the hooks were live
        assert mon.norms() == [None, None]


class HostConversions:
    """Counts Tensor → Python number conversions (each one is a host sync on an accelerator)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        for name in ("item", "tolist", "__float__"):
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(original))

    def _counting(self, original):
        def wrapper(tensor, *args, **kwargs):
            self.count += 1
            return original(tensor, *args, **kwargs)

        return wrapper


@pytest.mark.parametrize("reader", ["norms", "gains", "log_gains", "summary_stats", "report"])
def test_every_reader_converts_all_block_norms_to_floats_at_once(reader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = nn.ModuleList(Scale(c) for c in (1.5, 0.5, 2.0, 4.0, 1.0))
    with GradientGainMonitor(blocks) as mon:
        run_chain(blocks, torch.ones(4)).sum().backward()
        expected = getattr(mon, reader)()
        conversions = HostConversions(monkeypatch)
        got = getattr(mon, reader)()
    assert conversions.count == 1
    assert got == expected


def test_norms_of_mixed_precision_blocks_convert_exactly() -> None:
    # A float32 block next to a float64 one: stacking in float64 must not change the float32 value.
    class ToDouble(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.double()

    blocks = nn.ModuleList([Scale(1.0), ToDouble(), Scale(1.0)])
    w = torch.randn(7, dtype=torch.float64)
    with GradientGainMonitor(blocks) as mon:
        out = blocks[2](blocks[1](blocks[0](torch.randn(7))))
        (w * out).sum().backward()
        norms = mon.norms()
    assert norms[0] == torch.linalg.vector_norm(w.float()).item()
    assert norms[1] == norms[2] == torch.linalg.vector_norm(w).item()


@pytest.mark.parametrize(
    ("gain", "label"),
    [
        (None, "missing"),
        (math.nan, "nonfinite"),
        (math.inf, "vanishing"),
        (2.0000001, "amplifying"),
        (2.0, "healthy"),  # both thresholds are inclusive on the healthy side
        (0.5, "healthy"),
        (0.4999999, "damping"),
        (0.0, "damping"),
    ],
)
def test_gain_label_classes(gain: float | None, label: str) -> None:
    assert gain_label(gain) == label


def test_gain_ratio_special_values() -> None:
    eps = 1e-6
    assert gain_ratio(None, 1.0, eps) is None and gain_ratio(1.0, None, eps) is None
    assert math.isnan(gain_ratio(math.inf, 1.0, eps)) and math.isnan(gain_ratio(1.0, math.nan, eps))
    assert gain_ratio(1.0, 1e-7, eps) == math.inf
    assert gain_ratio(1e-7, 1e-7, eps) is None
    assert gain_ratio(0.0, 2.0, eps) == 0.0 and log_gain_ratio(0.0, 2.0, eps) == -math.inf
    assert gain_ratio(1e-200, 1e200, 0.0) == 0.0  # underflows
    assert log_gain_ratio(1e-200, 1e200, 0.0) == pytest.approx(-400 * math.log(10))
    assert chain_gains([8.0, 4.0, None, 1.0], eps) == [2.0, None, None]


@pytest.mark.parametrize(
    ("blocks", "match"),
    [
        ([], "empty"),
        ([Scale(1.0), "not a module"], "not an nn.Module"),
        (Scale(1.0), "single"),
        ({"a": Scale(1.0)}, "list, tuple"),
    ],
)
def test_invalid_blocks_raise_value_error(blocks: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GradientGainMonitor(blocks)  # type: ignore[arg-type]


def test_the_same_module_twice_is_rejected() -> None:
    b = Scale(1.0)
    with pytest.raises(ValueError, match="same module object"):
        GradientGainMonitor([b, Scale(2.0), b])


def test_unknown_norm_type_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError) as err:
        GradientGainMonitor([Scale(1.0)], norm_type="fro")  # type: ignore[arg-type]
    for name in NORM_TYPES:
        assert repr(name) in str(err.value)


def block_output_grads(model: nn.Module, x: torch.Tensor, loss_fn) -> list[torch.Tensor]:
    """∂L/∂h_i by torch.autograd.grad on the block outputs, captured with plain forward hooks."""
    outputs: list[torch.Tensor] = []
    handles = [b.register_forward_hook(lambda m, i, o: outputs.append(o)) for b in model.blocks]
    try:
        loss = loss_fn(model(x))
    finally:
        for h in handles:
            h.remove()
    return list(torch.autograd.grad(loss, outputs))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_norms_equal_autograd_grad_on_a_real_hybrid_generator(checkpointing: bool) -> None:
    from fnostab.models import build_generator

    torch.manual_seed(5)
    model = build_generator("hybrid", N=32, width=8, modes=4, fno_blocks=2, checkpointing=checkpointing)
    x = torch.rand(2, 1, 32, 32)
    target = torch.randn(2, 1, 32, 32, dtype=torch.complex64)

    def loss_fn(out: torch.Tensor) -> torch.Tensor:
        return (out - target).abs().square().mean()

    # One monitor per norm type, all on the same backward pass (monitors do not interfere).
    monitors = {
        nt: GradientGainMonitor(model.blocks, norm_type=nt, strict_single_backward=not checkpointing)
        for nt in NORM_TYPES
    }
    loss_fn(model(x)).backward()
    for mon in monitors.values():
        mon.close()
    grads = block_output_grads(model, x, loss_fn)
    assert len(grads) == len(model.blocks) == 3  # two encoder levels and the bottleneck
    for nt, mon in monitors.items():
        assert mon.norms() == pytest.approx([reference_norm(g, nt) for g in grads], rel=1e-5), nt
