"""Config: YAML + dotted overrides, dump/load round trip, and one-line UserErrors naming the bad key."""

import dataclasses
from dataclasses import fields
from pathlib import Path
from fractions import Fraction

import pytest

from pql_jax import config as C
from pql_jax.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _raises(overrides, *needles, path=None):
    """load() must raise a one-line UserError whose message contains every needle."""
    with pytest.raises(UserError) as info:
        C.load(path, overrides)
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


# ----------------------------------------------------------------------------------------------
# Loading, overrides, round trip

def test_defaults_are_valid_and_match_pql():
    cfg = C.load(None)
    assert cfg == C.Config()
    a = cfg.agent
    assert (cfg.env.num_envs, a.batch_size, a.n_step, a.gamma, a.tau) == (4096, 8192, 3, 0.99, 0.05)
    assert a.utd == 1 / 512 and C.utd_fraction(a.utd, cfg.env.num_envs) == 8
    assert (a.target_noise, a.target_noise_clip, a.std_min, a.std_max) == (0.8, 0.2, 0.05, 0.8)


def test_yaml_then_overrides(tmp_path):
    path = _write(tmp_path, """
env:
  name: brax:ant
  num_envs: 128
agent:
  utd: 1/65536
  batch_size: 256
  buffer_capacity: 100000
  layer_norm: true
  passive_critic_widths: [64, 256]
  critic_lr: 3e-4
run:
  seed: 7
""")
    cfg = C.load(path, ["agent.batch_size=128", "agent.gamma=0.97", "env.num_envs=256"])
    assert cfg.env.name == "brax:ant"
    assert cfg.env.num_envs == 256  # override wins over the file
    assert cfg.agent.batch_size == 128
    assert cfg.agent.utd == 1 / 65536
    assert C.utd_fraction(cfg.agent.utd, 128) == Fraction(1, 512)
    assert cfg.agent.layer_norm is True
    assert cfg.agent.passive_critic_widths == (64, 256)
    assert cfg.agent.critic_lr == 3e-4  # YAML reads '3e-4' as a string; it must still parse
    assert cfg.agent.gamma == 0.97 and cfg.run.seed == 7
    # Untouched keys keep their defaults.
    assert cfg.agent.tau == C.AgentConfig().tau


def test_fraction_override_parses_exactly():
    cfg = C.load(None, ["agent.utd=1/512"])
    assert cfg.agent.utd == 1 / 512
    assert C.utd_fraction(cfg.agent.utd, 4096) == Fraction(8)
    cfg = C.load(None, ["agent.utd=1/65536", "env.num_envs=128", "agent.batch_size=64",
                        "agent.buffer_capacity=1024"])
    assert C.utd_fraction(cfg.agent.utd, cfg.env.num_envs) == Fraction(1, 512)
    cfg = C.load(None, ["agent.utd=7/3", "env.num_envs=1", "agent.batch_size=4", "agent.buffer_capacity=64"])
    assert C.utd_fraction(cfg.agent.utd, 1) == Fraction(7, 3)


@pytest.mark.parametrize("overrides", [
    [],
    ["agent.utd=1/3", "env.num_envs=3", "agent.passive_critic_widths=[32, 64]", "agent.distributional=true",
     "agent.v_min=-1e-3", "agent.v_max=1e-12", "agent.critic_lr=1e-5", "run.memory_limit_gb=0.5",
     "env.name=playground:CheetahRun", "agent.batch_size=16", "agent.buffer_capacity=64", "run.seed=123"],
    ["agent.utd=1/65536", "agent.std_min=0.8", "agent.layer_norm=yes", "agent.taper=0", "agent.reward_scale=0.01",
     "agent.passive_critic_widths=[]"],
])
def test_dump_then_load_round_trips(tmp_path, overrides):
    cfg = C.load(None, overrides)
    again = C.load(_write(tmp_path, C.dump(cfg)))
    assert again == cfg
    # and once more, to be sure dump is a fixed point
    assert C.dump(again) == C.dump(cfg)


def test_config_is_frozen():
    cfg = C.Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.agent.utd = 1.0  # type: ignore[misc]


def test_integral_float_accepted_for_int():
    assert C.load(None, ["agent.batch_size=4096.0"]).agent.batch_size == 4096
    assert C.load(None, ["agent.batch_size=1e3"]).agent.batch_size == 1000


# ----------------------------------------------------------------------------------------------
# Unknown keys, wrong types, malformed input

def test_unknown_section_in_yaml(tmp_path):
    _raises([], "bogus", path=_write(tmp_path, "bogus:\n  x: 1\n"))


def test_unknown_key_in_yaml(tmp_path):
    _raises([], "agent.batchsize", path=_write(tmp_path, "agent:\n  batchsize: 1\n"))


