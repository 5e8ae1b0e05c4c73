"""Interrupt and resume in-process: the continued run is the uninterrupted one, bit for bit."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from hydra import initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gdlab.atomic import DiskFull
from gdlab.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from gdlab.config import config_dir
from gdlab.errors import GdlabError
from gdlab.experiment import run_experiment
from gdlab.resume import AlreadyFinished, prepare_resume
from tests.conftest import compose_config, read_metrics

TIMING_KEYS = {"wall_time_s", "steps_per_s"}
# mini-batches (RNG state), momentum (buffers), a schedule, log points that don't align with
# checkpoints: everything a resume must carry over
HARD_RUN = [
    "trainer.progress=false",
    "objective=linear_regression",
    "objective.batch_size=16",
    "optimizer.lr=0.05",
    "optimizer.momentum=0.9",
    "optimizer.schedule.name=cosine",
    "trainer.steps=300",
    "trainer.log_every=7",
    "trainer.checkpoint_every=50",
    "trainer.tol=0",
    "device.dtype=float64",
]


class StopAfter:
    """Stands in for a signal: `requested` turns true after `checks` trainer steps."""

    def __init__(self, checks: int) -> None:
        self.checks = checks

    @property
    def requested(self) -> bool:
        self.checks -= 1
        return self.checks < 0


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar curve as TensorBoard shows it (orphaned points purged)."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def comparable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


def resume(run_dir: Path, *extra: str, stop_after: int | None = None):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg, state, overrides = prepare_resume(run_dir, list(extra))
    interrupt = StopAfter(stop_after) if stop_after is not None else None
    return run_experiment(
        cfg, run_dir, resume_state=state, overrides=overrides, interrupt=interrupt
    )


@pytest.fixture
def straight(tmp_path: Path) -> Path:
    run_dir = tmp_path / "straight"
    run_experiment(compose_config(HARD_RUN), run_dir, overrides=HARD_RUN)
    return run_dir


@pytest.mark.parametrize("stop_after", [1, 49, 50, 123, 299])
def test_interrupt_then_resume_equals_the_straight_run(tmp_path, straight, stop_after):
    run_dir = tmp_path / "interrupted"
    first = run_experiment(
        compose_config(HARD_RUN), run_dir, overrides=HARD_RUN, interrupt=StopAfter(stop_after)
    )
    assert first.status == "interrupted" and first.steps == stop_after
    assert read_metrics(run_dir)["status"] == "interrupted"
    assert load_checkpoint(run_dir)["step"] == stop_after

    final = resume(run_dir)
    assert final.status == "finished" and final.steps == 300
    assert comparable(read_metrics(run_dir)) == comparable(read_metrics(straight))
    assert scalars(run_dir) == scalars(straight)
    expected = torch.load(straight / CHECKPOINT_NAME, weights_only=True)["params"]
    for name, value in final.params.items():
        assert torch.equal(value, expected[name])


RULE_RUNS = {
    "adam": ["optimizer=adam", "optimizer.lr=0.05", "optimizer.amsgrad=true"],
    "adamw": ["optimizer=adamw", "optimizer.lr=0.05", "optimizer.weight_decay=0.1"],
    "rmsprop": ["optimizer=rmsprop", "optimizer.momentum=0.5", "optimizer.centered=true"],
    "adagrad": ["optimizer=adagrad", "optimizer.lr=0.1", "optimizer.lr_decay=0.01"],
}


@pytest.mark.parametrize("rule", sorted(RULE_RUNS))
def test_every_rule_resumes_bit_for_bit(tmp_path, rule):
    """Each rule's state (moments, accumulators, its step count) is in the checkpoint."""
    overrides = [o for o in HARD_RUN if not o.startswith("optimizer.")] + RULE_RUNS[rule]
    overrides = [o for o in overrides if o != "trainer.steps=300"] + ["trainer.steps=120"]
    straight_dir, run_dir = tmp_path / "straight", tmp_path / "interrupted"
    run_experiment(compose_config(overrides), straight_dir, overrides=overrides)
    first = run_experiment(
        compose_config(overrides), run_dir, overrides=overrides, interrupt=StopAfter(57)
    )
    assert first.status == "interrupted"
    assert load_checkpoint(run_dir)["optimizer_state"]["rule"] == rule
    final = resume(run_dir)
    assert final.steps == 120
    assert comparable(read_metrics(run_dir)) == comparable(read_metrics(straight_dir))
    assert scalars(run_dir) == scalars(straight_dir)


