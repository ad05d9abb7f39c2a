"""The TensorBoard writer's event files have the structure real TensorBoard (2.21) needs to show
every HParams row filled for single runs and sweep members in one logdir (see the docstring of
pql_jax/run/tensorboard.py). Reads the event files with tensorboardX's protos: TensorBoard itself
is not a test dependency; where it is installed, `test_tensorboard_http_api_shows` also reads a
real sweep and single run back through TensorBoard's own HTTP data API, in-process."""

from __future__ import annotations

import math
import struct

import pytest
import yaml

from helpers import POINTMASS, write_sweep
from pql_jax import config as cfg
from pql_jax.cli import main
from pql_jax.plan.sweep import load_sweep
from pql_jax.run.loop import SWEEP
from pql_jax.run.tensorboard import (CONFIG_TEXT_TAG, CORE_HPARAMS, EXPERIMENT_TAG, HPARAM_METRICS, METRIC_TAGS,
                                     SESSION_START_INFO_TAG, TABLE_HPARAM_KEYS, TensorBoard, attached_hparams,
                                     hparam_names, metric_tag, run_name, short_name)

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
        "nonfinite_transitions": 3.0 if i == 2 else 0.0, "eval_env_steps": steps, "eval_return_std": 2.0 + i,
        "eval_episode_length": 50.0 - i, "group_env_steps_per_s": math.nan if i == 0 else 4000.0 + 4 * i,
        "group_updates_per_s": math.nan if i == 0 else 2000.0,
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


def test_hparam_names_are_the_table_columns_plus_swept_keys():
    names = hparam_names(())
    assert names[:len(CORE_HPARAMS)] == list(CORE_HPARAMS) and {"seed", "model_size"} <= set(CORE_HPARAMS)
    # every hyperparameter column of the results table, swept or not: a single run has actor_lr too
    assert set(names) == set(CORE_HPARAMS) | {short_name(k) for k in TABLE_HPARAM_KEYS}
    assert {"actor_lr", "critic_lr", "gamma", "tau", "env", "num_envs", "critic_width"} <= set(names)
    assert len(names) == len(set(names))
    # a swept key that is a table column adds nothing; another one (a shape field) is appended
    assert hparam_names(("agent.gamma", "agent.utd", "env.name")) == names
    assert hparam_names(("agent.actor_depth",)) == [*names, "actor_depth"]
    hp = attached_hparams(cfg.Config(), 1, ("agent.actor_depth",))
    assert set(hp) == set(names) | {"actor_depth"} and hp["actor_lr"] == cfg.Config().agent.actor_lr


def test_same_hparam_names_for_single_runs_and_sweeps(runs):
    names = {k: set(session_start_hparams(d)) for k, d in runs.items()}
    assert names["sweep0"] == names["sweep1"] == names["single_same_keys"] == set(hparam_names(SWEPT))
    # A single run with nothing swept fills the same columns as a sweep (actor_lr included).
    assert names["single"] == set(hparam_names()) == names["sweep0"] and "actor_lr" in names["single"]
    hp = session_start_hparams(runs["sweep1"])
    assert (hp["utd"].number_value, hp["batch_size"].number_value, hp["seed"].number_value,
            hp["model_size"].number_value) == (1.0, 512.0, 1.0, 8192.0)
    # One value type per name in every run (a mixed type makes TensorBoard show the column as text).
    for name in hparam_names():
        assert len({session_start_hparams(d)[name].WhichOneof("kind") for d in runs.values()}) == 1, name
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
    assert set(series) == expected and "eval_env_steps" not in METRIC_TAGS
    assert {"td_passive0/train", "td_passive0/val"} <= set(series)
    assert set(METRIC_TAGS.values()) >= expected
    for tag, points in series.items():  # x axis = env steps
        assert {s for s, _ in points} <= {1000, 2000, 3000, 4000, 5000}, tag


