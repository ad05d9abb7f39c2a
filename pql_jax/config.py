"""Typed, frozen run configuration: YAML files plus dotted `key=value` overrides, validated.

Every field is documented once, here. Sections: `env`, `agent`, `run`. Each field also declares
once what it is to a compiled program:

- `member(...)`: a per-member value (an array in the learner's `HParams`, or the seed): members of
  one population may differ in it and still share one compiled program;
- `shape(...)`: shapes the compiled program (array sizes, network structure, env): members that
  differ in it need separate programs; `column=True` also puts it in the results table;
- `host(...)`: read only by the host loop (run length, checkpoints, memory limit).

The sweep's grouping, the results table's hyperparameter columns and the compiled-program cache
key are derived from these declarations; the learner's `HParams` (member fields) and
`ProgramConfig` (shape fields, pql_jax.learner.shapes) spell them out as real classes, checked
against them by tests. How written values are parsed (numbers, UTDs such as 1/512, YAML files)
lives in pql_jax.values.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from pql_jax.counts import episode_vector_steps, run_vector_steps, utd_fraction
from pql_jax.errors import UserError
from pql_jax.values import Options, check_choice, coerce, read_options, read_scalar, read_yaml

MEMBER, SHAPE, HOST = "member", "shape", "host"

# Allowed values, declared once: the fields below and their program views (pql_jax.learner.shapes) use
# these; `validate` and `coerce` read them from the annotations.
Batching = Literal["auto", "vmap", "map"]
Fusion = Literal["auto", "on", "off"]
BufferDtype = Literal["float32", "bfloat16"]
Arch = Literal["mlp", "bro"]
Activation = Literal["elu", "relu", "gelu", "silu", "tanh"]
EvalMode = Literal["sequential", "parallel"]


def member(default):
    """A per-member field: may differ between members of one compiled program."""
    return field(default=default, metadata={"kind": MEMBER, "column": True})


def shape(default, column: bool = False):
    """A field that shapes the compiled program; `column` also puts it in the results table."""
    return field(default=default, metadata={"kind": SHAPE, "column": column})


def host(default):
    """A field only the host loop reads (run length, checkpoints, memory)."""
    return field(default=default, metadata={"kind": HOST, "column": False})


@dataclass(frozen=True)
class EnvConfig:
    """Which simulator task to train on and how many copies run in parallel."""

    name: str = shape("playground:CartpoleSwingup", column=True)
    """`brax:<env>` (e.g. brax:ant), `playground:<env>` (e.g. playground:CheetahRun), `dmc:<task>`
    (our MJX ports of dm_control tasks, e.g. dmc:QuadrupedRun) or `test:<task>` (pure-JAX test
    tasks); `pql-jax envs` lists them. The prefix is the env's family."""
    options: Options = shape(Options())
    """Settings of the env's family (the prefix of `name`), declared, documented and validated by
    that family (pql_jax.envs.families; docs/config.md lists each family's): e.g. `{backend: spring}`
    for `brax:`, `{impl: warp}` for `playground:`, `{contacts: self, solver_ls_iterations: 8}` for
    `dmc:`. On the command line: `env.options.contacts=self`. A key the family does not take is
    refused; a key left out keeps the family's default."""
    num_envs: int = shape(4096, column=True)
    """Parallel training envs stepped together (one vector step collects num_envs transitions)."""
    episode_length: int = shape(1000)
    """Time limit in env steps; reaching it is a truncation (bootstrapped), not a terminal."""
    action_repeat: int = shape(1)
    """Repeat each action this many env steps (rewards summed)."""
    eval_envs: int = shape(16)
    """Envs for deterministic-policy evaluation (see `run.eval_mode`; 0 disables)."""
    val_envs: int = shape(0)
    """Envs that collect fresh validation transitions for validation TD error (0 disables)."""
    batching: Batching = shape("auto")
    """How the env copies are stepped and reset: `vmap` (one batched program), `map` (a sequential
    loop over the single-env program) or `auto` (what the task declares: `map` on the CPU for the
    ports marked `cpu_loops` in pql_jax.envs.dmc.TASKS, `vmap` otherwise). `map` is for models
    whose vectorised program XLA cannot compile in useful time; its env steps/s do not grow with
    num_envs. Same transitions either way up to float rounding. A sweep's members should then be
    looped too (`--member-batching map`, the CPU default): vmapping members batches the loop's body again."""
    blowup_bound: float = shape(1e4)
    """A step whose observation entry or reward exceeds this in magnitude is treated as a physics
    blow-up, like a non-finite one: not stored for learning, kept out of the observation
    statistics, its env reset, counted in `nonfinite_transitions` (pql_jax.envs). A diverging
    simulation passes through huge finite values before NaN; one such observation would otherwise
    dominate the normaliser's variance for the rest of the run. The default sits well above what
    the shipped tasks emit under a random policy (benchmarks/RESULTS.md#blowup-guard); raise it
    for a task with larger legitimate values. 0 turns the check off."""
    cpu_fusion: Fusion = shape("auto")
    """XLA's operator fusion in the programs compiled for the CPU: `on`, `off`, or `auto` (what the
    task declares: off for the ports marked `cpu_loops` in pql_jax.envs.dmc.TASKS, whose fused step
    recomputes MJX's kinematic chain, on otherwise: vmapped programs need fusion); no effect on
    other backends (benchmarks/RESULTS.md#dog-cpu-fusion)."""
    random_episode_start: bool = shape(False)
    """Start each training (and validation) env at a random `episode_step` in [0, episode_length)
    so that time-limit truncations are spread over vector steps instead of all envs resetting in
    lockstep (as rsl_rl's randomised episode-length buffer). Evaluation envs start at 0."""

    def __post_init__(self):
        # options written as a plain dict (Python callers) become the hashable Options a config holds
        if not isinstance(self.options, Options):
            object.__setattr__(self, "options", read_options("env.options", self.options))


