"""What TensorBoard shows first, worked out with TensorBoard's own rules and its HParams backend.

Time Series (TensorBoard 2.21's web app, metrics/utils.ts) groups the tags of every run by the
text before the first `/`, orders the groups by their tags (`compareTagNames`, ported below)
and opens the first two on a first visit; the run list sorts run names by character code. The
HParams rows are read through the plugin's own handlers over a data provider, as the server
does, without a server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from tensorboard import context as tb_context
from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import (
    api_pb2,
    backend_context,
    get_experiment,
    list_session_groups,
    metadata,
)

from gdlab.experiment import run_experiment
from gdlab.population.job import run_population_job
from gdlab.population.tensorboard import CURVE_RUNS, MEMBERS_DIR
from gdlab.results import POPULATION_JSON
from gdlab.sinks.hparams import RESULT
from gdlab.sinks.tensorboard import PARAMS, PLOTS, TRAIN, image_tag
from hydra_plugins.gdlab_population._plan import plan_sweep
from tests.conftest import compose_config

# ------------------------------------------------------------------ TensorBoard's ordering


def _is_digit(c: str) -> bool:
    return "0" <= c <= "9"


def _is_break(c: str) -> bool:
    return c == "/" or _is_digit(c)


def _number_end(s: str, i: int) -> int:
    """Where the number starting before `i` ends (natural, `.` fraction, `e` exponent)."""
    state = "natural"
    while i < len(s):
        c = s[i]
        if state == "natural":
            if c == ".":
                state = "real"
            elif c in "eE":
                state = "sign"
            elif not _is_digit(c):
                break
        elif state == "real":
            if c in "eE":
                state = "sign"
            elif not _is_digit(c):
                break
        elif state == "sign":
            if not _is_digit(c) and c not in "+-":
                break
            state = "exponent"
        elif not _is_digit(c):
            break
        i += 1
    return i


def compare_tag_names(a: str, b: str) -> int:
    """TensorBoard's `compareTagNames`: numbers compare by value, `/` and digits sort before
    every other character, the rest by character code."""
    i = j = 0
    while True:
        if i == len(a):
            return 0 if j == len(b) else -1
        if j == len(b):
            return 1
        if _is_digit(a[i]) and _is_digit(b[j]):
            i0, j0 = i, j
            i, j = _number_end(a, i + 1), _number_end(b, j + 1)
            x, y = float(a[i0:i]), float(b[j0:j])
            if x != y:
                return -1 if x < y else 1
            continue
        if _is_break(a[i]):
            if not _is_break(b[j]):
                return -1
        elif _is_break(b[j]):
            return 1
        elif a[i] != b[j]:
            return -1 if a[i] < b[j] else 1
        i, j = i + 1, j + 1


def time_series_groups(tags: set[str]) -> list[str]:
    """The Time Series groups in the order shown (`groupCardIdWithMetdata`)."""
    from functools import cmp_to_key

    groups: list[str] = []
    for tag in sorted(tags, key=cmp_to_key(compare_tag_names)):
        group = tag.split("/", 1)[0]
        if group not in groups:
            groups.append(group)
    return groups


def test_the_port_orders_tags_as_tensorboard_does() -> None:
    assert compare_tag_names("train/lr", "train_params/x") == -1  # `/` before letters
    assert compare_tag_names("params/x/2", "params/x/10") == -1  # numbers by value
    assert compare_tag_names("final/loss", "train/loss") == -1
    assert time_series_groups({"params/x", "final/loss", "train/loss", "plots/loss"}) == [
        "final",
        "params",
        "plots",
        "train",
    ]  # what gdlab wrote before: the final dots and the parameters opened, the loss closed


# ------------------------------------------------------------------ reading back


def provider(logdir: Path) -> MultiplexerDataProvider:
    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    return MultiplexerDataProvider(mux, str(logdir))


def logdir_tags(logdir: Path) -> dict[str, dict[str, set[str]]]:
    """{run: {"scalars": tags, "images": tags}}: what Time Series lists, from the data provider
    the server reads (every run with data, its scalar and image tags)."""
    data = provider(logdir)
    request = tb_context.RequestContext()
    runs = {
        run.run_name: {"scalars": set(), "images": set()}
        for run in data.list_runs(request, experiment_id="")
    }
    for run, tags in data.list_scalars(request, experiment_id="", plugin_name="scalars").items():
        runs[run]["scalars"] = set(tags)
    for run, tags in data.list_blob_sequences(
        request, experiment_id="", plugin_name="images"
    ).items():
        runs[run]["images"] = set(tags)
    return runs


def hparams_backend(logdir: Path) -> tuple[Any, Any]:
    """The HParams experiment and session groups, from the plugin's handlers."""
    context = backend_context.Context(
        base_plugin.TBContext(logdir=str(logdir), data_provider=provider(logdir))
    )
    request = tb_context.RequestContext()
    experiment = get_experiment.Handler(request, context, "", api_pb2.GetExperimentRequest()).run()
    statuses = list(api_pb2.Status.values())
    groups = list_session_groups.Handler(
        request,
        context,
        "",
        api_pb2.ListSessionGroupsRequest(allowed_statuses=statuses, slice_size=10_000),
    ).run()
    return experiment, groups


