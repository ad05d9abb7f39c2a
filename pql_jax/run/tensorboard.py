"""The one TensorBoard writer: single runs (`OUT/tb/`) and sweep members (`OUT/tb/<run name>/`).

What a run's event files hold, and why (checked against TensorBoard 2.21's HParams backend,
`tensorboard/plugins/hparams/backend_context.py`, and its dashboard):

- Run names (a run is its directory, relative to `--logdir`): a sweep member's is `run_name`,
  short and distinct from its start (`m000 utd=1:16 B=32 lr=1e-3 s0`: index, swept values,
  seed), so legends and the HParams Trial ID column show the part that differs; `Member.name`
  (results.csv's `member`, checkpoints) keeps its long form. A run directory written under the
  long name keeps it on resume (`loop.Layout.tb_dir`). A workflow stage's members are under
  `<stage>/run/tb/` (the stage's sweep run directory, whose layout resume and `pql-jax merge`
  rely on).
- Scalars: only real, time-varying metrics (`METRIC_TAGS`), x axis = env steps. No constants
  (hyperparameters are HParams, the rest is the config text), no copies of the x axis (`step`,
  `env_steps`, `vector_steps`, update/FLOP counters, wall time) or of `return/eval` (`return`);
  NaN/Inf points are skipped (the loop passes NaN for throughput on the compile chunk), and
  `train/nonfinite_transitions` is written only where it is not 0 (`NONZERO_ONLY`).
- Evaluation: `return/eval` (mean over the eval envs, one episode each), `test/return_std` (its
  spread across them) and `test/episode_length` (their mean length, env steps), all at the
  evaluated policy's env step: brax's `eval/episode_reward`, `eval/episode_reward_std`,
  `eval/avg_episode_length` (Tianshou's `test/reward_std`, `test/length`).
- Throughput: `throughput/env_steps_per_s` and `throughput/critic_updates_per_s` are the run's
  own (brax's `training/sps`, CleanRL's `charts/SPS`); a sweep member shares one compiled
  program with its group, so its own rate is the group's divided among the members.
  `throughput/group_env_steps_per_s` and `throughput/group_critic_updates_per_s` are the whole
  group's (a single run: its own), the device's rate to compare between sweeps and single runs.
- HParams: one `session_start_info` per run, written into the run's own directory, so the run's
  scalars are its HParams metrics (last value of the real curves, and clicking a row shows them).
  Attached hyperparameters (`hparam_names`): the results table's hyperparameter columns (the
  scaling axes `utd`, `batch_size`, `critic_lr`, `model_size`, `seed`, every per-member field
  such as `actor_lr`, `gamma`, `tau`, and the table's shape fields `env`, `num_envs`,
  `critic_width`, ...) plus any other swept key, under the same short names for `train` and
  `sweep`, swept or not, so that single runs and sweeps in one logdir fill the same columns.
- NO experiment summary (`_hparams_/experiment`). TensorBoard uses the first run it finds that
  has one, and run order is not stable across server starts; with two kinds of runs in one
  logdir (different swept keys) that picks different column sets and leaves rows blank. With
  none, TensorBoard builds the experiment from all runs' `session_start_info`: the columns are
  the union of every run's names, each column's domain and `differs` are computed from the real
  values (the hparams that differ sort first and are the ones ticked: the dashboard ticks the
  first 5), and the result does not depend on run order.
- Metric columns of that computed experiment are all scalar tags of the session runs, sorted
  lexicographically; the dashboard ticks the first 5. The tags are named so that the first ones
  are exactly `HPARAM_METRICS` (every other tag sorts after `td/val`: `td_passive<i>/`, `test/`,
  `throughput/`, `train/`), so those are the metric columns shown by default.
- A text summary `config` (Text tab): the whole config as YAML in a code block.

Verified with TensorBoard 2.21.0 (tensorboard-data-server 0.7.2) over one logdir holding a sweep
(3 members: swept `agent.utd` and `agent.batch_size`, seeds 0/1) and a single run (resumed once
from env step 3000), 5 points each, through its HTTP API on three server starts plus one with
`--load_fast=false` (all four answers identical): `/data/plugin/hparams/experiment` lists the
hparams batch_size, model_size, seed, utd (differs) and critic_lr, and the metrics return/eval,
return/online, td/overfitting_gap, td/train, td/val, then td_passive0/*, throughput/*, train/*;
`/data/plugin/hparams/session_groups` returns 4 rows, each with all 5 hyperparameters and a value
for every metric; `/data/plugin/scalars/tags` has no `other/*` or hyperparameter tags;
`/data/plugin/text/tags` has `config` in every run; the resumed run's return/eval has exactly 5
points (the pre-crash points past the checkpoint purged). A headless-Chromium screenshot of the
HParams tab showed every cell filled and the first 5 metric columns ticked. Again (issue 31),
in-process through its WSGI app with both loaders (`--load_fast=true` and `false`, identical
answers) over `pql-jax sweep` (2 members) and `pql-jax train` in one logdir: `/data/runs` is
`single/tb`, `sweep/tb/m000 utd=1:32 lr=1e-3 s0`, `sweep/tb/m001 utd=1:16 lr=1e-3 s0`; every
session group has all 25 hyperparameters (actor_lr filled in the single run's row) and the
same metrics; `test/*` and `throughput/group_*` are in every run, `train/nonfinite_transitions`
in none. `tests/test_tensorboard.py` keeps this structure on the event files (and, where
`tensorboard` is installed, checks it through that HTTP API).
"""

