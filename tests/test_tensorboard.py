"""The TensorBoard writer's event files have the structure real TensorBoard (2.21) needs to show
every HParams row filled for single runs and sweep members in one logdir (see the docstring of
pql_jax/run/tensorboard.py). Reads the event files with tensorboardX's protos only: TensorBoard
itself is not a test dependency."""

from __future__ import annotations

import math
import struct

import pytest
import yaml

from pql_jax import config as cfg
from pql_jax.run.tensorboard import (CONFIG_TEXT_TAG, CORE_HPARAMS, EXPERIMENT_TAG, HPARAM_METRICS, METRIC_TAGS,
                                     SESSION_START_INFO_TAG, TensorBoard, attached_hparams, hparam_names, metric_tag)

SWEPT = ("agent.utd", "agent.batch_size")
# Row keys that are constants, hyperparameters, or copies of the x axis / of eval_return.
NOT_METRICS = ("member", "group", "env", "seed", "utd", "utd_label", "batch_size", "critic_lr", "actor_lr",
               "critic_width", "model_size", "step", "return", "env_steps", "vector_steps", "critic_updates",
               "actor_updates", "flops", "wall_time", "diverged", "nonfinite")


def read_events(run_dir):
    """All Event protos of a run directory (TFRecord framing: length, crc, data, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            events.append(Event.FromString(data[pos + 12:pos + 12 + length]))
            pos += 12 + length + 4
    return events


def summary_values(run_dir):
    return [(e.step, v) for e in read_events(run_dir) if e.HasField("summary") for v in e.summary.value]


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list] = {}
    for step, v in summary_values(run_dir):
        if v.HasField("simple_value"):
            out.setdefault(v.tag, []).append((step, v.simple_value))
    return out


def session_start_hparams(run_dir) -> dict:
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    infos = [HParamsPluginData.FromString(v.metadata.plugin_data.content).session_start_info
             for _, v in summary_values(run_dir) if v.tag == SESSION_START_INFO_TAG]
    assert len(infos) == 1
    assert all(v.metadata.plugin_data.plugin_name == "hparams" for _, v in summary_values(run_dir)
               if v.tag.startswith("_hparams_/"))
    return dict(infos[0].hparams)


def make_row(i: int, utd: float, seed: int) -> dict:
    """A row like the loop's: hyperparameter columns, x-axis copies, counters and metrics."""
    steps = (i + 1) * 1000
    return {
        "member": "m", "group": 0, "env": "cheetah", "seed": seed, "utd": utd, "utd_label": str(utd),
        "batch_size": 256, "critic_lr": 3e-4, "actor_lr": 3e-4, "critic_width": 256, "model_size": 1234,
        "step": steps, "return": 10.0 * i, "env_steps": steps, "vector_steps": steps // 100,
        "critic_updates": int(steps * utd), "actor_updates": 5 * i, "flops": 1e9 * i, "eval_return": 10.0 * i + seed,
        "online_return": math.nan if i == 0 else 9.0 * i, "critic_loss": 1 / (i + 1), "actor_loss": -float(i),
        "q_mean": 2.0 * i, "critic_grad_norm": 0.1 * i, "actor_grad_norm": 0.2 * i, "critic_param_norm": 10.0 + i,
        "actor_param_norm": 5.0 + i, "td_train": 1 / (i + 2), "td_val": 1.5 / (i + 2), "td_gap": 0.5 / (i + 2),
        "passive0_td_train": 1 / (i + 3), "passive0_td_val": math.inf if i == 1 else 2 / (i + 3),
        "episodes": 3.0 + i, "env_steps_per_s": math.nan if i == 0 else 1000.0 + i,
        "updates_per_s": math.nan if i == 0 else 500.0, "wall_time": 1.0 * i, "diverged": False, "nonfinite": False,
    }


def write_run(logdir, config, swept, model_size=4096, points=5, purge_step=None, first=0):
    tb = TensorBoard(logdir, purge_step=purge_step)
    tb.start(attached_hparams(config, model_size, swept), cfg.dump(config))
    for i in range(first, points):
        row = make_row(i, config.agent.utd, config.run.seed)
        tb.scalars(row, row["env_steps"])
    tb.close()


@pytest.fixture
def runs(tmp_path):
    """A logdir with a sweep (2 members) and a single run, as `pql-jax sweep` / `train` write them."""
    base = cfg.Config()
    member0 = cfg.set_value(cfg.set_value(base, "agent.utd", 0.5), "agent.batch_size", 256)
    member1 = cfg.set_value(cfg.set_value(cfg.set_value(base, "agent.utd", 1.0), "agent.batch_size", 512),
                            "run.seed", 1)
    dirs = {"sweep0": tmp_path / "sweep" / "tb" / "utd=0.5", "sweep1": tmp_path / "sweep" / "tb" / "utd=1",
            "single": tmp_path / "single" / "tb", "single_same_keys": tmp_path / "single2" / "tb"}
    write_run(dirs["sweep0"], member0, SWEPT)
    write_run(dirs["sweep1"], member1, SWEPT, model_size=8192)
    write_run(dirs["single"], base, ())
    write_run(dirs["single_same_keys"], base, SWEPT)
    return dirs