def metric_values(group: Any) -> dict[tuple[str, str], float]:
    return {(m.name.group, m.name.tag): m.value for m in group.metric_values}


# ------------------------------------------------------------------ a plain run


def test_a_runs_plots_go_after_its_curves_and_other_images_keep_their_tag() -> None:
    assert image_tag("plots/loss") == "train_plots/loss"
    assert image_tag("race/paths") == "race/paths"


def test_a_run_shows_its_loss_first_and_keeps_final_metrics_for_hparams(tmp_path: Path) -> None:
    cfg = compose_config(["trainer.progress=false", "objective=multivariate"])
    result = run_experiment(cfg, tmp_path / "run", overrides=["objective=multivariate"])

    (run_tags,) = logdir_tags(tmp_path).values()
    groups = time_series_groups(run_tags["scalars"] | run_tags["images"])
    assert groups == [TRAIN, PARAMS, PLOTS, RESULT]
    assert groups[:2] == ["train", "train_params"]  # the two opened: loss and parameters
    assert {"train/loss", "train/grad_norm", "train/lr"} <= run_tags["scalars"]
    assert not any(tag.startswith("final/") for tag in run_tags["scalars"])
    assert run_tags["images"] and all(t.startswith("train_plots/") for t in run_tags["images"])

    experiment, response = hparams_backend(tmp_path)
    (group,) = response.session_groups
    assert group.name == "run" and [s.name for s in group.sessions] == ["run"]
    assert group.hparams["objective"].string_value == "multivariate"
    values = metric_values(group)  # group "": the session's own run holds the metrics
    assert values[("", "train_result/loss")] == pytest.approx(result.final_loss, rel=1e-6)
    assert values[("", "train_result/steps")] == result.steps
    assert values[("", "train_result/diverged")] == 0.0
    assert ("", "train_result/distance_to_minimizer") in values
    assert values[("", "train/loss")] == pytest.approx(result.final_loss, rel=1e-6)  # last point
    names = [(m.name.group, m.name.tag) for m in experiment.metric_infos]
    assert ("", "train_result/loss") in names


def test_a_sweep_is_one_run_per_job_with_the_loss_group_first(tmp_path: Path) -> None:
    for lr in ("0.1", "0.7"):
        overrides = ["objective=quadratic", f"optimizer.lr={lr}"]
        cfg = compose_config(["trainer.progress=false", "logger.plots=false", *overrides])
        run_experiment(cfg, tmp_path / f"optimizer.lr={lr}", overrides=overrides)
    runs = logdir_tags(tmp_path)
    assert sorted(runs) == ["optimizer.lr=0.1", "optimizer.lr=0.7"]  # no sub-runs
    tags = set().union(*(r["scalars"] for r in runs.values()))
    assert time_series_groups(tags) == [TRAIN, PARAMS, RESULT]
    _, response = hparams_backend(tmp_path)
    assert sorted(g.name for g in response.session_groups) == sorted(runs)


# ------------------------------------------------------------------ a population job


def test_a_population_lists_its_three_curves_first_and_a_row_per_member(tmp_path: Path) -> None:
    grid = ["optimizer.lr=0.01,0.1,0.4,0.9,1.5", "optimizer.momentum=0,0.5"]
    parsed = OverridesParser.create().parse_overrides(["objective=quadratic", *grid])
    (plan,) = plan_sweep(parsed, None, {"strategy": "auto", "chunk_size": None})
    cfg = compose_config(["trainer.progress=false", "logger.plots=false", *plan.overrides])
    job_dir = tmp_path / "+population=0"
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(plan.overrides))
    run_population_job(cfg, plan, job_dir)
    picks = json.loads((job_dir / POPULATION_JSON).read_text())["tensorboard"]

    runs = logdir_tags(tmp_path)
    names = sorted(runs)  # the run list's order: by character code
    curves = [f"+population=0/{CURVE_RUNS[w]}" for w in ("best", "median", "worst")]
    assert (
        names[:3] == curves == ["+population=0/Best", "+population=0/Median", "+population=0/Worst"]
    )
    members = names[3:]
    assert members == [f"+population=0/{MEMBERS_DIR}/{i:05d}" for i in range(10)]
    for run in curves:
        assert {"train/loss", "train/grad_norm", "train/lr"} <= runs[run]["scalars"]
    for run in members:  # a member's run holds its HParams row's metrics, no curve
        assert {tag.split("/", 1)[0] for tag in runs[run]["scalars"]} == {RESULT}
    tags = set().union(*(r["scalars"] for r in runs.values()))
    assert time_series_groups(tags)[0] == TRAIN

    _, response = hparams_backend(tmp_path)
    assert sorted(g.name for g in response.session_groups) == members  # curves are not rows
    best = next(g for g in response.session_groups if g.name.endswith(f"{picks['best']:05d}"))
    assert ("", "train_result/loss") in metric_values(best)
    hparams = provider(tmp_path).list_tensors(
        tb_context.RequestContext(), experiment_id="", plugin_name=metadata.PLUGIN_NAME
    )
    assert set(hparams) == set(members)  # no session start or end in the curve runs
