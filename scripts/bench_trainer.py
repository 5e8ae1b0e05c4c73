"""gdlab's trainer against the bare tutorial loop: time per step, as a ratio.

Both run in this process, interleaved (bare, gdlab, bare, gdlab, ...) and the median of the
repeats is compared, so machine noise hits both sides alike. Measured: the 1-D quadratic,
the 2-D quadratic 2x^2 + xy + 3y^2 and the tutorial's regression, at gdlab's default logging
(TensorBoard on, about 1000 points per curve, progress bar off) and with logging every step.

    python scripts/bench_trainer.py [--steps 20000] [--repeats 5] [--only adam]

The Adam cases compare `optimizer=adam` with the manual Adam loop a user writes after the
tutorial (torch.optim.Adam's formulas, no torch.optim object).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from gdlab.config import config_dir
from gdlab.experiment import build

TARGETS = {"default": 1.10, "every step": 2.0}


DEVICE = torch.device("cpu")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def bare_quadratic(steps: int) -> float:
    x = torch.tensor(0.0, requires_grad=True, device=DEVICE)
    lr = 0.001
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        loss = (x - 3) ** 2 + 5
        loss.backward()
        with torch.no_grad():
            x -= lr * x.grad
        x.grad.zero_()
    sync()
    return time.perf_counter() - start


def bare_2d(steps: int) -> float:
    x = torch.tensor(1.0, requires_grad=True, device=DEVICE)
    y = torch.tensor(2.0, requires_grad=True, device=DEVICE)
    lr = 0.001
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        loss = 2 * x**2 + x * y + 3 * y**2
        loss.backward()
        with torch.no_grad():
            x -= lr * x.grad
            y -= lr * y.grad
        x.grad.zero_()
        y.grad.zero_()
    sync()
    return time.perf_counter() - start


def bare_regression(steps: int) -> float:
    gen = torch.Generator(DEVICE).manual_seed(42)
    x = torch.randn(100, generator=gen, device=DEVICE)
    y = 3.0 * x + 2.0 + torch.randn(100, generator=gen, device=DEVICE) * 0.5
    w = torch.randn(1, generator=gen, device=DEVICE).requires_grad_(True)
    b = torch.randn(1, generator=gen, device=DEVICE).requires_grad_(True)
    lr = 0.01
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        y_pred = w * x + b
        loss = ((y_pred - y) ** 2).mean()
        loss.backward()
        with torch.no_grad():
            w -= lr * w.grad
            b -= lr * b.grad
        w.grad.zero_()
        b.grad.zero_()
    sync()
    return time.perf_counter() - start


def adam_step(params: list[torch.Tensor], moments: list, t: int, lr: float) -> None:
    """The manual Adam update a user writes after the tutorial (torch.optim.Adam's formulas)."""
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    step_size = lr / (1 - beta1**t)
    root = math.sqrt(1 - beta2**t)
    for p, (m, v) in zip(params, moments, strict=True):
        g = p.grad
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        p.addcdiv_(m, (v.sqrt() / root).add_(eps), value=-step_size)


def bare_adam_quadratic(steps: int) -> float:
    x = torch.tensor(0.0, requires_grad=True, device=DEVICE)
    moments = [(torch.zeros_like(x), torch.zeros_like(x))]
    sync()
    start = time.perf_counter()
    for t in range(1, steps + 1):
        loss = (x - 3) ** 2 + 5
        loss.backward()
        with torch.no_grad():
            adam_step([x], moments, t, 0.001)
        x.grad.zero_()
    sync()
    return time.perf_counter() - start


def bare_adam_regression(steps: int) -> float:
    gen = torch.Generator(DEVICE).manual_seed(42)
    x = torch.randn(100, generator=gen, device=DEVICE)
    y = 3.0 * x + 2.0 + torch.randn(100, generator=gen, device=DEVICE) * 0.5
    w = torch.randn(1, generator=gen, device=DEVICE).requires_grad_(True)
    b = torch.randn(1, generator=gen, device=DEVICE).requires_grad_(True)
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in (w, b)]
    sync()
    start = time.perf_counter()
    for t in range(1, steps + 1):
        loss = ((w * x + b - y) ** 2).mean()
        loss.backward()
        with torch.no_grad():
            adam_step([w, b], moments, t, 0.01)
        w.grad.zero_()
        b.grad.zero_()
    sync()
    return time.perf_counter() - start


CASES: dict[str, tuple[Callable[[int], float], list[str]]] = {
    "quadratic 1-D": (bare_quadratic, ["objective=quadratic", "optimizer.lr=0.001"]),
    "quadratic 2-D": (bare_2d, ["objective=multivariate", "optimizer.lr=0.001"]),
    "regression": (bare_regression, ["objective=linear_regression", "optimizer.lr=0.01"]),
    "adam 1-D": (
        bare_adam_quadratic,
        ["objective=quadratic", "optimizer=adam", "optimizer.lr=0.001"],
    ),
    "adam regression": (
        bare_adam_regression,
        ["objective=linear_regression", "optimizer=adam", "optimizer.lr=0.01"],
    ),
}


def gdlab_run(overrides: list[str], steps: int, log_every: int | None, out: Path) -> float:
    """Time of Trainer.run() alone (the config is composed and objects built beforehand)."""
    extra = [f"trainer.steps={steps}", "trainer.tol=0", "trainer.progress=false"]
    if log_every is not None:
        extra.append(f"trainer.log_every={log_every}")
    extra += ["trainer.checkpoint_every=null", "logger.plots=false", f"device={DEVICE.type}"]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, *extra])
    experiment = build(cfg, out)
    for sink in experiment.sinks:
        sink.start(experiment.info)
    sync()
    start = time.perf_counter()
    experiment.trainer.run()
    sync()
    elapsed = time.perf_counter() - start
    for sink in experiment.sinks:
        sink.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(1)  # both sides alike; tiny tensors gain nothing from threads
    print(
        f"torch {torch.__version__} on {DEVICE}, {args.steps} steps, "
        f"median of {args.repeats} repeats"
    )
    print(
        f"{'objective':<15} {'logging':<11} {'bare µs/step':>12} {'gdlab µs/step':>13} "
        f"{'ratio':>6} {'target':>7}"
    )
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, (bare, overrides) in CASES.items():
            if args.only not in name:
                continue
            for mode, log_every in (("default", None), ("every step", 1)):
                bare(2000)  # warm-up
                gdlab_run(overrides, 2000, log_every, Path(tmp) / "warm")
                bare_times, ours = [], []
                for i in range(args.repeats):
                    bare_times.append(bare(args.steps))
                    ours.append(gdlab_run(overrides, args.steps, log_every, Path(tmp) / f"r{i}"))
                b = statistics.median(bare_times) / args.steps * 1e6
                g = statistics.median(ours) / args.steps * 1e6
                ratio = g / b
                target = TARGETS[mode]
                failures += ratio > target
                print(f"{name:<15} {mode:<11} {b:12.2f} {g:13.2f} {ratio:6.2f} {target:>7}")
    print("all targets met" if not failures else f"{failures} target(s) missed")


if __name__ == "__main__":
    main()
