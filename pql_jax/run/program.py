"""Compiled programs: one group's chunk, members split over the devices with shard_map and batched
(vmap) or mapped (lax.map) within each device. One cache, keyed by shapes only, serves single runs
and sweeps alike: two runs that differ only in per-member values (seed, UTD, learning rates ...)
or in run length share one compiled program.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pql_jax.learner.shapes import ProgramConfig, program_config
from pql_jax.counts import eval_phase, run_vector_steps
from pql_jax.envs import check_trainable, compiler_options, over_copies
from pql_jax.errors import UserError
from pql_jax.learner.pql import Learner, build_learner
from pql_jax.learner.state import PopulationSchedule, hparams_from_config
from pql_jax.run.distributed import place, to_host
from pql_jax.plan.sweep import Group

BATCHING = ("auto", "map", "vmap")


def stack(trees):
    """Stack equal-structured pytrees along a new leading (population) axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def resolve_batching(batching: str) -> str:
    """`auto` -> `map` on CPU (bit-identical to single runs), `vmap` on accelerators (throughput)."""
    if batching not in BATCHING:
        raise UserError(f"batching must be one of {', '.join(BATCHING)}, got {batching!r}")
    if batching == "auto":
        return "map" if jax.devices()[0].platform == "cpu" else "vmap"
    return batching


#: The schedule fields that hold one entry per member (the rest are shared by the group).
MEMBER_FIELDS = ("rate_num", "rate_den", "warmup_steps", "critic_actor_ratio")


def schedule_specs() -> PopulationSchedule:
    """How a chunk's schedule is laid out over devices: each member's entries with the member
    ("pop"), the group's step and evaluation flags on every device."""
    pop, rep = PartitionSpec("pop"), PartitionSpec()
    return PopulationSchedule(**{f: pop if f in MEMBER_FIELDS else rep
                                 for f in PopulationSchedule.__dataclass_fields__})


def chunk_over_members(chunk, batching: str):
    """The chunk of a device's block of members, each gated by the schedules it runs with.

    vmap: the block's members step together, so an update slot runs when any of them needs it
    (the others discard its result). lax.map: each member runs alone with its own schedule, so
    a slot it does not need is skipped, not computed: mixing UTDs in a group then costs nothing
    beyond the slot loop. The gating never changes a member's numbers, only the work done.
    """
    if batching == "vmap":
        return jax.vmap(chunk, in_axes=(0, None))

    def mapped(states, schedule):
        def one(xs):
            state, own = xs
            return chunk(state, schedule.replace(**{f: v[None] for f, v in own.items()}))

        return jax.lax.map(one, (states, {f: getattr(schedule, f) for f in MEMBER_FIELDS}))

    return mapped


class SharedProgram:
    """The jitted init and chunk of one program shape for `size` members on `devices`."""

    def __init__(self, learner: Learner, size: int, batching: str, devices):
        self.learner, self.size, self.batching = learner, size, batching
        self.mesh = mesh = Mesh(np.array(devices), ("pop",))
        pop = PartitionSpec("pop")
        init = over_copies(learner.init, batching, (0, 0))
        chunk = chunk_over_members(learner.chunk, batching)
        options = compiler_options(learner.config.env)
        self.init = jax.jit(jax.shard_map(init, mesh=mesh, in_specs=(pop, pop), out_specs=pop, check_vma=False),
                            compiler_options=options)
        self.chunk = jax.jit(jax.shard_map(chunk, mesh=mesh, in_specs=(pop, schedule_specs()), out_specs=(pop, pop),
                                           check_vma=False), donate_argnums=0, compiler_options=options)
        self._compiled = None
        self.compile_seconds = 0.0

    def abstract_state(self, keys, hp):
        """The stacked state's shapes, dtypes and shardings, without allocating it (eval_shape of init)."""
        sharding = NamedSharding(self.mesh, PartitionSpec("pop"))
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                            jax.eval_shape(self.init, keys, hp))

    @property
    def is_compiled(self) -> bool:
        """Whether `compiled_chunk` has compiled the chunk already."""
        return self._compiled is not None

    def compiled_chunk(self, states, schedule):
        """The chunk compiled ahead of time for these argument shapes (once per program); `states`
        may be arrays or `abstract_state` (nothing allocated)."""
        if self._compiled is None:
            tick = time.perf_counter()
            self._compiled = self.chunk.lower(states, schedule).compile()
            self.compile_seconds = time.perf_counter() - tick
        return self._compiled


_PROGRAMS: dict[tuple, SharedProgram] = {}

#: Fraction of the kernel's per-process memory-map limit at which cached programs are dropped.
MAP_HEADROOM = 0.5


def _count_lines(path: str) -> int | None:
    """Lines of a file (for /proc/self/maps: this process's memory mappings), or None."""
    try:
        with open(path, "rb") as handle:
            return sum(1 for _ in handle)
    except OSError:
        return None


def _map_limit() -> int | None:
    """The kernel's limit on memory mappings per process (Linux `vm.max_map_count`), or None."""
    try:
        with open("/proc/sys/vm/max_map_count") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return None


