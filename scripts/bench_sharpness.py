"""What measuring the sharpness costs: the edge-of-stability run with and without it.

One run of `experiment=edge_of_stability`'s network (tanh MLP 16 -> 128 -> 128 -> 4 on 1,000
samples, full-batch GD) at one lr, with `sharpness.every=100` and with it off, interleaved in
this process on one CPU thread (off, on, off, on, ...), medians compared. It prints the ratio
(target <= 1.3), the Hessian-vector products per measurement, and the accuracy: the last
measurement's lambda_max against a fully converged solve (Lanczos to 1e-9, cold start) at
the same parameters (target: within 1e-3 relative).

    python scripts/bench_sharpness.py [--steps 2000] [--lr 0.2] [--repeats 3] [--every 100]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from hydra import compose, initialize_config_dir

from gdlab.config import config_dir
from gdlab.curvature import HessianOperator, SharpnessSettings, lanczos
from gdlab.experiment import build

TARGET_RATIO = 1.3
TARGET_ACCURACY = 1e-3


def experiment(steps: int, lr: float, every: int, tol: float | None = None):
    overrides = [
        "objective=mlp",
        "objective.n_samples=1000",
        "objective.widths=[128,128]",
        f"optimizer.lr={lr}",
        f"trainer.steps={steps}",
        "trainer.tol=0",
        "trainer.progress=false",
        f"sharpness.every={every}",
        *([f"sharpness.tol={tol}"] if tol is not None else []),
    ]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return build(cfg)  # no run directory: the sinks that write files stay off on both sides


def timed(steps: int, lr: float, every: int, tol: float | None = None) -> tuple[float, object]:
    built = experiment(steps, lr, every, tol)
    start = time.perf_counter()
    result = built.trainer.run()
    return time.perf_counter() - start, (built, result)


def converged_lambda_max(built: object) -> float:
    """lambda_max at the run's final parameters, Lanczos to 1e-9 from a cold start."""
    params = {k: v.detach().unsqueeze(0) for k, v in built.params.items()}  # type: ignore[attr-defined]
    loss = built.objective.loss  # type: ignore[attr-defined]
    op = HessianOperator(lambda p: loss({k: v[0] for k, v in p.items()}).reshape(1), params)
    start = torch.randn(1, op.size, generator=torch.Generator().manual_seed(123))
    return float(lanczos(op, start, 1e-9, 400).lambda_max[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--tol", type=float, default=None, help="sharpness.tol (default: gdlab's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"edge-of-stability MLP, lr {args.lr}, {args.steps} steps, 1 CPU thread, "
          f"{args.repeats} repeats, sharpness.every={args.every} against 0")  # fmt: skip

    off_times, on_times = [], []
    measured = None
    for _ in range(args.repeats):
        off, _ = timed(args.steps, args.lr, 0)
        on, measured = timed(args.steps, args.lr, args.every, args.tol)
        off_times.append(off)
        on_times.append(on)
    assert measured is not None
    built, result = measured
    history = result.sharpness["history"]
    products = [p["products"] for p in history]
    off_s, on_s = statistics.median(off_times), statistics.median(on_times)
    ratio = on_s / off_s
    reference = converged_lambda_max(built)
    final = history[-1]["lambda_max"]
    error = abs(final - reference) / abs(reference)
    settings = SharpnessSettings() if args.tol is None else SharpnessSettings(tol=args.tol)
    print(f"off: {off_s:.2f} s   on: {on_s:.2f} s   ratio {ratio:.3f} (target <= {TARGET_RATIO})")
    print(f"measurements: {len(history)}, Hessian-vector products per measurement: "
          f"mean {statistics.mean(products):.1f}, first {products[0]}, "
          f"max {max(products)} (Lanczos tol {settings.tol:g})")  # fmt: skip
    print(f"final lambda_max {final:.6g}, fully converged {reference:.6g}: relative error "
          f"{error:.2e} (target <= {TARGET_ACCURACY:g})")  # fmt: skip
    threshold = history[-1]["threshold"]
    print(f"final sharpness / (2/lr) = {final / threshold:.3f}; loss "
          f"{history[0]['loss']:.4g} -> {history[-1]['loss']:.4g}")  # fmt: skip


if __name__ == "__main__":
    main()