@dataclass(frozen=True)
class AgentConfig:
    """PQL learner: networks, losses, update schedule, exploration, optimiser."""

    utd: float = member(1.0 / 512)
    """Critic updates per collected transition; may be fractional (written as 1/512 in YAML)."""
    critic_actor_ratio: int = member(2)
    """One actor update every this many critic updates (PQL's beta_p:v = 1:2)."""
    batch_size: int = shape(8192, column=True)
    """Transitions per critic and actor update."""
    buffer_capacity: int = shape(5_000_000)
    """Replay capacity in transitions (FIFO ring; rounded down to a multiple of num_envs)."""
    buffer_dtype: BufferDtype = shape("float32")
    """Storage dtype of replayed observations and actions: float32 or bfloat16 (half the bytes;
    cast back to float32 when sampled; actions in [-1, 1] keep 8 significant bits, i.e. within
    0.4%). Rewards stay float32 (n-step sums). Observations are stored as bfloat16(obs - offset)
    with a float32 offset per ring row, the mean over envs of that row (pql_jax.learner.replay):
    bfloat16's error is relative to what it stores, so stored raw, a dimension with |mean| >> std
    lost its spread; with the offsets the error after normalisation is about a thousandth of a
    std on the shipped tasks (benchmarks/RESULTS.md#bf16-obs-offset). The offsets add 2 / num_envs to the observation bytes."""
    n_step: int = shape(3, column=True)
    """Steps summed in the return target before bootstrapping with gamma^n."""
    gamma: float = member(0.99)
    """Discount factor."""
    tau: float = member(0.05)
    """Polyak rate of the target critic, applied after every critic update."""
    critic_lr: float = member(5e-4)
    """AdamW learning rate of the critic."""
    actor_lr: float = member(5e-4)
    """AdamW learning rate of the actor."""
    weight_decay: float = member(0.01)
    """AdamW decoupled weight decay for both networks (torch's default, which PQL used)."""
    max_grad_norm: float = member(0.5)
    """Global-norm gradient clipping per network."""
    critic_width: int = shape(512, column=True)
    """Width of the critic's first hidden layer."""
    critic_depth: int = shape(3, column=True)
    """Hidden layers in each Q network (`mlp`), or residual blocks (`bro`)."""
    critic_arch: Arch = shape("mlp", column=True)
    """Critic trunk: `mlp` (PQL's, tapered by `taper`, LayerNorm by `layer_norm`) or `bro` (BRO's
    residual network of constant `critic_width`, LayerNorm always; Nauman et al., 2024)."""
    actor_width: int = shape(512, column=True)
    """Width of the actor's first hidden layer."""
    actor_depth: int = shape(3)
    """Hidden layers in the actor (`mlp`), or residual blocks (`bro`)."""
    actor_arch: Arch = shape("mlp")
    """Actor trunk: `mlp` or `bro` (as `critic_arch`)."""
    taper: bool = shape(True)
    """Halve the width at each deeper layer (512, 256, 128 as in PQL); False keeps it constant."""
    layer_norm: bool = shape(False)
    """LayerNorm after each hidden linear layer (actor and critic)."""
    activation: Activation = shape("elu")
    """Hidden activation: elu, relu, gelu, silu or tanh."""
    distributional: bool = shape(False, column=True)
    """Categorical (C51) critic, PQL-D."""
    num_atoms: int = shape(51)
    """Atoms of the categorical critic."""
    v_min: float = shape(-10.0)
    """Lowest atom value of the categorical critic."""
    v_max: float = shape(10.0)
    """Highest atom value of the categorical critic."""
    std_min: float = member(0.05)
    """Smallest per-env exploration noise std (mixed exploration: linspace(std_min, std_max))."""
    std_max: float = member(0.8)
    """Largest per-env exploration noise std."""
    target_noise: float = member(0.8)
    """Std of target-policy smoothing noise."""
    target_noise_clip: float = member(0.2)
    """Clip of target-policy smoothing noise."""
    reward_scale: float = member(1.0)
    """Multiplies rewards in the critic target."""
    obs_clip: float = shape(5.0)
    """Normalised observations are clipped to [-obs_clip, obs_clip]."""
    normalize_obs: bool = shape(True)
    """Running mean/variance observation normalisation."""
    warmup_steps: int = member(32)
    """Vector steps of uniform random actions before the policy acts and updates start."""
    passive_critic_widths: tuple[int, ...] = shape(())
    """Widths of passive critics: trained on the same batches onto the main critic's TD targets,
    never used to act or to form targets (TD-overfitting diagnostics)."""