def test_nonfinite_transitions_only_where_not_zero(runs):
    # 0 in almost every run: a flat 0 curve per run is noise, so only its non-zero points are written
    assert scalars(runs["sweep0"])["train/nonfinite_transitions"] == [(3000, 3.0)]
    tb = TensorBoard(runs["sweep0"].parent / "clean")
    row = make_row(0, 1.0, 0)
    tb.scalars(row, row["env_steps"])
    tb.close()
    assert "train/nonfinite_transitions" not in scalars(runs["sweep0"].parent / "clean")


def test_group_throughput_and_eval_statistics_tags(runs):
    series = scalars(runs["sweep0"])
    # the group's rate under its own name; the run's own env steps/s (brax's training/sps) as before
    assert series["throughput/group_env_steps_per_s"][-1] == (5000, 4016.0)
    assert series["throughput/env_steps_per_s"][-1] == (5000, 1004.0)
    assert series["throughput/group_critic_updates_per_s"][-1] == (5000, 2000.0)
    # brax's eval/episode_reward_std and eval/avg_episode_length, at the evaluated policy's step
    assert series["test/return_std"] == [(s, 2.0 + i) for i, s in enumerate(range(1000, 6000, 1000))]
    assert series["test/episode_length"][0] == (1000, 50.0)
    tb = TensorBoard(runs["sweep0"].parent / "eval_step")
    tb.scalars(make_row(4, 1.0, 0), 5000, eval_step=3200)
    tb.close()
    at = scalars(runs["sweep0"].parent / "eval_step")
    assert at["return/eval"] == [(3200, 40.0)] and at["test/return_std"] == [(3200, 6.0)]
    assert at["test/episode_length"] == [(3200, 46.0)] and at["td/train"][0][0] == 5000


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


def sweep_file(path, body: dict):
    """A pointmass sweep file with its axes in the order given (as the workflow writes them)."""
    path.write_text(yaml.safe_dump({"base": str(POINTMASS), **body}, sort_keys=False))
    return path


def test_member_run_names_are_short_and_distinct_early(tmp_path):
    sweep = load_sweep(sweep_file(tmp_path / "s.yaml", {
        "seeds": 2, "grid": {"utd": ["1/16", "1/8"], "batch_size": [32, 64]},
        "zip": {"critic_lr": [1e-3, 3e-4], "actor_lr": [1e-3, 1e-4]}}))
    names = [run_name(m) for m in sweep.members]
    assert names[0] == "m000 utd=1:16 B=32 lr=1e-3 s0"  # equal learning rates: one `lr`
    assert names[3] == "m003 utd=1:16 B=32 clr=3e-4 alr=1e-4 s1"
    assert sweep.members[0].name == "m000_utd=1:16_batch_size=32_critic_lr=0.001_actor_lr=0.001_seed=0"
    assert len({n[:4] for n in names}) == len(names)  # distinct in the first 4 characters
    assert all("/" not in n and len(n) <= 40 for n in names)
    other = load_sweep(sweep_file(tmp_path / "o.yaml", {"grid": {"gamma": [0.99, 0.9], "critic_width": [64]}}))
    assert [run_name(m) for m in other.members] == ["m000 gamma=0.99 width=64 s0", "m001 gamma=0.9 width=64 s0"]


def test_member_tb_dir_is_the_run_name_unless_one_was_written(tmp_path):
    member = load_sweep(write_sweep(tmp_path, {"grid": {"utd": ["1/16"]}})).members[0]
    assert SWEEP.tb_dir(tmp_path, member) == tmp_path / "tb" / "m000 utd=1:16 s0"
    (tmp_path / "tb" / member.name).mkdir(parents=True)  # a run directory from before the short names
    assert SWEEP.tb_dir(tmp_path, member) == tmp_path / "tb" / member.name  # resumed into the same run


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    """`pql-jax sweep` (2 members in one vmapped program) and `pql-jax train` into one logdir."""
    root = tmp_path_factory.mktemp("logdir")
    steps = ["run.total_env_steps=1600", "run.chunk_steps=25"]  # 2 chunks: what the tests read, no more
    sweep = sweep_file(root / "sweep.yaml", {"grid": {"utd": ["1/32", "1/16"]},
                                             "zip": {"critic_lr": [1e-3], "actor_lr": [1e-3]}})
    assert main(["sweep", str(sweep), "--out", str(root / "runs" / "sweep"), "--no-progress", *steps]) == 0
    assert main(["train", "--config", str(POINTMASS), "--out", str(root / "runs" / "single"), "--no-progress",
                 *steps]) == 0
    return root / "runs"