def test_resume_from_an_older_checkpoint_after_a_crash(tmp_path, straight):
    """A crash loses the steps after the last checkpoint; TensorBoard drops their points."""
    run_dir = tmp_path / "crashed"
    run_experiment(compose_config(HARD_RUN), run_dir, overrides=HARD_RUN, interrupt=StopAfter(100))
    saved = tmp_path / "step100.pt"
    shutil.copy(run_dir / CHECKPOINT_NAME, saved)
    resume(run_dir, stop_after=37)  # the crashed session: logs steps 100..136
    shutil.copy(saved, run_dir / CHECKPOINT_NAME)  # all that survived the crash
    final = resume(run_dir)
    assert final.steps == 300
    curves = scalars(run_dir)
    assert curves == scalars(straight)
    steps = [s for s, _ in curves["train/loss"]]
    assert len(steps) == len(set(steps))  # one unbroken curve, no duplicated points


def test_resuming_a_finished_run_says_so(straight) -> None:
    with pytest.raises(AlreadyFinished, match="finished after 300 steps"):
        resume(straight)


def test_resume_refuses_a_different_problem(tmp_path) -> None:
    run_dir = tmp_path / "run"
    run_experiment(compose_config(HARD_RUN), run_dir, overrides=HARD_RUN, interrupt=StopAfter(5))
    for change in ("objective.data_seed=1", "device.dtype=float32", "objective=quadratic"):
        with pytest.raises(GdlabError, match=r"changes (objective|device\.dtype)|do not compose"):
            resume(run_dir, change)
    final = resume(run_dir, "trainer.steps=400")  # a longer budget is fine
    assert final.steps == 400


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "not a readable"),
        (lambda p: p.write_bytes(b""), "not a readable"),
        (lambda p: p.write_text("hello, I am a text file"), "not a readable"),
        (lambda p: torch.save({"weights": torch.ones(3)}, p), "not a gdlab checkpoint"),
        (lambda p: torch.save([1, 2, 3], p), "not a gdlab checkpoint"),
        (lambda p: torch.save(GdlabError("pickled object"), p), "not a readable"),
    ],
    ids=["truncated", "empty", "text", "foreign-dict", "foreign-list", "pickled-object"],
)
def test_damaged_checkpoints_are_one_line_errors(tmp_path, damage, message) -> None:
    run_dir = tmp_path / "run"
    run_experiment(compose_config(HARD_RUN), run_dir, overrides=HARD_RUN, interrupt=StopAfter(5))
    damage(run_dir / CHECKPOINT_NAME)
    with pytest.raises(GdlabError, match=message) as caught:
        load_checkpoint(run_dir)
    assert "\n" not in str(caught.value)


def test_checkpoint_missing_a_field_is_named(tmp_path) -> None:
    save_checkpoint(tmp_path, {"step": 3, "status": "running", "params": {}})
    with pytest.raises(GdlabError, match="'config_yaml' is missing"):
        load_checkpoint(tmp_path)


def test_checkpoint_with_non_tensor_parameters_is_named(tmp_path) -> None:
    state = {"step": 3, "status": "running", "params": {"x": [1.0]}, "momentum_buffers": []}
    save_checkpoint(tmp_path, {**state, "config_yaml": "", "overrides": []})
    with pytest.raises(GdlabError, match="parameters or optimizer state are not tensors"):
        load_checkpoint(tmp_path)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch) -> None:
    """A failure while writing leaves the previous checkpoint and no temporary file."""
    save_checkpoint(tmp_path, {"step": 1, "status": "running"})
    before = (tmp_path / CHECKPOINT_NAME).read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(DiskFull, match="the disk is full"):  # one line, the old file kept
        save_checkpoint(tmp_path, {"step": 2, "status": "running"})
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]


def test_periodic_checkpoints_follow_checkpoint_every(tmp_path) -> None:
    seen: list[int] = []
    import gdlab.experiment as experiment

    original = experiment.save_checkpoint

    def spy(run_dir, state):
        seen.append(state["step"])
        return original(run_dir, state)

    experiment.save_checkpoint = spy
    try:
        run_experiment(compose_config([*HARD_RUN, "trainer.checkpoint_every=60"]), tmp_path)
    finally:
        experiment.save_checkpoint = original
    assert seen == [60, 120, 180, 240, 300, 300]  # periodic ones, then the final one
    assert load_checkpoint(tmp_path)["status"] == "finished"
