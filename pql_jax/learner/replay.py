"""Device-resident FIFO ring buffer of 1-step transitions, sampled as n-step transitions.

Rows are vector steps ([rows, num_envs, ...]), so each env's transitions lie in time order
and the n-step window of a sample is the next n-1 rows of the same env. The window stops at
the first terminal or truncation: a terminal ends the return with no bootstrap, a truncation
bootstraps from that step's final observation.

Observations are stored once. Within an episode the next observation of a step is the next
step's observation, so one ring of `rows + 1` observation slots (time t at slot t % (rows + 1))
holds them all: `insert` writes the step's `next_obs` into the successor slot, and the step's own
`obs` only where the previous step ended an episode (elsewhere the slot already holds the
previous step's next_obs, the same array). The extra slot keeps the newest row's successor
while the oldest row's observation is still held, so every sampleable row's successor is
written and the sampleable rows are the same as with a separate next_obs store.

At an episode end the successor slot is overwritten by the reset observation, so the final
observation goes to a small side store instead: per env, a FIFO of truncation final
observations and one of terminal final observations, each entry tagged with the time it ended.
A bootstrap from an ended row looks its time up there. Truncations of one env are at least
`episode_steps` vector steps apart (each needs a full episode since the last reset), so a
truncation FIFO of ceil(rows / episode_steps) entries holds every truncation still in the
buffer: truncation bootstraps are exact. A terminal whose entry was pushed out (an env that
terminated more often than that within the buffer) bootstraps from the successor slot (the
reset observation): its discount is 0, so a scalar target is bit-identical (R + 0 * Q = R for
finite Q); a categorical target differs by rounding only (the projected mass sums to 1 up to
float error). Without `episode_steps` both FIFOs hold `rows` entries and every lookup is exact.

bfloat16 observations are stored relative to a float32 offset per ring slot: slot s holds
bfloat16(obs - obs_offset[s]), where the offset is the mean over envs of the observations written
into the slot when it is filled (the step's next_obs; at time 0 the reset observations). The
rounding error of bfloat16 is relative (at most 2^-8 of the stored value, about 2^-9.3 RMS), so
stored raw a dimension with |mean| >> std loses its spread (N(1, 0.001) keeps 2 distinct values);
stored relative to the mean of its row it is about 2^-9 of its distance to that mean, i.e. a few
thousandths of a std in normalised units (at most 0.0018 std RMS in any dimension of the shipped
tasks' random-policy observations: benchmarks/bench_bf16_obs.py,
benchmarks/RESULTS.md#bf16-obs-offset). A per-dimension scale would not help: the relative error
of a float format does not depend on the scale. The offsets take (rows + 1) x obs x 4 bytes,
2 / num_envs of the bfloat16 observations. A final observation pushed to a FIFO at time t uses
the offset of slot (t + 1) % (rows + 1), written at the same time and not rewritten while row t
is in the buffer. float32 storage has no offsets (an empty array) and is unchanged.

A transition marked `invalid` (a non-finite observation or reward, see pql_jax.envs) is never
sampled: windows stop before it and bootstrap from the observation it started from, exactly
as if the episode had been truncated there; the stored values are finite, never NaN.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

TERMINAL, TRUNCATED, INVALID = 1, 2, 4
"""Bits of `ReplayBuffer.flags`."""
ENDED = TERMINAL | TRUNCATED
OBS_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.uint16}
"""Array dtype holding observations and actions per `agent.buffer_dtype`; samples are always float32.
bfloat16 observations are kept as their 16-bit patterns: XLA's CPU backend computes a bfloat16
dynamic-update-slice in float32 and rewrites the whole ring at every insert (a temporary copy of
the ring; benchmarks/RESULTS.md#replay-memory), while integer rows are updated in place on
every backend."""
MAX_REDRAWS = 3
"""Spare draws for samples that hit an invalid transition (drawn always, no loop: a sample stays
invalid with probability (invalid share of the buffer)^4, and is then a harmless zero-length
window: return 0, discount 1, bootstrap from its own observation)."""
_NO_TIME = -(2**31)


class ReplayBuffer(struct.PyTreeNode):
    """Ring storage; `head` is the next row to write, `size` the rows filled, `count` rows ever written."""

    obs_ring: jax.Array
    """[rows + 1, E, obs] (see OBS_DTYPES): the observation of time t at slot t % (rows + 1)."""
    obs_offset: jax.Array | None
    """[rows + 1, obs] float32 with bfloat16 storage (None with float32: no leaf, so nothing to
    shard or checkpoint, which a zero-size array is not for several processes): slot s of obs_ring
    (and the FIFO entries of time s - 1) hold bfloat16(obs - obs_offset[s]), see the module doc."""
    trunc_obs: jax.Array
    """[slots, E, obs]: final observations of truncated episodes, a FIFO per env."""
    trunc_time: jax.Array
    """[slots, E] int32: the time of each trunc_obs entry."""
    trunc_next: jax.Array
    """[E] int32: the trunc_obs slot each env writes next."""
    term_obs: jax.Array
    """[slots, E, obs]: final observations of terminated episodes, a FIFO per env."""
    term_time: jax.Array
    term_next: jax.Array
    action: jax.Array
    reward: jax.Array
    flags: jax.Array
    """[rows, E] uint8: TERMINAL | TRUNCATED | INVALID bits."""
    starts: jax.Array
    """[E] bool: the last step written ended an episode (or was invalid), so the next one starts one."""
    head: jax.Array
    size: jax.Array
    count: jax.Array

    # ---- views (for inspection and tests; the learner reads through `sample`) -----------
    @property
    def rows(self) -> int:
        return self.reward.shape[0]

    @property
    def terminal(self):
        return (self.flags & TERMINAL) != 0

    @property
    def truncated(self):
        return (self.flags & TRUNCATED) != 0

    @property
    def invalid(self):
        return (self.flags & INVALID) != 0

    @property
    def obs(self):
        """[rows, E, obs] float32: each row's observation (rows not yet written hold garbage)."""
        slots = row_time(self, jnp.arange(self.rows)) % (self.rows + 1)
        offset = _slot_offset(self, slots)
        return _decode(self.obs_ring[slots], None if offset is None else offset[:, None])

    @property
    def next_obs(self):
        """[rows, E, obs] float32: each row's next (or final) observation."""
        rows, envs = self.flags.shape
        r = jnp.repeat(jnp.arange(rows), envs)
        e = jnp.tile(jnp.arange(envs), rows)
        ended = (self.flags[r, e] & ENDED) != 0
        return successor_obs(self, r, e, ended, jnp.ones_like(ended)).reshape(rows, envs, -1)


class Batch(struct.PyTreeNode):
    """n-step transitions: target = nstep_return + discount * Q(next_obs, .)."""

    obs: jax.Array
    action: jax.Array
    nstep_return: jax.Array
    next_obs: jax.Array
    discount: jax.Array


def end_slots(rows: int, episode_steps: int | None) -> int:
    """Entries per env of each final-observation FIFO: every truncation within `rows` rows fits."""
    return rows if not episode_steps else max(1, min(rows, math.ceil(rows / episode_steps)))


def init_buffer(rows: int, num_envs: int, obs_size: int, action_size: int, obs_dtype: str = "float32",
                episode_steps: int | None = None) -> ReplayBuffer:
    """Empty buffer of `rows` vector steps; `episode_steps` (vector steps per full episode) sizes the
    final-observation store (None: `rows` entries per env, exact for any sequence of flags)."""
    dtype = OBS_DTYPES[obs_dtype]
    slots = end_slots(rows, episode_steps)
    zeros = lambda *shape: jnp.zeros(shape, jnp.float32)
    no_time = jnp.full((slots, num_envs), _NO_TIME, jnp.int32)
    first = jnp.zeros(num_envs, jnp.int32)
    scalar = jnp.zeros((), jnp.int32)
    return ReplayBuffer(
        obs_ring=jnp.zeros((rows + 1, num_envs, obs_size), dtype),
        obs_offset=jnp.zeros((rows + 1, obs_size), jnp.float32) if dtype == jnp.uint16 else None,
        trunc_obs=jnp.zeros((slots, num_envs, obs_size), dtype), trunc_time=no_time, trunc_next=first,
        term_obs=jnp.zeros((slots, num_envs, obs_size), dtype), term_time=no_time, term_next=first,
        action=jnp.zeros((rows, num_envs, action_size), dtype), reward=zeros(rows, num_envs),
        flags=jnp.zeros((rows, num_envs), jnp.uint8), starts=jnp.ones(num_envs, jnp.bool_),
        head=scalar, size=scalar, count=scalar)


def buffer_bytes(rows: int, num_envs: int, obs_size: int, action_size: int, obs_dtype: str = "float32",
                 episode_steps: int | None = None) -> int:
    """Bytes of device memory `init_buffer` with the same arguments takes."""
    item = jnp.dtype(OBS_DTYPES[obs_dtype]).itemsize
    slots = end_slots(rows, episode_steps)
    per_env = ((rows + 1) * obs_size * item + 2 * slots * (obs_size * item + 4) + 2 * 4
               + rows * (item * action_size + 4 + 1) + 1)
    offsets = (rows + 1) * obs_size * 4 if item == 2 else 0
    return num_envs * per_env + 3 * 4 + offsets


def _encode(x, dtype, offset=None):
    """float32 observations or actions -> the storage dtype: for uint16, the bfloat16 bit pattern
    of x - offset (offset None: of x)."""
    if dtype == jnp.uint16:
        if offset is not None:
            x = x - offset
        return jax.lax.bitcast_convert_type(x.astype(jnp.bfloat16), jnp.uint16)
    return x.astype(dtype)


def _decode(x, offset=None):
    """Stored observations or actions -> float32 (plus `offset` for bfloat16 bit patterns)."""
    if x.dtype == jnp.uint16:
        x = jax.lax.bitcast_convert_type(x, jnp.bfloat16).astype(jnp.float32)
        return x if offset is None else x + offset
    return x.astype(jnp.float32)


def _slot_offset(buf: ReplayBuffer, slots):
    """Offsets of obs_ring `slots` ([..., obs]); None with float32 storage."""
    return None if buf.obs_offset is None else buf.obs_offset[slots]


def _push(store, times, nxt, mask, value, t):
    """Append `value[e]` (already encoded) at time `t` to env e's FIFO where `mask[e]`."""
    slots, envs = times.shape
    slot = jnp.where(mask, nxt, slots)  # out of range: dropped
    env = jnp.arange(envs)
    store = store.at[slot, env].set(value, mode="drop")
    times = times.at[slot, env].set(t, mode="drop")
    return store, times, jnp.where(mask, (nxt + 1) % slots, nxt)


def insert(buf: ReplayBuffer, obs, action, reward, terminal, truncated, next_obs, invalid=None) -> ReplayBuffer:
    """Write one vector step (each argument has a leading env axis), overwriting the oldest row.

    `invalid` (optional, [E] bool) marks transitions never to sample (non-finite data): their
    reward and next observation are stored as 0 and `obs`.
    """
    rows = buf.rows
    slots = rows + 1
    dtype = buf.obs_ring.dtype
    t, row = buf.count, buf.head
    invalid = jnp.zeros_like(terminal) if invalid is None else invalid
    ended = (terminal | truncated) & ~invalid
    next_obs = jnp.where(invalid[:, None], obs, next_obs)
    # This step's observation is already in its slot (the previous step's next_obs) unless the
    # previous step ended an episode; then the slot gets the reset observation.
    offset, here_offset, next_offset = buf.obs_offset, None, None
    if offset is not None:  # bfloat16: the successor slot's offset is the mean of what it receives now;
        # slot 0 (time 0, every env starting) takes the mean of the reset observations
        here_offset = jnp.where(t == 0, obs.mean(0), offset[t % slots])
        next_offset = next_obs.mean(0)
        offset = jax.lax.dynamic_update_index_in_dim(offset, here_offset, t % slots, 0)
        offset = jax.lax.dynamic_update_index_in_dim(offset, next_offset, (t + 1) % slots, 0)
    stored_next = _encode(next_obs, dtype, next_offset)
    here = jax.lax.dynamic_index_in_dim(buf.obs_ring, t % slots, 0, keepdims=False)
    here = jnp.where(buf.starts[:, None], _encode(obs, dtype, here_offset), here)
    ring = jax.lax.dynamic_update_index_in_dim(buf.obs_ring, here, t % slots, 0)
    ring = jax.lax.dynamic_update_index_in_dim(ring, stored_next, (t + 1) % slots, 0)
    trunc_obs, trunc_time, trunc_next = _push(buf.trunc_obs, buf.trunc_time, buf.trunc_next,
                                              ended & ~terminal, stored_next, t)
    term_obs, term_time, term_next = _push(buf.term_obs, buf.term_time, buf.term_next, ended & terminal, stored_next, t)
    flags = jnp.where(invalid, INVALID, terminal.astype(jnp.uint8) * TERMINAL + truncated.astype(jnp.uint8) * TRUNCATED)
    put = lambda store, value: jax.lax.dynamic_update_index_in_dim(store, value.astype(store.dtype), row, 0)
    return buf.replace(obs_ring=ring, obs_offset=offset,
                       trunc_obs=trunc_obs, trunc_time=trunc_time, trunc_next=trunc_next,
                       term_obs=term_obs, term_time=term_time, term_next=term_next,
                       action=put(buf.action, _encode(action, buf.action.dtype)), reward=put(buf.reward, jnp.where(invalid, 0.0, reward)),
                       flags=put(buf.flags, flags), starts=ended | invalid, head=(row + 1) % rows,
                       size=jnp.minimum(buf.size + 1, rows), count=t + 1)


def row_time(buf: ReplayBuffer, row):
    """The time (rows written before it) of the step held in `row`."""
    return buf.count - 1 - (buf.head - 1 - row) % buf.rows


def _final_obs(buf: ReplayBuffer, times, envs):
    """(found, final observation) of the episode of env `envs` that ended at `times`."""
    out = []
    for store, tags in ((buf.trunc_obs, buf.trunc_time), (buf.term_obs, buf.term_time)):
        match = tags[:, envs] == times[None, :]  # [slots, B]
        out.append((jnp.any(match, axis=0), store[jnp.argmax(match, axis=0), envs]))
    (found_trunc, trunc), (found_term, term) = out
    return found_trunc | found_term, jnp.where(found_trunc[:, None], trunc, term)


def successor_obs(buf: ReplayBuffer, rows, envs, ended, used):
    """float32 observation after the step in (rows, envs): the final one where `ended`, the
    row's own observation where not `used` (a zero-length window)."""
    times = row_time(buf, rows)
    found, final_obs = _final_obs(buf, times, envs)
    final = ended & found
    slot = (times + (used | final).astype(times.dtype)) % (buf.rows + 1)  # a final obs: offset of slot t + 1
    after = buf.obs_ring[slot, envs]
    return _decode(jnp.where(final[:, None], final_obs, after), _slot_offset(buf, slot))


def sampleable_rows(buf: ReplayBuffer, n_step: int):
    """Rows whose full n-step window is already written (the newest n-1 rows are not).

    A window's last row needs its successor observation: `insert` writes it with the row, so
    the newest row's is written too."""
    return jnp.maximum(buf.size - (n_step - 1), 0)


def nstep_window(buf: ReplayBuffer, start_rows, envs, n_step: int, gamma, reward_scale):
    """n-step return, bootstrap observation and discount for (row, env) index pairs."""
    rows = buf.rows
    offsets = jnp.arange(n_step)
    window = (start_rows[:, None] + offsets[None, :]) % rows  # [B, n]
    env_idx = envs[:, None]
    rewards = buf.reward[window, env_idx] * reward_scale
    flags = buf.flags[window, env_idx]
    ended = (flags & ENDED) != 0
    # alive[k]: no episode end strictly before step k of the window and no invalid step up to k.
    open_before = jnp.concatenate([jnp.ones_like(ended[:, :1]), ~ended[:, :-1]], 1)
    alive = jnp.cumprod(open_before & ((flags & INVALID) == 0), axis=1).astype(bool)
    powers = gamma ** offsets.astype(jnp.float32)
    nstep_return = jnp.sum(jnp.where(alive, rewards * powers, 0.0), axis=1)
    length = jnp.sum(alive, axis=1)  # steps used: up to and including the first end
    used = length > 0
    last = jnp.take_along_axis(window, jnp.maximum(length - 1, 0)[:, None], axis=1)[:, 0]
    last_flags = buf.flags[last, envs]
    terminal = used & ((last_flags & TERMINAL) != 0)
    discount = jnp.where(terminal, 0.0, gamma ** length.astype(jnp.float32))
    next_obs = successor_obs(buf, last, envs, used & ((last_flags & ENDED) != 0), used)
    return nstep_return, next_obs, discount


def sample(buf: ReplayBuffer, key, batch_size: int, n_step: int, gamma, reward_scale=1.0) -> Batch:
    """Uniform n-step transitions with replacement over the sampleable rows and all envs
    (invalid transitions excluded by taking the first valid of several draws)."""
    rows, num_envs = buf.flags.shape
    valid = jnp.maximum(sampleable_rows(buf, n_step), 1)
    oldest = (buf.head - buf.size) % rows

    def draw(k, shape):
        row_key, env_key = jax.random.split(k)
        offset = jax.random.randint(row_key, shape, 0, valid)
        return (oldest + offset) % rows, jax.random.randint(env_key, shape, 0, num_envs)

    start, envs = draw(key, (batch_size,))
    spare_start, spare_envs = draw(jax.random.fold_in(key, 1), (MAX_REDRAWS, batch_size))
    for i in range(MAX_REDRAWS):  # first valid of the draws: uniform over the valid pairs
        again = (buf.flags[start, envs] & INVALID) != 0
        start, envs = jnp.where(again, spare_start[i], start), jnp.where(again, spare_envs[i], envs)
    nstep_return, next_obs, discount = nstep_window(buf, start, envs, n_step, gamma, reward_scale)
    slot = row_time(buf, start) % (rows + 1)
    obs = _decode(buf.obs_ring[slot, envs], _slot_offset(buf, slot))
    return Batch(obs, _decode(buf.action[start, envs]), nstep_return, next_obs, discount)
