"""Screen training settings for the `cpu` preset at gridsize 2, one short run at a time (issue 12).

A plain training loop (no Lightning, no failure checks) around fnostab's own generator, forward
model, validation subset and evaluation, so that one variant costs about a 20-epoch run and nothing
else. It prints one JSON line (steps, ms per step, validation losses, amplitude and phase SSIM next
to the constant prediction) and appends it to ``--log``. Variants that are not product options are
here only to be measured: ``--merge probe`` (reassembly weighted by |P|² instead of the plain
average), ``--input sqrt`` (the generator sees √A), ``--loss mse``. Screens use one seed; what they
suggest is confirmed with ``fnostab shootout`` over 3 seeds (scripts/bench_gridsize.py).

    python scripts/screen_gridsize.py --data DIR [--epochs 20] [--lr 3e-3 --sched cosine] [--modes 16] ...
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fnostab.data.npz import load_pair  # noqa: E402
from fnostab.models import build_generator  # noqa: E402
from fnostab.physics import far_field_amplitude, physics_loss  # noqa: E402
from fnostab.training.data import validation_subset  # noqa: E402
from fnostab.training.runner import evaluate_run  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--data", required=True, help="directory with train.npz and test.npz (fnostab simulate --out)")
p.add_argument("--log", default="screen.jsonl")
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--epochs", type=int, default=20)
p.add_argument("--time", type=float, default=1e9)
p.add_argument("--batch", type=int, default=16)
p.add_argument("--loss", default="mae")
p.add_argument("--sched", default="constant")  # constant, cosine (per step, warmup steps)
p.add_argument("--warmup", type=float, default=0.0)  # fraction of total steps
p.add_argument("--minlr", type=float, default=0.1)
p.add_argument("--width", type=int, default=16)
p.add_argument("--modes", type=int, default=8)
p.add_argument("--levels", type=int, default=2)
p.add_argument("--arch", default="hybrid")
p.add_argument("--head", default="real_imag")
p.add_argument("--merge", default="mean")  # mean, probe, none
p.add_argument("--input", default="none")  # none, sqrt, log1p
p.add_argument("--inscale", type=float, default=1.0)
p.add_argument("--outscale", type=float, default=1.0)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--clip", type=float, default=0.0)
p.add_argument("--tag", default="")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(a.seed)
np.random.seed(a.seed)

train, test = load_pair(f"{a.data}/train.npz", f"{a.data}/test.npz")
groups = train.groups
C = train.channels
probe = torch.from_numpy(train.probe.astype(np.complex64))

if a.merge == "probe" and groups.gridsize > 1:
    w = probe.abs().square()
    w = w / w.max()
    eps = 1e-3

    def enforce(patches):
        M, N = groups.window, groups.N
        total = patches.new_zeros((patches.shape[0], M, M))
        weight = torch.zeros(M, M)
        for k, (r, c) in enumerate(groups.corners.tolist()):
            pad = (c, M - N - c, r, M - N - r)
            pk = patches[:, k] * (w + eps)
            total = total + torch.complex(torch.nn.functional.pad(pk.real, pad), torch.nn.functional.pad(pk.imag, pad))
            weight = weight + torch.nn.functional.pad(w + eps, pad)
        region = total / weight
        return groups.extract(region)
elif a.merge == "none" or groups.gridsize == 1:

    def enforce(patches):
        return patches
else:
    enforce = groups.enforce_overlap

gen = build_generator(a.arch, train.N, C, width=a.width, modes=a.modes, fno_blocks=a.levels, head=a.head)


def transform(x):
    if a.input == "sqrt":
        x = x.clamp_min(0).sqrt()
    elif a.input == "log1p":
        x = torch.log1p(x.clamp_min(0) * a.inscale)
        return x
    return x * a.inscale


def model(x):
    return gen(transform(x)) * a.outscale


def loss_of(x):
    obj = model(x)
    amp = far_field_amplitude(enforce(obj) * probe)
    if a.loss == "mse":
        return ((amp - x) ** 2).mean() / (x**2).mean()
    return physics_loss(a.loss, amp, x)


opt = torch.optim.Adam(gen.parameters(), lr=a.lr)
X = torch.from_numpy(train.diffraction)
val_idx = validation_subset(test.n, 256)
Xv = torch.from_numpy(test.diffraction[val_idx])
steps_per_epoch = math.ceil(train.n / a.batch)
total = steps_per_epoch * a.epochs
g = torch.Generator().manual_seed(a.seed)


def lr_at(step):
    if a.sched == "constant":
        return a.lr
    wu = int(a.warmup * total)
    if step < wu:
        return a.lr * (0.1 + 0.9 * step / wu)
    prog = (step - wu) / max(1, total - wu)
    return a.lr * (a.minlr + (1 - a.minlr) * 0.5 * (1 + math.cos(math.pi * min(prog, 1))))


def val():
    gen.eval()
    with torch.no_grad():
        vals = [float(loss_of(Xv[i : i + 64])) * len(Xv[i : i + 64]) for i in range(0, len(Xv), 64)]
    gen.train()
    return sum(vals) / len(Xv)


t0 = time.perf_counter()
step = 0
vl = []
stopped = False
for _epoch in range(a.epochs):
    perm = torch.randperm(train.n, generator=g)
    for i in range(0, train.n, a.batch):
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step)
        x = X[perm[i : i + a.batch]]
        loss = loss_of(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if a.clip:
            torch.nn.utils.clip_grad_norm_(gen.parameters(), a.clip)
        opt.step()
        step += 1
        if not math.isfinite(float(loss.detach())):
            stopped = True
            break
        if time.perf_counter() - t0 > a.time:
            stopped = True
            break
    vl.append(round(val(), 4))
    if stopped:
        break
train_s = time.perf_counter() - t0


class Wrapped(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.gen = gen

    def forward(self, x):
        return model(x)


metrics, why = evaluate_run(Wrapped(), test, torch.device("cpu"), None)
if metrics is None:
    raise SystemExit(f"no metrics: {why}")
out = dict(
    tag=a.tag,
    args=vars(a),
    steps=step,
    train_s=round(train_s, 1),
    ms_step=round(1000 * train_s / max(step, 1), 1),
    val=vl,
    best=min(vl) if vl else None,
    amp=round(metrics["amp_ssim"], 4),
    amp_c=round(metrics["baseline"]["amp_ssim"], 4),
    ph=round(metrics["phase_ssim"], 4),
    ph_c=round(metrics["baseline"]["phase_ssim"], 4),
)
print(json.dumps(out))
with open(a.log, "a") as f:
    f.write(json.dumps(out) + "\n")
