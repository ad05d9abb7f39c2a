"""One sweep on several processes (`pql-jax sweep --coordinator ... --num-processes N --process-id I`):
two local CPU processes of one device each give the one-process table, resume, and bad flags are
one line with exit status 2, nothing written."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import yaml

from helpers import INTERRUPT_AFTER
from helpers import ROOT, SHORT, env_with_xla_flags
from pql_jax.cli import main
from pql_jax.errors import UserError
from pql_jax.run import distributed, launch

UTD_SWEEP = ROOT / "configs" / "sweeps" / "pointmass_utd.yaml"
RUN = [*SHORT, "run.total_env_steps=3200"]
"""4 chunks of 25 vector steps at 32 envs, a checkpoint every 2."""
TIMING = ("wall_time", "env_steps_per_s", "updates_per_s")
COUNTERS = ("env_steps", "vector_steps", "critic_updates", "actor_updates", "eval_env_steps", "diverged")
RTOL, ATOL = 1e-4, 1e-6
"""Two processes of one device hold 3 members each, one process all 6: XLA compiles the per-device
member loop for another trip count and rounds floats differently (measured: <= 1e-6 relative on
this sweep; tests/test_population.py sees the same with 2 devices in one process, and two processes
equal that bit for bit), which 4 chunks of training carry on. 100x the measured difference."""


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def tiny_sweep(tmp_path):
    """configs/sweeps/pointmass_utd.yaml with one batch size: 3 UTDs x 2 seeds, one program of 6."""
    spec = yaml.safe_load(UTD_SWEEP.read_text())
    spec["base"] = str((UTD_SWEEP.parent / spec["base"]).resolve())
    spec["grid"]["batch_size"] = [64]
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def two_processes(args_of, timeout: int = 300) -> list[subprocess.CompletedProcess]:
    """Run `args_of(process_id, port)` for processes 0 and 1 at once (one CPU device each); both are
    killed at `timeout` seconds (a process that fails alone leaves the other waiting for it)."""
    port = free_port()
    env = env_with_xla_flags("--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
                             JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
    procs = [subprocess.Popen([sys.executable, *args_of(i, port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=ROOT) for i in (0, 1)]
    out = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=timeout)
            out.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out


def sweep_cli(sweep, out, *extra):
    """`args_of` for `python -m pql_jax.cli sweep` on two processes."""
    return lambda i, port: ["-m", "pql_jax.cli", "sweep", str(sweep), "--out", str(out), "--no-progress",
                            "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i),
                            "--init-timeout", "60", *extra, *RUN]


def stopped_early(sweep, out, chunks: int):
    """`args_of` for a two-process sweep that stops after `chunks` chunks (interrupted from outside)."""
    def args_of(i, port):
        code = (INTERRUPT_AFTER.format(chunks=chunks)
                + f"from pql_jax.run import distributed, launch\n"
                f"distributed.initialize('localhost:{port}', 2, {i}, timeout=60)\n"
                f"launch.train_sweep_file({str(sweep)!r}, {str(out)!r}, {RUN!r}, progress=False)\n")
        return ["-c", code]
    return args_of


def ok(procs) -> None:
    for i, proc in enumerate(procs):
        assert proc.returncode == 0, f"process {i}:\n{proc.stderr[-3000:]}"


def table(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tiny sweep on one process (in this one), and on two processes stopped after 3 chunks
    (the checkpoint at chunk 2 is the latest) then resumed by the CLI. (Two launches, not three:
    an uninterrupted two-process run would cost the suite another ~30 s; resume's bit-identity is
    tested on one process in tests/test_population.py and tests/test_train_e2e.py.)"""
    root = tmp_path_factory.mktemp("distributed")
    sweep = tiny_sweep(root)
    launch.train_sweep_file(sweep, root / "one", RUN, progress=False, batching="map", log=lambda *a: None)
    ok(two_processes(stopped_early(sweep, root / "two", 3)))
    stopped = table(root / "two" / "results.csv")
    resumed = two_processes(sweep_cli(sweep, root / "two", "--resume"))
    ok(resumed)
    return root, stopped, resumed


@pytest.mark.slow
def test_two_processes_give_the_one_process_table(runs):
    """Stopped after 3 chunks and resumed on two processes: the one-process table, counters
    exactly, floats to rounding (each device holds 3 members instead of 6: XLA's reductions round
    differently; one process with two devices gives the two-process table bit for bit)."""
    root, _, procs = runs
    one, two = table(root / "one" / "results.csv"), table(root / "two" / "results.csv")
    assert len(two) == len(one) == 6 * 4 and list(two[0]) == list(one[0])
    for a, b in zip(one, two):
        for key in a:
            if key in COUNTERS or a[key] == b[key]:  # counters and names exactly
                assert a[key] == b[key], key
            elif key not in TIMING:  # returns, TD errors, losses, norms: to float rounding
                np.testing.assert_allclose(float(b[key]), float(a[key]), rtol=RTOL, atol=ATOL, err_msg=key)
    assert "sweep: 6 members in 1 compiled program(s) on 2 cpu device(s)" in procs[0].stdout
    assert "done: results in" in procs[0].stdout and "done:" not in procs[1].stdout  # process 0 reports
    members = sorted({r["member"] for r in one})  # TensorBoard runs: `m000 ... s0` for member `m000_..._seed=0`
    runs = sorted((root / "two" / "tb").iterdir())
    assert [p.name.split(" ")[0] for p in runs] == [m.split("_")[0] for m in members]
    for run in runs:  # process 0's writer before the stop and after the resume; process 1 wrote none
        assert len(list(run.glob("events.*"))) == 2
    assert sorted(p.name for p in (root / "two" / "checkpoints" / "group0").iterdir() if p.name.isdigit()) \
        == ["100", "50"]