@pytest.mark.parametrize("override, needle", [
    ("agent.bogus=1", "agent.bogus"),
    ("trainer.lr=1", "trainer.lr"),
    ("utd=1/512", "utd"),
    ("agent.utd.x=1", "agent.utd.x"),
])
def test_unknown_override_key(override, needle):
    _raises([override], needle)


def test_override_without_equals():
    _raises(["agent.utd"], "agent.utd")


@pytest.mark.parametrize("override, key", [
    ("agent.batch_size=abc", "agent.batch_size"),
    ("agent.batch_size=1.5", "agent.batch_size"),
    ("agent.batch_size=true", "agent.batch_size"),
    ("agent.batch_size=nan", "agent.batch_size"),
    ("agent.gamma=abc", "agent.gamma"),
    ("agent.utd=1/0", "agent.utd"),
    ("agent.taper=maybe", "agent.taper"),
    ("agent.passive_critic_widths=[64, x]", "agent.passive_critic_widths"),
    ("agent.passive_critic_widths=[64, 1.5]", "agent.passive_critic_widths"),
])
def test_wrong_type(override, key):
    _raises([override], key)


def test_wrong_type_in_yaml(tmp_path):
    _raises([], "env.name", path=_write(tmp_path, "env:\n  name: 123\n"))
    _raises([], "agent.layer_norm", path=_write(tmp_path, "agent:\n  layer_norm: [1]\n", "b.yaml"))


def test_malformed_files(tmp_path):
    _raises([], "does not exist", path=tmp_path / "missing.yaml")
    _raises([], "not valid YAML", path=_write(tmp_path, "agent: [1, 2\n"))
    _raises([], "agent", path=_write(tmp_path, "agent: 3\n", "s.yaml"))
    _raises([], "mapping", path=_write(tmp_path, "- 1\n- 2\n", "l.yaml"))


# ----------------------------------------------------------------------------------------------
# Impossible values

@pytest.mark.parametrize("overrides, key", [
    (["agent.utd=0"], "agent.utd"),
    (["agent.utd=-1/512"], "agent.utd"),
    (["agent.batch_size=6000000"], "agent.batch_size"),
    (["agent.batch_size=0"], "agent.batch_size"),
    (["agent.std_min=0.9"], "agent.std_min"),
    (["agent.std_min=-0.1"], "agent.std_min"),
    (["agent.v_min=10"], "agent.v_min"),
    (["agent.v_min=5", "agent.v_max=-5"], "agent.v_min"),
    (["agent.gamma=nan"], "agent.gamma"),
    (["agent.gamma=1.5"], "agent.gamma"),
    (["agent.tau=nan"], "agent.tau"),
    (["agent.v_min=nan"], "agent.v_min"),
    (["agent.v_max=inf"], "agent.v_max"),
    (["agent.std_min=nan"], "agent.std_min"),
    (["agent.obs_clip=inf"], "agent.obs_clip"),
    (["agent.reward_scale=0"], "agent.reward_scale"),
    (["agent.n_step=0"], "agent.n_step"),
    (["env.num_envs=0"], "env.num_envs"),
    (["env.num_envs=1024", "agent.buffer_capacity=4095", "agent.batch_size=16"], "agent.buffer_capacity"),
    (["env.episode_length=0"], "env.episode_length"),
    (["agent.critic_actor_ratio=0"], "agent.critic_actor_ratio"),
    (["run.chunk_steps=0"], "run.chunk_steps"),
    (["run.keep_checkpoints=0"], "run.keep_checkpoints"),
    (["agent.activation=swish"], "agent.activation"),
    (["agent.num_atoms=1"], "agent.num_atoms"),
    (["agent.passive_critic_widths=[64, 0]"], "agent.passive_critic_widths"),
    (["run.memory_limit_gb=nan"], "run.memory_limit_gb"),
])
def test_impossible_values(overrides, key):
    _raises(overrides, key)



@pytest.mark.parametrize("value", [
    "nan",
    "inf",
    "-inf",
])
def test_nonfinite_utd_is_user_error(value):
    _raises([f"agent.utd={value}"], "agent.utd")


@pytest.mark.parametrize("value", ["inf", "1e400"])
def test_infinite_int_is_user_error(value):
    _raises([f"agent.batch_size={value}"], "agent.batch_size")


def test_tiny_positive_utd_never_silently_becomes_zero_updates():
    try:
        cfg = C.load(None, ["agent.utd=1e-9"])
    except UserError as err:
        assert "agent.utd" in str(err)
        return
    assert C.utd_fraction(cfg.agent.utd, cfg.env.num_envs) > 0


def test_large_int_kept_exactly():
    assert C.load(None, [f"agent.buffer_capacity={2**53 + 1}"]).agent.buffer_capacity == 2**53 + 1


def test_seed_beyond_32_bits_is_user_error():
    # jax.random.PRNGKey keeps only 32 bits of the seed (2**32 + 1 would silently equal seed 1).
    _raises([f"run.seed={2**32 + 1}"], "run.seed")