@dataclass(frozen=True)
class RunConfig:
    """Length of training, logging, checkpoints and seeding."""

    seed: int = member(0)
    """PRNG seed: the same config and seed give the same numbers on the same machine."""
    total_env_steps: int = host(10_000_000)
    """Training env steps (transitions collected); rounded up to whole chunks."""
    chunk_steps: int = shape(64)
    """Vector steps per jitted chunk; metrics are logged once per chunk."""
    eval_mode: EvalMode = shape("sequential")
    """How the deterministic policy is evaluated. `sequential`: after a chunk (every `eval_every`
    chunks and the last), one episode of `env.eval_envs` envs that training waits for:
    ceil(episode_length / action_repeat) sequential env steps each time. `parallel`: the eval envs
    are stepped in the same env call as the training envs, by a snapshot of the policy taken when
    their episode starts; episodes run back to back, phased so that the last one ends with the run,
    and add no sequential steps (the GPU regime: a step of 64 more envs costs about nothing there).
    A parallel result belongs to the policy of its snapshot: the row's `step` is the snapshot's env
    step, one episode before the row's `env_steps`. Needs a run of at least one episode."""
    eval_cohorts: int = shape(1)
    """With `eval_mode: parallel`, split the eval envs into this many cohorts, each a fraction
    1/eval_cohorts of an episode ahead of the next, with its own policy snapshot: this many results
    per episode length instead of one (each over eval_envs / eval_cohorts envs)."""
    eval_every: int = host(1)
    """With `eval_mode: sequential`, run the evaluation episode every this many chunks (and always
    in the last chunk); other rows have an empty (NaN) `return`. `pql-jax plan` prints each
    group's evaluation share of sequential env steps."""
    checkpoint_every: int = host(10)
    """Save a checkpoint every this many chunks (0: only at the end)."""
    keep_checkpoints: int = host(2)
    """How many recent checkpoints to keep."""
    checkpoint_buffer: bool = host(True)
    """Include the replay buffer in checkpoints (exact resume needs it)."""
    checkpoint_async: bool = host(False)
    """Write checkpoints in a background thread (training pauses only to copy the state to host
    memory). Off by default: where writes go to the page cache, the host copy plus a write
    competing with training for the cores paused training longer than a plain save
    (benchmarks/RESULTS.md#checkpoint-pause); turn it on where writes are slow (network file
    systems)."""
    memory_limit_gb: float = host(0.0)
    """Refuse runs estimated to need more device memory than this (0: the device's own size)."""
    stop_after: int = host(0)
    """Stop a member once this many consecutive evaluation results are >= `stop_return`
    (pql_jax.run.early_stop); 0: every member trains to `total_env_steps`."""
    stop_return: float = host(0.0)
    """The raw (unnormalised) return of `stop_after`; the scaling workflow sets it to its highest threshold."""


@dataclass(frozen=True)
class Config:
    """A whole training run."""

    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    run: RunConfig = field(default_factory=RunConfig)


SECTIONS = {"env": EnvConfig, "agent": AgentConfig, "run": RunConfig}

MOVED = {"env.brax_backend": "env.options.backend", "env.playground_impl": "env.options.impl",
         "env.solver_iterations": "env.options.solver_iterations",
         "env.solver_ls_iterations": "env.options.solver_ls_iterations", "env.dog_contacts": "env.options.contacts"}