@pytest.mark.slow
def test_two_processes_stopped_then_resumed_keep_the_written_rows(runs):
    """The resumed run restarts from the checkpoint at chunk 2 and rewrites nothing before it."""
    root, stopped, procs = runs
    assert len(stopped) == 6 * 3  # 3 chunks written, the checkpoint at chunk 2
    assert "resumed from chunk 2" in procs[0].stdout
    resumed = table(root / "two" / "results.csv")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
    assert strip(resumed[:6 * 2]) == strip(stopped[:6 * 2])


@pytest.mark.parametrize("flags, needle", [
    ({"coordinator": "localhost:1234"}, "missing --num-processes, --process-id"),
    ({"num_processes": 2, "process_id": 0}, "missing --coordinator"),
    ({"coordinator": "localhost:1234", "num_processes": 2, "process_id": 2}, r"--process-id must be in 0\.\.1"),
    ({"coordinator": "localhost:1234", "num_processes": 0, "process_id": 0}, "--num-processes must be >= 1"),
    ({"coordinator": "localhost", "num_processes": 2, "process_id": 0}, "HOST:PORT"),
    ({"coordinator": "localhost:99999", "num_processes": 2, "process_id": 0}, "HOST:PORT"),
    ({"mode": "auto", "process_id": 0}, "drop --process-id"),
])
def test_bad_flags_are_refused(flags, needle):
    args = {"coordinator": None, "num_processes": None, "process_id": None, "mode": None, **flags}
    with pytest.raises(UserError, match=needle):
        distributed.check_flags(**args)


def test_no_flags_is_one_process_and_auto_asks_jax():
    assert distributed.check_flags(None, None, None, None) is None
    assert distributed.check_flags(None, None, None, "auto") == {}
    assert distributed.initialize() == 1


def _refused(tmp_path, capsys, extra, needle):
    """The sweep CLI with `extra` flags: exit 2, one line naming the problem, the results kept."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.csv").write_text("kept\n")
    assert main(["sweep", str(tiny_sweep(tmp_path)), "--out", str(out), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err, err
    assert (out / "results.csv").read_text() == "kept\n" and len(list(out.iterdir())) == 1


def test_partial_flags_exit_2(tmp_path, capsys):
    _refused(tmp_path, capsys, ["--coordinator", "localhost:1234", "--process-id", "1"], "missing --num-processes")


def test_unreachable_coordinator_exit_2(tmp_path, capsys):
    port = free_port()
    _refused(tmp_path, capsys, ["--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", "1",
                                "--init-timeout", "1"], f"could not reach the coordinator at localhost:{port} within 1 s")


def test_coordinator_port_in_use_exit_2(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("localhost", 0))
        busy.listen()
        port = busy.getsockname()[1]
        _refused(tmp_path, capsys, ["--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", "0"],
                 "process 0 cannot start the coordinator")


def test_auto_without_a_cluster_exit_2(tmp_path, capsys, monkeypatch):
    for name in [k for k in os.environ if k.startswith(("SLURM_", "OMPI_", "PMI_", "JAX_COORDINATOR"))]:
        monkeypatch.delenv(name)  # no cluster for JAX to find
    _refused(tmp_path, capsys, ["--distributed", "auto"], "--distributed auto: JAX found no cluster to join")


def test_processes_disagreeing_on_the_count_exit_2(tmp_path):
    """Process 0 says 2 processes, process 1 says 3: both stop with the same line, nothing written."""
    out = tmp_path / "out"
    procs = two_processes(lambda i, port: ["-m", "pql_jax.cli", "sweep", str(tiny_sweep(tmp_path)), "--out",
                                           str(out), "--coordinator", f"localhost:{port}", "--num-processes",
                                           str(2 + i), "--process-id", str(i), "--init-timeout", "60"], timeout=120)
    for proc in procs:
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "error: the processes disagree on --num-processes: [2, 3]" in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("primary", [True, False])
def test_workflow_stages_by_process(primary, tmp_path, monkeypatch):
    """Under several processes every process runs the training stages, only process 0 the fitting
    and report stages and the stage markers; the others wait at the barriers. (Checked end to end
    by hand: two processes of one device run the workflow to the tables, settings and verification
    of one process with two devices, bit for bit; benchmarks/RESULTS.md#workflow-two-processes.)"""
    from pql_jax.workflow import runner

    wf = tmp_path / "wf.yaml"
    wf.write_text(yaml.safe_dump({
        "base": str(ROOT / "configs" / "pointmass.yaml"), "max_return": 50,
        "hparam_sweep": {"utd": ["1/8", "1/4", "1/2"], "batch_size": [32], "lr": [1e-3]},
        "utd_sweep": {"utd": ["1/16", "1/4", "1"]}, "verify": {"utd": "2"}}))
    out = tmp_path / "out"
    ran, barriers = [], []
    monkeypatch.setattr(runner, "is_primary", lambda: primary)
    monkeypatch.setattr(runner, "barrier", barriers.append)
    monkeypatch.setattr(runner, "STAGE_FUNCTIONS", {s: (lambda wf, out, s=s, **kw: ran.append(s) or {})
                                                     for s in runner.STAGES})
    if not primary:  # process 0 prepared OUT; this process only checks it
        monkeypatch.setattr(runner, "prepare_out", lambda wf, out: None)
    runner.run_workflow(wf, out, progress=False, log=lambda *a: None)
    assert ran == (list(runner.STAGES) if primary else list(runner.TRAINING_STAGES))
    assert all((out / s / "done.json").is_file() == primary for s in runner.STAGES)
    assert len(barriers) == 2 * len(runner.STAGES)  # before each stage and after its marker