def test_what_the_event_files_hold(logdir):
    members = sorted(p.name for p in (logdir / "sweep" / "tb").iterdir())
    assert members == ["m000 utd=1:32 lr=1e-3 s0", "m001 utd=1:16 lr=1e-3 s0"]
    runs = [logdir / "sweep" / "tb" / m for m in members] + [logdir / "single" / "tb"]
    series = [scalars(r) for r in runs]
    # a member's own env steps/s is half its group's; a single run's group is itself
    for member in series[:2]:
        for (step, own), (same, group) in zip(member["throughput/env_steps_per_s"],
                                              member["throughput/group_env_steps_per_s"]):
            assert step == same and group == pytest.approx(2 * own)
    assert series[0]["throughput/group_env_steps_per_s"] == series[1]["throughput/group_env_steps_per_s"]
    assert series[2]["throughput/group_env_steps_per_s"] == series[2]["throughput/env_steps_per_s"]
    for run in series:
        evals = [s for s, _ in run["return/eval"]]
        assert [s for s, _ in run["test/return_std"]] == evals == [s for s, _ in run["test/episode_length"]]
        assert all(v >= 0 for _, v in run["test/return_std"])
        assert all(1 <= v <= 50 for _, v in run["test/episode_length"])  # pointmass: 50 steps at most
        assert "train/nonfinite_transitions" not in run  # no non-finite step in these runs
    hparams = [session_start_hparams(r) for r in runs]
    assert all(set(h) == set(hparam_names()) for h in hparams)
    assert hparams[2]["actor_lr"].number_value == cfg.load(POINTMASS).agent.actor_lr


def test_tensorboard_http_api_shows(logdir):
    """What a user sees, through TensorBoard's own backend (in-process, its Python loader)."""
    pytest.importorskip("tensorboard")
    import json

    from tensorboard import program
    from tensorboard.backend import application
    from werkzeug.test import Client

    board = program.TensorBoard()
    board.configure(argv=[None, "--logdir", str(logdir), "--load_fast=false", "--reload_interval=0"])
    provider, multiplexer = board._make_data_provider()
    client = Client(application.TensorBoardWSGIApp(board.flags, board.plugin_loaders, provider,
                                                   board.assets_zip_provider, multiplexer))
    get = lambda path: json.loads(client.get(path).get_data())
    post = lambda path, body: json.loads(client.post(path, json=body).get_data())
    runs = sorted(get("/data/runs"))
    assert runs == ["single/tb", "sweep/tb/m000 utd=1:32 lr=1e-3 s0", "sweep/tb/m001 utd=1:16 lr=1e-3 s0"]
    tags = get("/data/plugin/scalars/tags")
    for run in runs:
        assert {"return/eval", "test/return_std", "test/episode_length", "throughput/env_steps_per_s",
                "throughput/group_env_steps_per_s"} <= set(tags[run])
        assert "train/nonfinite_transitions" not in tags[run] and not any(t.startswith("other/") for t in tags[run])
    experiment = post("/data/plugin/hparams/experiment", {"experimentName": ""})
    assert {h["name"] for h in experiment["hparamInfos"]} == set(hparam_names())
    metrics = [m["name"]["tag"] for m in experiment["metricInfos"]]
    assert metrics[:len(HPARAM_METRICS)] == list(HPARAM_METRICS)  # the columns ticked by default
    groups = post("/data/plugin/hparams/session_groups",
                  {"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN"], "colParams": [],
                   "startIndex": 0, "sliceSize": 100})["sessionGroups"]
    assert sorted(g["name"] for g in groups) == runs
    for group in groups:  # every row fills every hyperparameter column
        assert set(group["hparams"]) == set(hparam_names()), group["name"]
    scalar = get("/data/plugin/scalars/scalars?run=single/tb&tag=throughput/group_env_steps_per_s")
    assert scalar and all(v > 0 for _, _, v in scalar)