"""Keys that moved under `env.options` (their family's), named in the error an old file gets."""


def field_keys(kind: str | None = None, column: bool | None = None) -> tuple[str, ...]:
    """Dotted keys (agent.utd, ...) of the fields of a kind (member / shape / host), in order."""
    return tuple(f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in fields(cls)
                 if (kind is None or f.metadata["kind"] == kind)
                 and (column is None or f.metadata.get("column", False) == column))


def get_value(config: "Config", dotted: str) -> Any:
    """The value of a dotted key (agent.utd) in `config`."""
    section, name = dotted.split(".")
    return getattr(getattr(config, section), name)


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def from_dict(data: dict[str, Any], base: Config | None = None) -> Config:
    """Build a Config from a nested mapping on top of `base` (defaults when None)."""
    config = base or Config()
    if not isinstance(data, dict):
        raise UserError("config must be a mapping with sections env, agent, run")
    for section, values in data.items():
        if section not in SECTIONS:
            raise UserError(f"unknown config section {section!r}; known: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise UserError(f"config section {section!r} must be a mapping")
        for key, value in values.items():
            config = set_value(config, f"{section}.{key}", value)
    return config


def set_value(config: Config, dotted: str, value: Any) -> Config:
    """Return `config` with the dotted key (e.g. agent.utd) set to `value`, type-checked."""
    parts = dotted.split(".")
    if len(parts) == 3 and parts[:2] == ["env", "options"]:  # one option of the env's family
        merged = {**config.env.options, parts[2]: read_scalar(dotted, value)}
        return replace(config, env=replace(config.env, options=Options(merged)))
    if len(parts) != 2 or parts[0] not in SECTIONS:
        raise UserError(f"unknown config key {dotted!r}; keys look like agent.utd or env.num_envs")
    section, key = parts
    types = _field_types(SECTIONS[section])
    if dotted in MOVED:
        raise UserError(f"config key {dotted!r} is now {MOVED[dotted]}")
    if key not in types:
        close = [k for k in types if k.startswith(key[:3])]
        hint = f" (did you mean {', '.join(section + '.' + k for k in close)}?)" if close else ""
        raise UserError(f"unknown config key {dotted!r}{hint}")
    sub = replace(getattr(config, section), **{key: coerce(dotted, value, types[key])})
    return replace(config, **{section: sub})


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply `section.key=value` strings in order."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} is not of the form section.key=value")
        key, value = item.split("=", 1)
        config = set_value(config, key.strip(), value.strip())
    return config


