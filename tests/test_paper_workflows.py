"""The paper-scale workflow files (configs/workflows/{cheetah_run,walker_walk,humanoid_stand,ant}.yaml).

Opt-in (`python -m pytest --long tests/test_paper_workflows.py`): each compiles several
Playground/Brax programs, about a minute apiece on a 2-core CPU, far beyond the suite's budget.
- `plan` on the unshrunk file: every hparam-sweep group compiled ahead of time (nothing
  allocated), its peak memory and members per device, the evaluation line, later stages projected.
- The file with only sizes shrunk (envs, episode length, steps, buffer, seeds) through every stage:
  its keys, shapes and stage logic run for real.
"""

from __future__ import annotations

import re

import pytest
import yaml

from helpers import ROOT
from pql_jax.cli import main
from pql_jax.workflow.runner import run_workflow
from pql_jax.workflow.spec import STAGES, is_done

PAPER = ("cheetah_run", "walker_walk", "humanoid_stand", "ant")

SHRINK = {"env.num_envs": 8, "env.eval_envs": 4, "env.val_envs": 2, "env.episode_length": 50,
          "agent.buffer_capacity": 16384,  # the largest batch size a file sweeps or fits to
          "run.total_env_steps": 800, "run.chunk_steps": 25, "run.checkpoint_every": 0}
"""Sizes only: 100 vector steps of 8 envs (two 50-step episodes) per run."""


@pytest.mark.long
@pytest.mark.parametrize("name", PAPER)
def test_plan_of_the_unshrunk_file(name, capsys):
    assert main(["plan", str(ROOT / "configs" / "workflows" / f"{name}.yaml")]) == 0
    text = capsys.readouterr().out
    groups = re.findall(r"compiled chunk \((\w+), \w+\): peak ([\d.]+ [KMGT]?i?B) per device", text)
    assert groups, text
    assert len(re.findall(r"(\d+) members of this shape fit", text)) == len(groups)
    assert "evaluation: parallel" in text and "share 0.0%" in text
    assert "utd_sweep" in text and "verify" in text


@pytest.mark.long
@pytest.mark.parametrize("name", PAPER)
def test_shrunk_file_runs_every_stage(name, tmp_path):
    spec = yaml.safe_load((ROOT / "configs" / "workflows" / f"{name}.yaml").read_text())
    spec["base"] = str(ROOT / "configs" / "workflows" / spec["base"])
    spec["overrides"] = {**spec.get("overrides", {}), **SHRINK}
    spec["seeds"] = 2
    spec["resamples"] = 20
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    report = run_workflow(path, tmp_path / "out", progress=False, log=lambda *_: None)
    assert report.is_file()
    for stage in STAGES:
        assert is_done(tmp_path / "out", stage), stage
