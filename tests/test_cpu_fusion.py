"""`env.cpu_fusion`: which programs XLA compiles without its CPU fusion pass, and that they are.

Why it exists (the Dog's single-env step ~12x faster unfused on the CPU) is measured in
benchmarks/RESULTS.md#dog-cpu-fusion; here: the option's resolution, its
validation, and that the training program really is compiled unfused.
"""

from __future__ import annotations

import re

import pytest
from helpers import POINTMASS, small

from pql_jax import config as cfg_mod
from pql_jax.config import EnvConfig
from pql_jax.envs import compiler_options
from pql_jax.errors import UserError
from pql_jax.run.program import GroupProgram
from pql_jax.plan.sweep import single

UNFUSED = {"xla_disable_hlo_passes": "fusion"}


@pytest.mark.parametrize("name,fusion,expect", [
    ("dmc:DogStand", "auto", UNFUSED), ("dmc:DogWalk", "auto", UNFUSED), ("dmc:DogStand", "on", None),
    ("dmc:QuadrupedWalk", "auto", None), ("playground:CartpoleBalance", "auto", None),
    ("test:pointmass", "off", UNFUSED), ("test:pointmass", "on", None)])
def test_auto_turns_fusion_off_for_the_dog_only(name, fusion, expect):
    assert compiler_options(EnvConfig(name=name, cpu_fusion=fusion)) == expect  # the suite runs on the CPU


def test_a_bad_value_is_a_one_line_user_error():
    with pytest.raises(UserError, match="env.cpu_fusion must be auto, on or off") as err:
        cfg_mod.load(POINTMASS, ["env.cpu_fusion=sometimes"])
    assert "\n" not in str(err.value)


def _fused(hlo: str) -> list[str]:
    """Fusion instructions made by XLA's fusion pass: loop/input/output fusions other than the
    `wrapped_*` fusion XLA's CPU backend puts around every single op it emits (library calls,
    such as newer jaxlibs' `ynn_fusion` for dots, are kCustom fusions of another pass)."""
    found = re.findall(r"%([\w.\-]+) = [^\n]*? fusion\([^\n]*?kind=(k\w+)", hlo)
    return [name for name, kind in found if kind in ("kLoop", "kInput", "kOutput") and not name.startswith("wrapped_")]


def test_the_training_program_is_compiled_without_fusion_when_off():
    """The compiled chunk's HLO fuses ops with XLA's defaults and none when off."""
    texts = {fusion: GroupProgram.build(single(small([f"env.cpu_fusion={fusion}"])).groups[0]).compile().as_text()
             for fusion in ("on", "off")}
    assert len(_fused(texts["on"])) > 100
    assert _fused(texts["off"]) == [] and "wrapped_" in texts["off"]