def load(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (None: defaults), apply overrides, validate."""
    config = Config()
    if path is not None:
        config = from_dict(read_yaml(path), config)
    config = apply_overrides(config, list(overrides))
    validate(config)
    return config


def to_dict(config: Config) -> dict[str, Any]:
    """Nested plain-Python mapping (YAML-safe) of a Config."""
    out = dataclasses.asdict(config)
    out["agent"]["passive_critic_widths"] = list(config.agent.passive_critic_widths)
    out["env"]["options"] = dict(config.env.options)
    return out


def dump(config: Config) -> str:
    """YAML text that `load` reads back to the same Config."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)



def validate(config: Config) -> None:
    """Raise UserError naming the first impossible value."""
    for section, cls in SECTIONS.items():  # allowed values: from each field's Literal type
        for name, annotation in _field_types(cls).items():
            check_choice(f"{section}.{name}", getattr(getattr(config, section), name), annotation)
    for ok, message in _bounds(config):
        if not ok:
            raise UserError(message)
    _check_finite(config.agent)
    _check_schedule(config)


def _bounds(config: Config) -> list[tuple[bool, str]]:
    """(holds, message) for every single-field or two-field bound."""
    e, a, r = config.env, config.agent, config.run
    return [
        (e.num_envs >= 1, "env.num_envs must be >= 1"),
        (e.episode_length >= 1, "env.episode_length must be >= 1"),
        (e.action_repeat >= 1, "env.action_repeat must be >= 1"),
        (e.eval_envs >= 0, "env.eval_envs must be >= 0"),
        (e.val_envs >= 0, "env.val_envs must be >= 0"),
        (math.isfinite(e.blowup_bound) and e.blowup_bound >= 0,
         f"env.blowup_bound must be a finite number >= 0 (got {e.blowup_bound!r})"),
        (math.isfinite(a.utd) and a.utd > 0, f"agent.utd must be > 0 (got {a.utd})"),
        (a.critic_actor_ratio >= 1, "agent.critic_actor_ratio must be >= 1"),
        (a.batch_size >= 1, "agent.batch_size must be >= 1"),
        (a.buffer_capacity >= e.num_envs * (a.n_step + 1),
         f"agent.buffer_capacity must hold at least num_envs * (n_step + 1) = {e.num_envs * (a.n_step + 1)} transitions"),
        (a.batch_size <= a.buffer_capacity,
         f"agent.batch_size ({a.batch_size}) must not exceed agent.buffer_capacity ({a.buffer_capacity})"),
        (a.n_step >= 1, "agent.n_step must be >= 1"),
        (0 < a.gamma <= 1, "agent.gamma must be in (0, 1]"),
        (0 < a.tau <= 1, "agent.tau must be in (0, 1]"),
        (a.critic_lr > 0 and a.actor_lr > 0, "agent.critic_lr and agent.actor_lr must be > 0"),
        (a.weight_decay >= 0, "agent.weight_decay must be >= 0"),
        (a.max_grad_norm > 0, "agent.max_grad_norm must be > 0"),
        (min(a.critic_width, a.actor_width) >= 1, "agent.critic_width and agent.actor_width must be >= 1"),
        (min(a.critic_depth, a.actor_depth) >= 1, "agent.critic_depth and agent.actor_depth must be >= 1"),
        (a.num_atoms >= 2, "agent.num_atoms must be >= 2"),
        (a.v_min < a.v_max, f"agent.v_min ({a.v_min}) must be < agent.v_max ({a.v_max})"),
        (0 <= a.std_min <= a.std_max,
         f"agent.std_min ({a.std_min}) must be >= 0 and <= agent.std_max ({a.std_max})"),
        (a.target_noise >= 0 and a.target_noise_clip >= 0, "agent.target_noise and target_noise_clip must be >= 0"),
        (a.reward_scale > 0, "agent.reward_scale must be > 0"),
        (a.obs_clip > 0, "agent.obs_clip must be > 0"),
        (a.warmup_steps >= 0, "agent.warmup_steps must be >= 0"),
        (all(w >= 1 for w in a.passive_critic_widths), "agent.passive_critic_widths must be >= 1"),
        (0 <= r.seed < 2**32, f"run.seed must be in [0, 2**32) (got {r.seed})"),
        (r.total_env_steps >= 1, "run.total_env_steps must be >= 1"),
        (r.chunk_steps >= 1, "run.chunk_steps must be >= 1"),
        (r.eval_every >= 1, "run.eval_every must be >= 1"),
        (r.checkpoint_every >= 0, "run.checkpoint_every must be >= 0"),
        (r.keep_checkpoints >= 1, "run.keep_checkpoints must be >= 1"),
        (r.memory_limit_gb >= 0, "run.memory_limit_gb must be >= 0"),
        (r.stop_after >= 0, "run.stop_after must be >= 0"),
        (math.isfinite(r.stop_return), f"run.stop_return must be finite (got {r.stop_return})"),
        (r.stop_after == 0 or e.eval_envs > 0, "run.stop_after needs evaluation results: env.eval_envs must be >= 1"),
    ]


def _check_finite(agent: AgentConfig) -> None:
    """UserError naming an agent float that is NaN or infinite."""
    for f in fields(agent):
        value = getattr(agent, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"agent.{f.name} must be finite (got {value})")


def _check_schedule(config: Config) -> None:
    """UserError where the update rate or the evaluation cohorts cannot be scheduled exactly."""
    e, a, r = config.env, config.agent, config.run
    rate = utd_fraction(a.utd, e.num_envs)
    if rate <= 0 or abs(float(rate) - a.utd * e.num_envs) > 1e-6 * a.utd * e.num_envs:
        raise UserError(f"agent.utd={a.utd} is too small to schedule exactly at env.num_envs={e.num_envs}")
    if rate.numerator * rate.denominator >= 2**31:
        raise UserError(f"agent.utd={a.utd} at env.num_envs={e.num_envs} gives updates per step {rate}, "
                        "too fine a fraction; round it")
    if r.eval_cohorts < 1 or (e.eval_envs % r.eval_cohorts) or r.eval_cohorts > episode_vector_steps(e):
        raise UserError(f"run.eval_cohorts ({r.eval_cohorts}) must be >= 1, divide env.eval_envs ({e.eval_envs}) and "
                        f"not exceed the {episode_vector_steps(e)} vector steps of an episode")
    if r.eval_mode == "parallel" and e.eval_envs and run_vector_steps(config) < episode_vector_steps(e):
        raise UserError(f"run.eval_mode=parallel needs a run of at least one episode ({episode_vector_steps(e)} vector "
                        f"steps; this run has {run_vector_steps(config)}): lengthen it or use run.eval_mode=sequential")


