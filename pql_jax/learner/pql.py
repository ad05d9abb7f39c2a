"""make_learner(config) -> pure, jittable PQL training: `init(key, hp)` and `chunk(state, schedule)`
(the whole run as one function: pql_jax.learner.train).

One vector step = act in every env, store the transitions, then do exactly
floor((t+1) r) - floor(t r) critic updates (r = utd * num_envs) with an actor update every
`critic_actor_ratio` critic updates. A chunk is `chunk_steps` vector steps in one lax.scan,
followed by evaluation and TD diagnostics. Every value that may differ between members of a
population (learning rates, UTD, gamma, noise ...) lives in `TrainState.hp` as an array; the
Learner itself is built from the shape fields of the config only (`ProgramConfig`), so it cannot
read a member's value from the config.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax

from pql_jax.learner import evaluate, losses, replay, schedule
from pql_jax import counts
from pql_jax.config import Config, episode_vector_steps
from pql_jax.learner.shapes import ProgramConfig, program_config
from pql_jax.envs import VecEnv, make_env
from pql_jax.learner.networks import Actor, DoubleCritic, trunk
from pql_jax.learner.normalize import init_stats, normalize, update_stats
from pql_jax.learner.state import (  # noqa: F401 - re-exported: the state is part of this module's API
    F32, LEARNED, HParams, PopulationSchedule, TrainState, hparams_from_config, make_optimizer)


# TrainState fields a diverged member keeps from before the chunk (all but the replay buffers).
# The env state is kept too: a diverged member's envs stop where its networks stopped.
_FROZEN = tuple(f for f in TrainState.__dataclass_fields__ if f not in ("buffer", "val_buffer"))


def strong_types(tree):
    """`tree` with every weakly typed array made strong (same dtype). A weak leaf in the fresh
    state (MJX's `data.time`, built from a Python float) comes back strong from the first chunk,
    so `jax.jit(chunk)` would trace and compile the whole chunk a second time on its second call."""
    return jax.tree.map(lambda x: jnp.asarray(x, x.dtype) if getattr(x, "weak_type", False) else x, tree)


# Per-chunk accumulators: sums over updates / episodes, turned into means at the chunk's end.
_SUMS = ("critic_loss", "q_mean", "critic_grad_norm", "critic_count", "actor_loss", "actor_grad_norm",
         "actor_count", "return_sum", "episodes", "nonfinite_transitions")


@dataclass(frozen=True)
class Learner:
    """Static structure of a run (shapes, networks, env); the functions are pure and jittable."""

    config: ProgramConfig
    """Shape fields only: per-member values come from `state.hp`."""
    env: VecEnv
    actor: Actor
    critic: DoubleCritic
    passive: tuple
    buffer_rows: int
    val_rows: int
    max_updates: int
    """Update slots per vector step: the most any member of the program needs."""

    # ---- helpers -------------------------------------------------------------------------
    @property
    def atoms(self):
        a = self.config.agent
        return losses.support(a.num_atoms, a.v_min, a.v_max) if a.distributional else None

    @jax.named_scope("obs_norm")
    def norm(self, state: TrainState, obs):
        a = self.config.agent
        return normalize(state.obs_stats, obs, a.obs_clip, a.normalize_obs)

    def policy(self, state: TrainState, obs):
        return self.actor.apply(state.actor_params, self.norm(state, obs))

    # ---- init ----------------------------------------------------------------------------
    def init(self, key, hp: HParams) -> TrainState:
        """Fresh state: networks, optimisers, envs, empty buffers."""
        e = self.config.env
        keys = jax.random.split(key, 6 + len(self.passive))
        obs0 = jnp.zeros((1, self.env.obs_size))
        act0 = jnp.zeros((1, self.env.action_size))
        actor_params = self.actor.init(keys[0], obs0)
        critic_params = self.critic.init(keys[1], obs0, act0)
        passive_params = tuple(p.init(k, obs0, act0) for p, k in zip(self.passive, keys[6:]))
        critic_tx = make_optimizer(hp.critic_lr, hp.weight_decay, hp.max_grad_norm)
        actor_tx = make_optimizer(hp.actor_lr, hp.weight_decay, hp.max_grad_norm)
        obs, act = self.env.obs_size, self.env.action_size
        return strong_types(TrainState(
            hp=hp, actor_params=actor_params, actor_opt=actor_tx.init(actor_params),
            critic_params=critic_params, critic_target=critic_params, critic_opt=critic_tx.init(critic_params),
            passive_params=passive_params, passive_opt=tuple(critic_tx.init(p) for p in passive_params),
            obs_stats=init_stats(obs), env=self.start_envs(keys[2], keys[5]),
            cohort=(evaluate.init_cohort(actor_params, init_stats(obs), e.eval_envs, self.config.run.eval_cohorts,
                                         self.eval_slots) if self.parallel_eval else None),
            buffer=replay.init_buffer(self.buffer_rows, e.num_envs, obs, act, *self.buffer_layout),
            val_buffer=replay.init_buffer(self.val_rows, max(e.val_envs, 1), obs, act, *self.buffer_layout),
            key=keys[4], step=jnp.zeros((), jnp.int32), critic_updates=jnp.zeros((), jnp.int32),
            actor_updates=jnp.zeros((), jnp.int32), diverged=jnp.zeros((), jnp.bool_)))

    @property
    def buffer_layout(self):
        """(observation dtype, vector steps per episode): sizes the buffers' observation stores."""
        return self.config.agent.buffer_dtype, episode_vector_steps(self.config.env)

    @property
    def parallel_eval(self) -> bool:
        """Whether eval envs ride in the training env call (`run.eval_mode: parallel`)."""
        return self.config.run.eval_mode == "parallel" and self.config.env.eval_envs > 0

    @property
    def eval_slots(self) -> int:
        """Evaluation results one chunk can return (parallel: every cohort episode it finishes)."""
        if not self.parallel_eval:
            return 1
        r = self.config.run
        return counts.result_slots(r.chunk_steps, episode_vector_steps(self.config.env), r.eval_cohorts)

    @property
    def env_rows(self) -> tuple[int, int, int]:
        """Rows of `TrainState.env`: (training, validation, parallel-eval) envs, in that order."""
        e = self.config.env
        return e.num_envs, e.val_envs, e.eval_envs if self.parallel_eval else 0

    def start_envs(self, key, phase_key):
        """Every env of the single env call, fresh; with `env.random_episode_start`, training and
        validation envs start at random episode steps (whole vector steps in [0, episode_length))
        so that their truncations are spread. Eval envs start at step 0."""
        n, v, q = self.env_rows
        state = self.env.reset(key, n + v + q)
        if not self.config.env.random_episode_start:
            return state
        steps = self.buffer_layout[1]
        start = jax.random.randint(phase_key, (n + v + q,), 0, steps) * self.config.env.action_repeat
        start = jnp.where(jnp.arange(n + v + q) < n + v, start, 0)
        return state.replace(episode_step=start.astype(state.episode_step.dtype))

    # ---- learning ------------------------------------------------------------------------
    @jax.named_scope("td_target")
    def td_target(self, state: TrainState, batch: replay.Batch, key):
        """Clipped double-Q target with target-policy smoothing (no gradient)."""
        hp = state.hp
        next_obs = self.norm(state, batch.next_obs)
        action = losses.smoothed_target_action(self.actor.apply(state.actor_params, next_obs), key,
                                               hp.target_noise, hp.target_noise_clip)
        out = self.critic.apply(state.critic_target, next_obs, action)
        if self.config.agent.distributional:
            target = losses.categorical_target(out, batch.nstep_return, batch.discount, self.atoms)
        else:
            target = losses.scalar_target(out, batch.nstep_return, batch.discount)
        return jax.lax.stop_gradient(target)

    @jax.named_scope("sample")
    def sample(self, state: TrainState, buffer, key):
        a = self.config.agent
        return replay.sample(buffer, key, a.batch_size, a.n_step, state.hp.gamma, state.hp.reward_scale)

    def critic_update(self, state: TrainState, key):
        """One critic (and passive critic) gradient step on a fresh batch, then Polyak."""
        categorical = self.config.agent.distributional
        sample_key, noise_key = jax.random.split(key)
        batch = self.sample(state, state.buffer, sample_key)
        target = self.td_target(state, batch, noise_key)
        obs = self.norm(state, batch.obs)
        tx = make_optimizer(state.hp.critic_lr, state.hp.weight_decay, state.hp.max_grad_norm)

        def step_net(net, params, opt_state):
            def loss_fn(p):
                out = net.apply(p, obs, batch.action)
                return losses.td_loss(out, target, categorical), out

            with jax.named_scope("critic_grad"):
                (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            with jax.named_scope("critic_adam"):
                updates, opt_state = tx.update(grads, opt_state, params)
                return optax.apply_updates(params, updates), opt_state, loss, out, optax.tree.norm(grads)

        params, opt, loss, out, grad_norm = step_net(self.critic, state.critic_params, state.critic_opt)
        passive = [step_net(n, p, o) for n, p, o in zip(self.passive, state.passive_params, state.passive_opt)]
        with jax.named_scope("polyak"):
            target_params = optax.incremental_update(params, state.critic_target, state.hp.tau)
        state = state.replace(
            critic_params=params, critic_opt=opt, critic_target=target_params,
            passive_params=tuple(p[0] for p in passive), passive_opt=tuple(p[1] for p in passive),
            critic_updates=state.critic_updates + 1)
        q_mean = jnp.mean(losses.expected_q(out, self.atoms))
        return state, {"critic_loss": loss, "q_mean": q_mean, "critic_grad_norm": grad_norm, "critic_count": F32(1)}

    @jax.named_scope("actor_update")
    def actor_update(self, state: TrainState, key):
        """One actor step: maximise min over heads of Q(s, pi(s))."""
        obs = self.norm(state, self.sample(state, state.buffer, key).obs)
        tx = make_optimizer(state.hp.actor_lr, state.hp.weight_decay, state.hp.max_grad_norm)

        def loss_fn(p):
            return losses.actor_loss(self.critic.apply(state.critic_params, obs, self.actor.apply(p, obs)), self.atoms)

        loss, grads = jax.value_and_grad(loss_fn)(state.actor_params)
        updates, opt = tx.update(grads, state.actor_opt, state.actor_params)
        state = state.replace(actor_params=optax.apply_updates(state.actor_params, updates), actor_opt=opt,
                              actor_updates=state.actor_updates + 1)
        return state, {"actor_loss": loss, "actor_grad_norm": optax.tree.norm(grads), "actor_count": F32(1)}

    def updates_due(self, sched, step):
        """(updates at vector step `step`, updates done before it) for a schedule's rates.

        `sched` is an HParams or a PopulationSchedule; with [K] arrays the answers are [K].
        Updates start once warm-up is over and the buffer holds a full n-step window.
        """
        start = counts.first_update_step(sched.warmup_steps, self.config.agent.n_step, xp=jnp)
        return counts.update_schedule(step, start, sched.rate_num, sched.rate_den, xp=jnp)

    def gated(self, group_pred, own_pred, fn, state: TrainState, key):
        """Run `fn(state, key) -> (state, metrics)` when any member needs it, keep it where this one does.

        `group_pred` is the same for every member of a vmapped block, so the lax.cond
        really skips the work when none of them needs it; `own_pred` masks it per member. Only the
        network fields (LEARNED) pass through the cond: the replay buffer is read as a constant,
        so it is never copied into the cond's outputs.
        """
        learned = {f: getattr(state, f) for f in LEARNED}

        def run(fields):
            new, metrics = fn(state.replace(**fields), key)
            keep = lambda a, b: jnp.where(own_pred, a, b)
            with jax.named_scope("member_mask"):
                kept = {f: jax.tree.map(keep, getattr(new, f), fields[f]) for f in LEARNED}
                return kept, jax.tree.map(lambda m: jnp.where(own_pred, m, jnp.zeros_like(m)), metrics)

        zero = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(run, learned)[1])
        fields, metrics = jax.lax.cond(group_pred, run, lambda fields: (fields, zero), learned)
        return state.replace(**fields), metrics

    def update_phase(self, state: TrainState, sums, peers: PopulationSchedule, key):
        """All critic (and actor) updates of one vector step, following the exact schedule.

        `peers` holds the schedules of the members run together at this vector step (a single
        run or lax.map: its own), so the update slots run only when one of them needs them. The
        loop carries only the network fields; buffer, statistics and hyperparameters are loop
        constants.
        """
        hp = state.hp
        own_count, own_before = self.updates_due(hp, state.step)
        # A run resumed without its checkpointed buffer refills it: no update until one full n-step
        # window is written (a fresh run's schedule already waits for that, so it is unchanged).
        own_count = jnp.where(replay.sampleable_rows(state.buffer, self.config.agent.n_step) > 0, own_count, 0)
        group_count, group_before = self.updates_due(peers, peers.step)
        group_ratio = peers.critic_actor_ratio

        def one(i, carry):
            fields, acc = carry
            st = state.replace(**fields)
            critic_key, actor_key = jax.random.split(jax.random.fold_in(key, i))

            def critic_then_actor(s, k):
                s, metrics = self.critic_update(s, k)
                own_actor = (own_before + i + 1) % hp.critic_actor_ratio == 0
                group_actor = jnp.any((i < group_count) & ((group_before + i + 1) % group_ratio == 0))
                s, actor_metrics = self.gated(group_actor, own_actor, self.actor_update, s, actor_key)
                return s, {**metrics, **actor_metrics}

            st, metrics = self.gated(jnp.any(i < group_count), i < own_count, critic_then_actor, st, critic_key)
            return {f: getattr(st, f) for f in LEARNED}, {k: acc[k] + metrics.get(k, 0.0) for k in acc}

        learned = {f: getattr(state, f) for f in LEARNED}
        fields, sums = jax.lax.fori_loop(0, self.max_updates, one, (learned, sums))
        return state.replace(**fields), sums

    # ---- acting --------------------------------------------------------------------------
    @jax.named_scope("act")
    def act(self, state: TrainState, obs, key):
        """Uniform random actions during warm-up, else the policy plus PQL's mixed per-env Gaussian
        noise (stds spread over the training envs, and separately over the validation envs)."""
        n, v, _ = self.env_rows
        hp = state.hp
        stds = schedule.exploration_stds(n, hp.std_min, hp.std_max)
        if v:
            stds = jnp.concatenate([stds, schedule.exploration_stds(v, hp.std_min, hp.std_max)])
        shape = (obs.shape[0], self.env.action_size)
        noise_key, uniform_key = jax.random.split(key)
        noisy = jnp.clip(self.policy(state, obs) + stds[:, None] * jax.random.normal(noise_key, shape), -1.0, 1.0)
        uniform = jax.random.uniform(uniform_key, shape, minval=-1.0, maxval=1.0)
        return jnp.where(state.step < hp.warmup_steps, uniform, noisy)

    def step_envs(self, state: TrainState, peers: PopulationSchedule, key):
        """Every env (training, validation, parallel eval) in one env call; returns the new env
        state, the step's output, the training and validation actions and the cohort after this step."""
        n, v, q = self.env_rows
        obs = state.env.obs
        action = self.act(state, obs[: n + v], key)
        if not q:
            with jax.named_scope("env_step"):
                return (*self.env.step(state.env, action), action, state.cohort)
        horizon, cohorts = episode_vector_steps(self.config.env), self.config.run.eval_cohorts
        phases = counts.cohort_phases(peers.eval_phase, horizon, cohorts, xp=jnp)
        starts = evaluate.boundary(peers.step, phases, horizon)
        ends = evaluate.boundary(peers.step + 1, phases, horizon)  # the next step starts a new episode
        cohort = evaluate.cohort_begin(state.cohort, starts, state.actor_params, state.obs_stats, state.step)
        eval_action = evaluate.cohort_actions(cohort, self.actor, obs[n + v:], self.config.agent)
        reset = jnp.concatenate([jnp.zeros(n + v, jnp.bool_), jnp.repeat(ends, q // cohorts)])
        with jax.named_scope("env_step"):
            env, out = self.env.step(state.env, jnp.concatenate([action, eval_action]), reset)
        finishes = ends & (peers.step + 1 >= phases + horizon)
        eval_ended = (out.terminal | out.truncated | out.nonfinite)[n + v:]
        return env, out, action, evaluate.cohort_record(cohort, out.reward[n + v:], eval_ended, finishes)

    def vector_step(self, state: TrainState, sums, peers: PopulationSchedule):
        """Act in every env, store, update the normaliser, then do the updates this step is due."""
        key, act_key, update_key = jax.random.split(state.key, 3)
        n, v, _ = self.env_rows
        obs = state.env.obs
        env, out, action, cohort = self.step_envs(state, peers, act_key)

        @jax.named_scope("replay_insert")
        def store(buffer, lo, hi):
            o = jax.tree.map(lambda x: x[lo:hi], out)
            return replay.insert(buffer, obs[lo:hi], action[lo:hi], o.reward, o.terminal, o.truncated, o.next_obs,
                                 invalid=o.nonfinite)

        state = state.replace(env=env, cohort=cohort, buffer=store(state.buffer, 0, n),
                              val_buffer=store(state.val_buffer, n, n + v) if v else state.val_buffer,
                              obs_stats=update_stats(state.obs_stats, obs[:n]), key=key)
        ended = (out.terminal | out.truncated)[:n]
        sums = {**sums, "return_sum": sums["return_sum"] + jnp.sum(jnp.where(ended, out.episode_return[:n], 0.0)),
                "episodes": sums["episodes"] + jnp.sum(ended),
                "nonfinite_transitions": sums["nonfinite_transitions"] + jnp.sum(out.nonfinite[: n + v])}
        state, sums = self.update_phase(state, sums, peers, update_key)
        return state.replace(step=state.step + 1), sums

    # ---- evaluation and diagnostics -------------------------------------------------------
    @jax.named_scope("diagnostics")
    def td_errors(self, state: TrainState, buffer, key):
        """Per-head TD loss of the main and passive critics on a batch from `buffer`."""
        categorical = self.config.agent.distributional
        sample_key, noise_key = jax.random.split(key)
        batch = self.sample(state, buffer, sample_key)
        target = self.td_target(state, batch, noise_key)
        obs = self.norm(state, batch.obs)
        nets = [(self.critic, state.critic_params)] + list(zip(self.passive, state.passive_params))
        return [losses.td_loss(n.apply(p, obs, batch.action), target, categorical) / 2 for n, p in nets]

    @jax.named_scope("evaluate")
    def evaluate(self, state: TrainState, key):
        """(mean undiscounted return, its std across the eval envs, mean episode length) of one
        deterministic-policy episode per eval env (sequential)."""
        if self.config.env.eval_envs == 0:
            return (F32(jnp.nan),) * 3
        return evaluate.sequential_return(self.env, lambda obs: self.policy(state, obs), self.config.env, key)

    def chunk(self, state: TrainState, peers: PopulationSchedule):
        """`chunk_steps` vector steps, then eval and diagnostics; returns (state, metrics).

        `peers` (unbatched in a population) holds the schedules of the members this one runs
        with (see `PopulationSchedule`) at the chunk's first vector step, so update work is
        skipped on steps where none of them updates. A diverged state
        (NaN/Inf in a loss or parameter) is returned unchanged, except its replay buffers. The
        evaluation episode runs only when `peers.evaluate` (else `eval_return` is NaN); it reads
        the state without changing it, so skipping it leaves training bit-identical.
        """
        sums0 = {k: F32(0) for k in _SUMS}

        def body(carry, offset):
            return self.vector_step(*carry, peers.replace(step=peers.step + offset)), None

        steps = jnp.arange(self.config.run.chunk_steps, dtype=jnp.int32)
        start = state.replace(cohort=evaluate.clear_results(state.cohort)) if self.parallel_eval else state
        new, sums = jax.lax.scan(body, (start, sums0), steps)[0]
        eval_key, td_key, val_key, next_key = jax.random.split(new.key, 4)
        new = new.replace(key=next_key)
        mean = lambda k, c: sums[k] / jnp.maximum(sums[c], 1.0)
        train_td = self.td_errors(new, new.buffer, td_key)
        metrics = {
            "critic_loss": mean("critic_loss", "critic_count"), "q_mean": mean("q_mean", "critic_count"),
            "critic_grad_norm": mean("critic_grad_norm", "critic_count"),
            "actor_loss": mean("actor_loss", "actor_count"), "actor_grad_norm": mean("actor_grad_norm", "actor_count"),
            "online_return": jnp.where(sums["episodes"] > 0, sums["return_sum"] / jnp.maximum(sums["episodes"], 1), jnp.nan),
            "episodes": sums["episodes"],
            # transitions of this chunk (training and validation envs) whose observation or reward
            # was not finite: not stored for learning, their envs reset (pql_jax.envs)
            "nonfinite_transitions": sums["nonfinite_transitions"],
            **evaluate.chunk_metrics(new, peers.evaluate, lambda: self.evaluate(new, eval_key), self.parallel_eval),
            "critic_param_norm": optax.tree.norm(new.critic_params),
            "actor_param_norm": optax.tree.norm(new.actor_params), "td_train": train_td[0],
            **{f"passive{i}_td_train": v for i, v in enumerate(train_td[1:])},
        }
        if self.config.env.val_envs > 0:
            val_td = self.td_errors(new, new.val_buffer, val_key)
            metrics.update({"td_val": val_td[0], "td_gap": val_td[0] - train_td[0],
                            **{f"passive{i}_td_val": v for i, v in enumerate(val_td[1:])}})
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(
            (new.critic_params, new.actor_params, metrics["critic_loss"], metrics["actor_loss"]))]))
        diverged = state.diverged | ~finite
        new = new.replace(diverged=diverged)
        # A diverged member keeps its last good state; its buffers are not selected (they are
        # never read again), so XLA need not keep a second copy of them through the chunk.
        frozen = {f: jax.tree.map(lambda old, fresh: jnp.where(state.diverged, old, fresh),
                                  getattr(state, f), getattr(new, f)) for f in _FROZEN}
        out = new.replace(**frozen)
        # env steps = vector_steps * envs_per_step, formed in int64 on the host (`metrics_to_host`):
        # an int32 product here would overflow past 2^31 env steps
        # a member diverged before this chunk reports no evaluation (its frozen policy is not trained)
        metrics["eval_vector_step"] = jnp.where(state.diverged, -1, metrics["eval_vector_step"])
        metrics.update({"envs_per_step": jnp.int32(self.config.env.num_envs), "vector_steps": out.step,
                        "critic_updates": out.critic_updates, "actor_updates": out.actor_updates,
                        "diverged": diverged, "nonfinite": ~finite})
        return out, metrics


def make_learner(config: Config, max_updates: int | None = None) -> Learner:
    """The learner of `config`, built from its shape fields only.

    `max_updates` (>= this run's need) lets a population of different UTDs share one program.
    """
    return build_learner(program_config(config), max(counts.updates_needed(config), max_updates or 0))


def build_learner(shape: ProgramConfig, max_updates: int) -> Learner:
    """The learner of a program: networks, env and buffer sizes from the shape fields."""
    a, e = shape.agent, shape.env
    env = make_env(e)
    out_dim = a.num_atoms if a.distributional else 1
    critic_net = lambda width: trunk(a.critic_arch, width, a.critic_depth, a.taper, out_dim, a.activation, a.layer_norm)
    critic = DoubleCritic(critic_net(a.critic_width))
    actor = Actor(trunk(a.actor_arch, a.actor_width, a.actor_depth, a.taper, env.action_size, a.activation,
                        a.layer_norm))
    passive = tuple(DoubleCritic(critic_net(w)) for w in a.passive_critic_widths)
    return Learner(shape, env, actor, critic, passive, counts.buffer_rows(a, e), counts.val_buffer_rows(a, e),
                   max_updates)
