"""A full-batch linear-regression step at 2,000,000 x 64 float32, against PyTorch baselines.

Compared in one process, on the same data:
  - gdlab: the trainer's step (autograd computes the gradient), in one pass over all rows and
    with `trainer.chunk_rows` (gradients accumulated over cache-sized row chunks, so X is
    read from memory once per step),
  - `nn.Linear` + `nn.MSELoss` + `optim.SGD` (what most people write),
  - a hand-written gradient (two matrix-vector products over X, no autograd),
plus a mini-batch epoch (batch 4096) of gdlab against `nn.Linear` + `optim.SGD`, and the
fraction of the one-pass memory roofline: X.nbytes / bandwidth, with the bandwidth measured
here by reading X once (`X.sum()`). Peak memory of the gdlab step is reported against X's size.

    python scripts/bench_regression.py [--rows 2000000] [--features 64] [--repeats 7]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from hydra import compose, initialize_config_dir

from gdlab.config import config_dir
from gdlab.experiment import build
from gdlab.trainer import backward_in_chunks


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median seconds of `fn` over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gdlab_experiment(
    rows: int,
    features: int,
    device: str,
    batch_size: int | None,
    steps: int,
    chunk_rows: int | None = None,
):
    overrides = [
        f"trainer.chunk_rows={chunk_rows if chunk_rows else 'null'}",
        "objective=linear_regression",
        f"objective.n_samples={rows}",
        f"objective.n_features={features}",
        f"objective.batch_size={batch_size if batch_size else 'null'}",
        "optimizer.lr=0.01",
        f"trainer.steps={steps}",
        f"trainer.log_every={steps}",
        "trainer.tol=0",
        "trainer.progress=false",
        "trainer.checkpoint_every=null",
        f"device={'cuda' if device == 'cuda' else 'cpu'}",
        "logger=none",
        "logger.plots=false",
    ]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return build(cfg, None)


def forward_backward(trainer: Any) -> None:
    """The trainer's step up to `loss.backward()` (its loop body, as trainer.py writes it)."""
    params = trainer.params
    if trainer.chunked is not None:
        trainer.chunked(params)
    elif trainer.sampler is not None:
        trainer.loss_fn(params, trainer.sampler.next()).backward()
    else:
        trainer.loss_fn(params).backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    device = torch.device(args.device)
    n, d = args.rows, args.features

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    experiment = gdlab_experiment(n, d, args.device, None, steps=1)
    objective = experiment.objective
    X, y = objective.X, objective.y
    x_bytes = X.numel() * X.element_size()
    print(
        f"torch {torch.__version__} on {device}, threads {torch.get_num_threads()}, "
        f"X {n} x {d} {X.dtype} = {x_bytes / 2**20:.0f} MiB"
    )

    def gdlab_step(trainer) -> Callable[[], None]:
        params = trainer.params
        tensors = list(params.values())

        def step() -> None:
            forward_backward(trainer)
            with torch.no_grad():
                trainer.rule.step(tensors, 0.01)
            for p in tensors:
                p.grad.zero_()

        return step

    one_pass = gdlab_step(experiment.trainer)
    t_gdlab = timed(one_pass, args.repeats, device)
    rss_after_gdlab = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    chunked: dict[int, float] = {}
    if device.type == "cpu":
        for rows in (4096, 16384):
            trainer = experiment.trainer
            chunks = [slice(s, min(s + rows, n)) for s in range(0, n, rows)]

            trainer.chunked = backward_in_chunks(objective.loss, chunks, n)
            chunked[rows] = timed(gdlab_step(trainer), args.repeats, device)
    params = experiment.trainer.params

    model = torch.nn.Linear(d, 1).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    mse = torch.nn.MSELoss()

    def nn_step() -> None:
        optimizer.zero_grad()
        loss = mse(model(X).squeeze(1), y)
        loss.backward()
        optimizer.step()

    t_nn = timed(nn_step, args.repeats, device)

    w = torch.zeros(d, device=device)
    b = torch.zeros((), device=device)

    def hand_step() -> None:
        residual = torch.addmv(b - y, X, w)
        w.sub_(X.T @ residual, alpha=0.01 * 2.0 / n)
        b.sub_(residual.sum(), alpha=0.01 * 2.0 / n)

    t_hand = timed(hand_step, args.repeats, device)
    t_read = timed(lambda: X.sum(), args.repeats, device)
    bandwidth = x_bytes / t_read

    # same result: one gdlab step and one nn.Linear step from the same start
    with torch.no_grad():
        params["w"].zero_()
        params["b"].zero_()
        model.weight.zero_()
        model.bias.zero_()
    one_pass()
    nn_step()
    diff = max(
        (params["w"] - model.weight.reshape(-1)).abs().max().item(),
        (params["b"] - model.bias).abs().max().item(),
    )

    print(f"{'full-batch step':<36} {'ms':>8} {'vs gdlab':>9} {'roofline':>9}")
    roofline = x_bytes / bandwidth
    rows_timed = [("gdlab (autograd, one pass)", t_gdlab)]
    rows_timed += [(f"gdlab, trainer.chunk_rows={r}", t) for r, t in chunked.items()]
    rows_timed += [
        ("nn.Linear + MSELoss + optim.SGD", t_nn),
        ("hand-written gradient", t_hand),
        ("one read of X (X.sum())", t_read),
    ]
    for name, t in rows_timed:
        print(f"{name:<36} {t * 1e3:8.2f} {t / t_gdlab:8.2f}x {roofline / t:8.0%}")
    print(
        f"bandwidth {bandwidth / 1e9:.1f} GB/s; gdlab speed-up over nn.Linear+SGD "
        f"{t_nn / t_gdlab:.2f}x (target >= 1.3x); same update to {diff:.1e}"
    )
    extra = rss_after_gdlab - rss_before
    print(
        f"peak RSS growth through gdlab's setup and steps: {extra / 2**20:.0f} MiB = "
        f"{extra / x_bytes:.2f} x X (X and y themselves included; the target: <= 2 x X)"
    )

    # a mini-batch epoch
    batch = 4096
    epoch_steps = n // batch
    mini = gdlab_experiment(n, d, args.device, batch, steps=epoch_steps)
    mini_params = list(mini.trainer.params.values())

    def gdlab_epoch() -> None:
        for _ in range(epoch_steps):
            forward_backward(mini.trainer)
            with torch.no_grad():
                mini.trainer.rule.step(mini_params, 0.01)
            for p in mini_params:
                p.grad.zero_()

    gen = torch.Generator(device=device).manual_seed(0)

    def nn_epoch() -> None:
        order = torch.randperm(n, generator=gen, device=device)
        for i in range(epoch_steps):
            rows = order[i * batch : (i + 1) * batch]
            optimizer.zero_grad()
            mse(model(X[rows]).squeeze(1), y[rows]).backward()
            optimizer.step()

    repeats = max(1, args.repeats // 3)
    t_mini_gdlab = timed(gdlab_epoch, repeats, device)
    t_mini_nn = timed(nn_epoch, repeats, device)
    print(
        f"mini-batch epoch ({epoch_steps} steps of {batch}): gdlab {t_mini_gdlab * 1e3:.0f} ms, "
        f"nn.Linear+SGD {t_mini_nn * 1e3:.0f} ms, ratio {t_mini_gdlab / t_mini_nn:.2f}"
    )


if __name__ == "__main__":
    main()