# ----------------------------------------------------------------------------------------------
# Every shipped file is valid


def _shipped(folder, root=__import__("pathlib").Path(__file__).resolve().parents[1] / "configs"):
    return sorted((root / folder).glob("*.yaml"))


@pytest.mark.parametrize("path", _shipped("."), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    """Each configs/*.yaml passes validation (keys, ranges, the buffer-size check) as shipped."""
    config = C.load(path)
    assert config.env.name and config.run.total_env_steps > 0


@pytest.mark.parametrize("path", _shipped("workflows"), ids=lambda p: p.name)
def test_every_shipped_workflow_loads(path):
    """Each workflow file parses, its base config validates, and its UTD sweep spans >= 16x."""
    from pql_jax.workflow.spec import load_workflow

    wf = load_workflow(path)
    assert wf.utd_sweep.utd[-1] / wf.utd_sweep.utd[0] >= 16 - 1e-9


@pytest.mark.parametrize("path", _shipped("sweeps"), ids=lambda p: p.name)
def test_every_shipped_sweep_loads(path):
    from pql_jax.plan.sweep import load_sweep

    assert load_sweep(path).members


def test_every_field_is_tagged_explicitly_and_documented():
    """Each field declares its kind with member(...), shape(...) or host(...) in the source (no
    silent default) and carries a docstring (the reference page is built from them)."""
    import ast
    import inspect

    from pql_jax.config_doc import field_docs

    for section, cls in C.SECTIONS.items():
        body = ast.parse(inspect.getsource(cls)).body[0].body
        untagged = [n.target.id for n in body if isinstance(n, ast.AnnAssign)
                    and not (isinstance(n.value, ast.Call) and getattr(n.value.func, "id", "") in ("member", "shape", "host"))]
        assert untagged == [], f"{section}: {untagged}"
        docs = field_docs(cls)
        assert [f.name for f in fields(cls) if not docs.get(f.name)] == [], section


@pytest.mark.parametrize("key, bad, choices", [("env.batching", "scan", "auto, vmap or map"),
                                               ("agent.activation", "swish", "elu, relu, gelu, silu or tanh"),
                                               ("run.eval_mode", "async", "sequential or parallel")])
def test_allowed_values_come_from_the_field_type(key, bad, choices):
    with pytest.raises(UserError, match=f"^{key} must be {choices} \\(got '{bad}'\\)$"):
        C.load(None, [f"{key}={bad}"])


def test_the_config_reference_page_is_generated_from_the_dataclasses():
    from pql_jax.config_doc import reference_markdown

    page = (ROOT / "docs" / "config.md").read_text()
    assert page == reference_markdown() + "\n", "docs/config.md is stale: python -m pql_jax.config_doc > docs/config.md"
    for key in C.field_keys():
        assert f"| `{key}` |" in page


def test_program_views_match_the_shape_declarations():
    """pql_jax.learner.shapes repeats the shape fields as real classes (for IDEs and type checkers): the
    same names, order and types as the config's shape(...) fields, per section; a program view
    built from a config holds exactly those values and no member or host field."""
    import typing

    from pql_jax.learner.shapes import VIEWS, ProgramConfig, program_config, shape_fields

    assert list(VIEWS) == list(C.SECTIONS) == [f.name for f in fields(ProgramConfig)]
    for section, view in VIEWS.items():
        assert [f.name for f in fields(view)] == shape_fields(section), section
        config_types = typing.get_type_hints(C.SECTIONS[section])
        for name, annotation in typing.get_type_hints(view).items():
            assert annotation == config_types[name], (section, name)
    config = C.load(None, ["agent.batch_size=64", "agent.gamma=0.9", "env.name=brax:ant", "env.options.backend=spring"])
    program = program_config(config)
    assert program.agent.batch_size == 64 and program.env.options == {"backend": "spring"}
    assert not hasattr(program.agent, "gamma") and not hasattr(program.run, "total_env_steps")
    assert hash(program) == hash(program_config(C.load(None, ["agent.batch_size=64", "env.name=brax:ant",
                                                               "env.options.backend=spring"])))


def test_an_env_option_on_the_command_line_is_one_value_named_by_its_key():
    """`env.options.KEY=VALUE` merges one option, read as YAML reads a scalar (8 -> 8, self ->
    'self'); a list or mapping is refused naming exactly that key."""
    config = C.apply_overrides(C.Config(), ["env.options.contacts=self", "env.options.solver_ls_iterations=8"])
    assert dict(config.env.options) == {"contacts": "self", "solver_ls_iterations": 8}
    with pytest.raises(UserError, match=r"^config key env.options.contacts: \[1, 2\] is not a single value$"):
        C.apply_overrides(C.Config(), ["env.options.contacts=[1, 2]"])