from __future__ import annotations

import math
import numbers
import re
import time
from pathlib import Path
from typing import Iterable

from tensorboardX import SummaryWriter
from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData, SessionStartInfo
from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboardX.proto.tensor_pb2 import TensorProto

from pql_jax import config as cfg
from pql_jax.values import format_utd

# Row key -> scalar tag: only real, time-varying metrics. Sorted, the tags start with
# HPARAM_METRICS (the HParams dashboard ticks the first 5 metric columns): every other tag sorts
# after "td/val" ("td_..." > "td/..." because "_" > "/"; "test/" > "td"). That is why the
# evaluation's spread and episode length are `test/*` (Tianshou's names), not brax's `eval/*`:
# an `eval/` group would sort first and push td/val out of the ticked columns.
METRIC_TAGS: dict[str, str] = {
    "eval_return": "return/eval",
    "online_return": "return/online",
    "td_gap": "td/overfitting_gap",
    "td_train": "td/train",
    "td_val": "td/val",
    "eval_return_std": "test/return_std",
    "eval_episode_length": "test/episode_length",
    "env_steps_per_s": "throughput/env_steps_per_s",
    "updates_per_s": "throughput/critic_updates_per_s",
    "group_env_steps_per_s": "throughput/group_env_steps_per_s",
    "group_updates_per_s": "throughput/group_critic_updates_per_s",
    "critic_loss": "train/critic_loss",
    "actor_loss": "train/actor_loss",
    "q_mean": "train/q_mean",
    "critic_grad_norm": "train/critic_grad_norm",
    "actor_grad_norm": "train/actor_grad_norm",
    "critic_param_norm": "train/critic_param_norm",
    "actor_param_norm": "train/actor_param_norm",
    "episodes": "train/episodes_ended",
    "nonfinite_transitions": "train/nonfinite_transitions",
}
_PASSIVE = re.compile(r"passive(\d+)_td_(train|val)")  # passive critics: td_passive<i>/train, /val
METRIC_TAGS.update({f"passive{i}_td_{s}": f"td_passive{i}/{s}" for i in range(8) for s in ("train", "val")})

# The metric columns the HParams tab shows (ticked) by default; the real curves' tags.
HPARAM_METRICS = ("return/eval", "return/online", "td/overfitting_gap", "td/train", "td/val")

# The axes of the scaling fits (pql_jax.scaling) and the seed: always attached.
CORE_HPARAMS = ("utd", "batch_size", "critic_lr", "model_size", "seed")

# Attached to every run (swept or not) so single runs and sweeps fill the same HParams columns:
# the results table's hyperparameter columns (every per-member field, e.g. actor_lr, gamma, tau,
# and the shape fields marked `column=True`: env, num_envs, batch_size, critic_width, ...).
TABLE_HPARAM_KEYS = cfg.field_keys(column=True)

