"""What a compiled program may read of a run's config: its shape fields, as real classes.

`ProgramConfig` holds the `shape(...)` fields of each section of pql_jax.config (documented
there) and nothing else, so code built from it cannot read a member's value (those come from the
learner's `HParams`) or a host setting. It is hashable: it keys compiled programs. The classes
repeat the field names so that an IDE and a type checker see them; tests/test_config.py checks
that they match the config's `shape(...)` declarations, names, types and order.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from pql_jax.config import (SECTIONS, SHAPE, Activation, Arch, Batching, BufferDtype, Config, EvalMode,
                            Fusion)
from pql_jax.values import Options


@dataclass(frozen=True)
class EnvShape:
    """The shape fields of `EnvConfig`."""

    name: str
    options: Options
    num_envs: int
    episode_length: int
    action_repeat: int
    eval_envs: int
    val_envs: int
    batching: Batching
    blowup_bound: float
    cpu_fusion: Fusion
    random_episode_start: bool


@dataclass(frozen=True)
class AgentShape:
    """The shape fields of `AgentConfig`."""

    batch_size: int
    buffer_capacity: int
    buffer_dtype: BufferDtype
    n_step: int
    critic_width: int
    critic_depth: int
    critic_arch: Arch
    actor_width: int
    actor_depth: int
    actor_arch: Arch
    taper: bool
    layer_norm: bool
    activation: Activation
    distributional: bool
    num_atoms: int
    v_min: float
    v_max: float
    obs_clip: float
    normalize_obs: bool
    passive_critic_widths: tuple[int, ...]


@dataclass(frozen=True)
class RunShape:
    """The shape fields of `RunConfig`."""

    chunk_steps: int
    eval_mode: EvalMode
    eval_cohorts: int


@dataclass(frozen=True)
class ProgramConfig:
    """The shape fields of a Config only: all a compiled program may read."""

    env: EnvShape
    agent: AgentShape
    run: RunShape


VIEWS = {"env": EnvShape, "agent": AgentShape, "run": RunShape}


def program_config(config: Config) -> ProgramConfig:
    """The part of `config` that shapes the compiled program."""
    views = {}
    for section, view in VIEWS.items():
        part = getattr(config, section)
        views[section] = view(**{f.name: getattr(part, f.name) for f in fields(view)})
    return ProgramConfig(**views)


def shape_fields(section: str) -> list[str]:
    """Names of the `shape(...)` fields of a config section, in declaration order."""
    return [f.name for f in fields(SECTIONS[section]) if f.metadata["kind"] == SHAPE]
