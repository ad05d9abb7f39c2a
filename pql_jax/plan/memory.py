"""What a group really needs, read from its compiled program: peak memory of the chunk (compiled ahead
of time for the state's shapes, nothing allocated), members per device, and the share of sequential
env steps that evaluation takes.

The peak of a chunk call is its arguments (the stacked state, donated) plus the outputs that do not
alias an argument (the metrics; with donation every state output reuses its argument's buffer) plus
XLA's temporaries: ``argument + output - alias + temp`` of ``compiled.memory_analysis()``. Nothing
else of the run lives on the device while a chunk runs (checkpoints copy to host memory), so this is
the run's device peak, per device. The compiled chunk is the one training runs (``SharedProgram`` caches
it), so planning costs no second compile.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jax

from pql_jax.config import Config
from pql_jax.counts import episode_vector_steps, eval_chunks, evaluations, num_chunks
from pql_jax.plan.sweep import Group
from pql_jax.run.program import GroupProgram


@dataclass(frozen=True)
class GroupMemory:
    """Memory of one group's compiled chunk, per device (from ``compiled.memory_analysis()``)."""

    group: int
    members: int
    """Members of the group."""
    local: int
    """Members one device holds (the program's size, padded to a multiple of the devices, / devices)."""
    batching: str
    """map (members one after another) or vmap (batched)."""
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    compile_seconds: float
    platform: str

    @property
    def peak_bytes(self) -> int:
        """Device peak of one chunk call: arguments + non-aliased outputs + temporaries."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    def members_fit(self, limit: float) -> int:
        """Members of this program shape one device of `limit` bytes holds, scaling the peak in
        proportion to the members (conservative: a fixed part is counted once per member).

        Both the state and the temporaries grow with the members: under vmap every activation is
        batched, and under lax.map the mapped outputs (a whole new stacked state) are temporaries."""
        return max(0, int(limit * self.local // self.peak_bytes))


def group_memory(group: Group, batching: str = "auto", devices=None, limit: float | None = None) -> GroupMemory:
    """Compile `group`'s chunk for its abstract state (cached for training) and read its memory.

    With `limit`, a group whose state alone (exact, from eval_shape) exceeds it is not compiled:
    its GroupMemory then holds the state only (`compile_seconds` 0), already more than `limit`."""
    program = GroupProgram.build(group, batching, devices)
    n_devices = len(program.shared.mesh.devices.flat)
    local = program.shared.size // n_devices
    platform = jax.devices()[0].platform
    if limit is not None:
        state = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(program.abstract_state())) // n_devices
        if state > limit:
            return GroupMemory(group.index, len(group.members), local, program.shared.batching, state, state,
                               state, 0, 0.0, platform)
    tick = time.perf_counter()
    analysis = program.compile().memory_analysis()
    seconds = program.shared.compile_seconds or (time.perf_counter() - tick)
    return GroupMemory(group.index, len(group.members), local, program.shared.batching,
                       int(analysis.argument_size_in_bytes), int(analysis.output_size_in_bytes),
                       int(analysis.alias_size_in_bytes), int(analysis.temp_size_in_bytes), seconds, platform)


def sweep_memory(groups, batching: str = "auto", devices=None, limit: float | None = None) -> dict[int, GroupMemory]:
    """`group_memory` of every group, by group index (a group over `limit` by its state alone is not
    compiled, and the groups after it neither: the check refuses the sweep)."""
    out = {}
    for g in groups:
        out[g.index] = group_memory(g, batching, devices, limit)
        if limit is not None and out[g.index].peak_bytes > limit:
            break
    return out


@dataclass(frozen=True)
class EvalShare:
    """Sequential env steps of a group's run: training vector steps and evaluation episodes."""

    chunks: int
    eval_chunks: int
    """Chunks that run a sequential evaluation episode (every run.eval_every-th and the last;
    none with `run.eval_mode: parallel`)."""
    horizon: int
    """Env steps of one evaluation episode: ceil(episode_length / action_repeat)."""
    vector_steps: int
    parallel_envs: int = 0
    """Eval envs that ride in the training env call (`run.eval_mode: parallel`), else 0."""
    env_call_envs: int = 0
    """Envs of the training env call without them (training + validation)."""
    cohorts: int = 1
    """Parallel eval cohorts (`run.eval_cohorts`)."""

    @property
    def evaluations(self) -> int:
        """Evaluation results per run (parallel: each cohort's episodes back to back)."""
        if self.parallel_envs:
            return evaluations(self.vector_steps, self.horizon, self.cohorts)
        return self.eval_chunks

    @property
    def eval_steps(self) -> int:
        """Sequential env steps spent on evaluation alone."""
        return self.eval_chunks * self.horizon

    @property
    def share(self) -> float:
        """eval steps / (training vector steps + eval steps)."""
        total = self.vector_steps + self.eval_steps
        return self.eval_steps / total if total else 0.0


def eval_share(config: Config) -> EvalShare:
    """The evaluation share of a run of `config` (members of a group share it)."""
    chunks, e = num_chunks(config), config.env
    horizon = episode_vector_steps(e)
    vector_steps = chunks * config.run.chunk_steps
    if config.run.eval_mode == "parallel" and e.eval_envs:
        return EvalShare(chunks, 0, horizon, vector_steps, e.eval_envs, e.num_envs + e.val_envs, config.run.eval_cohorts)
    evals = eval_chunks(chunks, config.run.eval_every) if e.eval_envs > 0 else 0
    return EvalShare(chunks, evals, horizon, vector_steps)