def test_hparam_names_are_core_axes_plus_swept_keys():
    assert hparam_names(()) == list(CORE_HPARAMS)
    assert {"seed", "model_size"} <= set(CORE_HPARAMS)
    names = hparam_names(("agent.gamma", "agent.utd", "env.name"))
    assert names == [*CORE_HPARAMS, "gamma", "env"]
    assert set(attached_hparams(cfg.Config(), 1, ("agent.gamma",))) == set(CORE_HPARAMS) | {"gamma"}


def test_same_hparam_names_for_single_runs_and_sweeps(runs):
    names = {k: set(session_start_hparams(d)) for k, d in runs.items()}
    assert names["sweep0"] == names["sweep1"] == names["single_same_keys"] == set(hparam_names(SWEPT))
    # A single run with nothing swept fills the same columns as a sweep over the scaling axes.
    assert names["single"] == set(CORE_HPARAMS) == names["sweep0"]
    hp = session_start_hparams(runs["sweep1"])
    assert (hp["utd"].number_value, hp["batch_size"].number_value, hp["seed"].number_value,
            hp["model_size"].number_value) == (1.0, 512.0, 1.0, 8192.0)
    # One value type per name in every run (a mixed type makes TensorBoard show the column as text).
    for name in CORE_HPARAMS:
        assert {session_start_hparams(d)[name].WhichOneof("kind") for d in runs.values()} == {"number_value"}


def test_no_experiment_summary_and_session_info_in_the_scalars_run(runs):
    # TensorBoard then builds the experiment from every run's session_start_info (union of columns,
    # independent of run order); an experiment summary in any run would replace that with one run's.
    for run_dir in runs.values():
        tags = {v.tag for _, v in summary_values(run_dir)}
        assert EXPERIMENT_TAG not in tags and "_hparams_/session_end_info" not in tags
        assert SESSION_START_INFO_TAG in tags  # same directory as the scalars: metric group ""
        assert [p.name for p in run_dir.iterdir() if p.is_dir()] == []  # no sub-run


def test_hparams_metrics_are_the_first_real_scalar_tags(runs):
    tags = sorted(scalars(runs["sweep0"]))
    assert set(HPARAM_METRICS) <= set(tags) and {"return/eval", "td/train", "td/val"} <= set(HPARAM_METRICS)
    # The HParams dashboard ticks the first 5 metric columns of the computed experiment, which
    # lists every scalar tag sorted: the HParams metrics must come first.
    assert len(HPARAM_METRICS) <= 5 and tags[:len(HPARAM_METRICS)] == sorted(HPARAM_METRICS)
    assert all(series and len(series) >= 4 for series in (scalars(runs["sweep0"])[t] for t in HPARAM_METRICS))


def test_only_real_metrics_are_scalars(runs):
    series = scalars(runs["sweep0"])
    assert not [t for t in series if t.startswith("other/")]
    assert all(metric_tag(key) is None for key in NOT_METRICS)
    expected = {metric_tag(k) for k in make_row(0, 1.0, 0) if metric_tag(k)}
    assert set(series) == expected
    assert {"td_passive0/train", "td_passive0/val"} <= set(series)
    assert set(METRIC_TAGS.values()) >= expected
    for tag, points in series.items():  # x axis = env steps
        assert {s for s, _ in points} <= {1000, 2000, 3000, 4000, 5000}, tag


def test_nan_and_inf_not_written(runs):
    series = scalars(runs["sweep0"])
    assert [s for s, _ in series["return/online"]] == [2000, 3000, 4000, 5000]
    assert [s for s, _ in series["throughput/env_steps_per_s"]] == [2000, 3000, 4000, 5000]
    assert [s for s, _ in series["td_passive0/val"]] == [1000, 3000, 4000, 5000]
    assert all(math.isfinite(v) for points in series.values() for _, v in points)


def test_config_text_summary(runs):
    texts = [v for _, v in summary_values(runs["sweep1"]) if v.tag == CONFIG_TEXT_TAG]
    assert len(texts) == 1 and texts[0].metadata.plugin_data.plugin_name == "text"
    assert not texts[0].tensor.tensor_shape.dim  # rank 0: rendered as markdown, not as a table
    text = texts[0].tensor.string_val[0].decode()
    assert text.startswith("```yaml\n") and text.endswith("\n```")
    loaded = yaml.safe_load(text.removeprefix("```yaml\n").removesuffix("```"))
    assert loaded["agent"]["utd"] == 1.0 and loaded["agent"]["batch_size"] == 512 and loaded["run"]["seed"] == 1


def test_resume_purges_points_past_the_checkpoint(tmp_path):
    config = cfg.Config()
    run_dir = tmp_path / "tb"
    write_run(run_dir, config, ())
    write_run(run_dir, config, (), purge_step=3000, first=3)
    files = sorted(run_dir.glob("events.out.tfevents.*"))
    assert len(files) == 2  # same second: the resumed writer does not overwrite the first file
    assert [e.step for e in read_events(run_dir) if e.HasField("summary")
            and e.summary.value[0].tag == "return/eval"] == [1000, 2000, 3000, 4000, 5000, 4000, 5000]
    starts = [e.step for e in read_events(run_dir) if e.HasField("session_log") and e.session_log.status == 1]
    # TensorBoard drops steps >= a later START's step: 4000 and 5000 of the first writer, not
    # 3000. Its Python loader ignores a run's first START, so the fresh writer writes one too.
    assert starts == [0, 3001]