def release_if_mapped_out() -> bool:
    """Drop the cached programs and JAX's compilation caches when this process holds more than
    MAP_HEADROOM of the kernel's memory-map limit; True if it did.

    XLA's CPU backend maps every compiled kernel into its own memory sections, held for as long as
    the executable lives. A workflow compiles one program per group in one process, so on CPU it
    could reach Linux's default limit of 65,530 mappings after a few programs, and LLVM aborted
    the process ("Unable to allocate section memory"). Dropped programs are rebuilt on demand (from
    the persistent compilation cache when it is on); results do not change."""
    limit, held = _map_limit(), _count_lines("/proc/self/maps")
    if limit is None or held is None or held < MAP_HEADROOM * limit:
        return False
    _PROGRAMS.clear()
    jax.clear_caches()
    gc.collect()
    return True


def metrics_to_host(metrics: dict) -> dict[str, np.ndarray]:
    """Move a chunk's metrics to numpy (one transfer per chunk; gathered from every process when
    members live on several); `env_steps` = vector steps x envs
    per step, exact in int64 (the chunk returns the two factors, each well inside int32)."""
    out = {k: np.asarray(v) for k, v in to_host(metrics).items()}
    if "envs_per_step" in out:
        envs = out.pop("envs_per_step").astype(np.int64)
        out["env_steps"] = out["vector_steps"].astype(np.int64) * envs
        if "eval_vector_step" in out:
            starts = out.pop("eval_vector_step").astype(np.int64)  # [members, slots]; -1: no result
            out["eval_env_steps"] = np.where(starts >= 0, starts * envs.reshape(envs.shape + (1,) * (starts.ndim - envs.ndim)), -1)
    return dict(sorted(out.items()))  # a pytree dict's order, as before


def shared_program(shape: ProgramConfig, max_updates: int, members: int, batching: str = "auto",
                devices=None) -> SharedProgram:
    """The program for `members` members of this shape (padded to a multiple of the devices), cached."""
    devices = list(devices or jax.devices())
    batching = resolve_batching(batching)
    size = -(-members // len(devices)) * len(devices)
    key = (shape, max_updates, size, batching, tuple(d.id for d in devices))
    if key not in _PROGRAMS:
        release_if_mapped_out()
        _PROGRAMS[key] = SharedProgram(build_learner(shape, max_updates), size, batching, devices)
    return _PROGRAMS[key]


@dataclass
class GroupProgram:
    """A group's members bound to their (cached) program: stacked hyperparameters and keys."""

    group: Group
    shared: SharedProgram
    """The compiled program of the group's shape (cached: groups of one shape share it)."""
    hp: object
    """Stacked hyperparameters as the program's input (global arrays sharded over "pop" when
    several processes run; else as built)."""
    keys: jax.Array
    host_hp: object
    """The same hyperparameters on this host (schedules are built from them)."""
    eval_phase: int = 0
    """Vector step of cohort 0's first parallel-eval episode start: set from the run length for a
    fresh run (`counts.eval_phase`), restored from the checkpoint on resume, so a run extended
    on resume keeps its cohorts' episodes whole."""

    @classmethod
    def build(cls, group: Group, batching: str = "auto", devices=None) -> "GroupProgram":
        check_trainable(group.config.env)
        shared = shared_program(program_config(group.config), group.max_updates, len(group.members), batching, devices)
        padded = list(group.members) + [group.members[0]] * (shared.size - len(group.members))
        hp = stack([hparams_from_config(m.config) for m in padded])
        keys = jnp.stack([jax.random.PRNGKey(m.config.run.seed) for m in padded])
        members = NamedSharding(shared.mesh, PartitionSpec("pop"))
        phase = eval_phase(run_vector_steps(group.config), group.config.env)
        return cls(group, shared, place(hp, members), place(keys, members), hp, phase)

    @property
    def learner(self) -> Learner:
        return self.shared.learner

    def initial_state(self):
        """Every member's fresh state, stacked [members, ...] (padding members repeat member 0)."""
        return self.shared.init(self.keys, self.hp)

    def schedule(self, vector_steps: int, evaluate: bool = True, stopped=None) -> PopulationSchedule:
        """The chunk's schedule; members flagged in `stopped` ([program size] bools, or None) get
        no update slots (`pql_jax.run.early_stop`)."""
        schedule = PopulationSchedule.of(self.host_hp, vector_steps, evaluate, self.eval_phase)
        if stopped is not None:
            schedule = schedule.replace(rate_num=jnp.where(jnp.asarray(stopped), 0, schedule.rate_num))
        specs = schedule_specs()
        return schedule.replace(**{f: place(getattr(schedule, f), NamedSharding(self.shared.mesh, getattr(specs, f)))
                                   for f in PopulationSchedule.__dataclass_fields__})

    def abstract_state(self):
        """`initial_state`'s shapes and shardings, nothing allocated."""
        return self.shared.abstract_state(self.keys, self.hp)

    def compile(self):
        """The group's chunk compiled for its abstract state (cached in the program: training reuses it)."""
        return self.shared.compiled_chunk(self.abstract_state(), self.schedule(0))

    def step(self, states, vector_steps: int, evaluate: bool = True, stopped=None):
        """One chunk of every member from group vector step `vector_steps` (with its evaluation
        episode when `evaluate`; no updates for the `stopped` members); metrics as numpy [members]."""
        schedule = self.schedule(vector_steps, evaluate, stopped)
        states, metrics = self.shared.compiled_chunk(states, schedule)(states, schedule)
        metrics = metrics_to_host(metrics)
        return states, {k: v[: len(self.group.members)] for k, v in metrics.items()}