# Written only at points where they are not 0 (a count that is 0 in almost every run).
NONZERO_ONLY = frozenset({"nonfinite_transitions"})

# Evaluation results: written at the evaluated policy's env step (`eval_step`), not the row's.
EVAL_KEYS = frozenset({"eval_return", "eval_return_std", "eval_episode_length"})

# TensorBoard run names of sweep members: short labels of the swept keys (others: the key's last part).
RUN_NAME_LABELS = {"agent.batch_size": "B", "agent.critic_lr": "clr", "agent.actor_lr": "alr",
                   "agent.critic_width": "width", "env.num_envs": "envs", "env.name": "env"}

CONFIG_TEXT_TAG = "config"  # the Text tab's tag for the whole config (YAML)

# TensorBoard's HParams plugin wire names (tensorboard/plugins/hparams/metadata.py).
PLUGIN_NAME = "hparams"
SESSION_START_INFO_TAG = "_hparams_/session_start_info"
EXPERIMENT_TAG = "_hparams_/experiment"


def metric_tag(key: str) -> str | None:
    """The scalar tag of a row key, or None when the key is not a logged metric."""
    tag = METRIC_TAGS.get(key)
    if tag is None and (match := _PASSIVE.fullmatch(key)):
        tag = f"td_passive{match.group(1)}/{match.group(2)}"
    return tag


def short_name(key: str) -> str:
    """The hyperparameter name of a (dotted) config key: agent.utd -> utd, env.name -> env."""
    return "env" if key == "env.name" else key.split(".")[-1]


def hparam_names(swept_keys: Iterable[str] = ()) -> list[str]:
    """The attached hyperparameter names: the core axes (utd, batch_size, critic_lr, model_size,
    seed), the results table's other hyperparameter columns (actor_lr, gamma, env, ...), then any
    swept key's short name not among them, without repeats. Same for `train` and `sweep`, so a
    single run fills every column a sweep over table columns has."""
    table = (short_name(k) for k in TABLE_HPARAM_KEYS)
    return list(dict.fromkeys([*CORE_HPARAMS, *table, *(short_name(k) for k in swept_keys)]))


def attached_hparams(config, model_size: int, swept_keys: Iterable[str] = ()) -> dict:
    """{name: value} for `hparam_names(swept_keys)`, read from a Config (model_size = critic params)."""
    by_name = {short_name(k): k for k in cfg.field_keys()}
    by_name.update({short_name(k): k for k in swept_keys if k.count(".") == 1})
    out = {}
    for name in hparam_names(swept_keys):
        if name == "model_size":
            out[name] = model_size
        elif name in by_name:
            out[name] = cfg.get_value(config, by_name[name])
    return out


def _compact(value) -> str:
    """A short, path-safe text of a swept value: 0.001 -> 1e-3, 0.5 -> 0.5, 1/16 -> 1:16."""
    if isinstance(value, float):
        plain = f"{value:.6g}"
        mantissa, exponent = f"{value:.6e}".split("e")
        scientific = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return min(plain, scientific, key=len)
    return str(value).replace(" ", "").replace("/", ":")


def run_name(member) -> str:
    """The TensorBoard run (directory) name of a sweep member, short and distinct from its start:
    `m000 utd=1:16 B=32 lr=1e-3 s0` (index, swept values, seed; equal critic and actor learning
    rates as one `lr`). `Member.name` (results.csv, checkpoints) stays as it is."""
    config, values = member.config, {k: v for k, v in member.values.items() if k != "run.seed"}
    read = lambda key: cfg.get_value(config, key) if key.count(".") == 1 else values[key]
    labels = {}
    for key in values:
        labels[RUN_NAME_LABELS.get(key, short_name(key))] = _compact(
            format_utd(read(key)) if key == "agent.utd" else read(key))
    if "clr" in labels and labels["clr"] == labels.get("alr"):
        labels = {("lr" if k == "clr" else k): v for k, v in labels.items() if k != "alr"}
    parts = [f"m{member.index:03d}", *(f"{k}={v}" for k, v in labels.items()), f"s{config.run.seed}"]
    return " ".join(parts)


def _hparam_value(value):
    """A value TensorBoard's HParams plugin can show: bool, number or string."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / jax scalar
        value = value.item()
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Real):
        return float(value)
    return str(value)


def _scalar(value) -> float | None:
    """A finite float, or None (NaN, Inf, flags, strings and arrays are not logged)."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def session_start_summary(hparams: dict):
    """The `_hparams_/session_start_info` summary (tensorboardX protos) for `hparams`."""
    info = SessionStartInfo(start_time_secs=time.time())
    for name, value in hparams.items():
        value = _hparam_value(value)
        if isinstance(value, bool):
            info.hparams[name].bool_value = value
        elif isinstance(value, str):
            info.hparams[name].string_value = value
        else:
            info.hparams[name].number_value = value
    content = HParamsPluginData(session_start_info=info, version=0).SerializeToString()
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME, content=content))
    return Summary(value=[Summary.Value(tag=SESSION_START_INFO_TAG, metadata=meta)])


def text_summary(tag: str, yaml_text: str):
    """A Text-tab summary of `yaml_text` as one fenced code block. A rank-0 string tensor (not
    tensorboardX's `add_text`, a rank-1 tensor that TensorBoard renders as a one-cell table)."""
    text = f"```yaml\n{yaml_text.rstrip()}\n```"
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text"))
    tensor = TensorProto(dtype="DT_STRING", string_val=[text.encode("utf-8")])
    return Summary(value=[Summary.Value(tag=tag, metadata=meta, tensor=tensor)])


class TensorBoard:
    """Scalars per logging point (x axis = env steps), hyperparameters and the config text."""

    def __init__(self, logdir: Path, purge_step: int | None = None):
        """`purge_step` (resume): the env step of the checkpoint resumed from. TensorBoard drops
        this run's earlier-written points past it (they are logged again), keeping the point at it,
        as the metrics table keeps rows up to the checkpoint."""
        self.logdir = Path(logdir)
        # Every writer starts with a SessionLog.START (tensorboardX writes it at `purge_step`). A
        # later START drops the run's points at steps >= its step: the checkpoint's point stays.
        # A fresh run writes one too (at 0): TensorBoard's Python loader (--load_fast=false)
        # ignores a run's first START, so without it a resume would purge nothing there.
        purge = 0 if purge_step is None else int(purge_step) + 1
        # tensorboardX names the file by the second and opens it "wb": a resume in the same second
        # would overwrite the first file. A nanosecond suffix keeps both, in write order by name.
        self.writer = SummaryWriter(str(self.logdir), purge_step=purge, filename_suffix=f".{time.time_ns()}")
        self._started = False

    def start(self, hparams: dict[str, int | float | str | bool], config_text: str) -> None:
        """Attach hyperparameters (short names: utd, batch_size, critic_lr, seed, model_size, ...;
        see `hparam_names`) and the whole config (YAML) as a text summary. Writes no experiment
        summary (see the module docstring): TensorBoard builds it from every run's hyperparameters."""
        if self._started:
            return
        self._started = True
        self.writer._get_file_writer().add_summary(session_start_summary(hparams), global_step=0)
        self.writer._get_file_writer().add_summary(text_summary(CONFIG_TEXT_TAG, config_text), global_step=0)
        self.writer.flush()

    def scalars(self, row: dict, step: int, eval_step: int | None = None) -> None:
        """Log the row's metrics (keys with a `metric_tag`; NaN, Inf and non-numbers skipped, and
        `NONZERO_ONLY` keys where 0) at env step `step`; the evaluation results (`EVAL_KEYS`) at
        `eval_step` (the evaluated policy's env step) when given."""
        for key, value in row.items():
            tag = metric_tag(key)
            value = _scalar(value) if tag else None
            if value is not None and not (key in NONZERO_ONLY and value == 0):
                at = eval_step if key in EVAL_KEYS and eval_step is not None else step
                self.writer.add_scalar(tag, value, int(at))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
