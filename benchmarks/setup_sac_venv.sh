#!/usr/bin/env bash
# Create benchmarks/.venv-sac: the brax SAC baseline's own environment.
#
# Why a separate venv: brax 0.14.2's SAC trainer calls jax.device_put_replicated, which
# JAX 0.10 removed, so the baseline cannot run in the project's venv (JAX 0.10.2). It runs
# on JAX 0.9.2. Idempotent: re-running only installs what is missing or mismatched.
# Usage: bash benchmarks/setup_sac_venv.sh   [PYTHON=/path/to/python3.11]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-sac"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
# Pins: the baseline must be the trainer the task names (brax 0.14.2, playground 0.2.0) on the
# last JAX that still has device_put_replicated. The remaining pins freeze the set pip resolved
# and the baseline was checked with (flax 0.12.6 is the newest flax pip accepts with JAX 0.9.2),
# so a later release of a dependency cannot change or break the baseline.
pins=(
  "jax[cpu]==0.9.2" "jaxlib==0.9.2"
  "brax==0.14.2" "playground==0.2.0"
  "flax==0.12.6" "optax==0.2.8" "orbax-checkpoint==0.12.8"
  "mujoco==4.0.0" "mujoco-mjx==3.17.0"
)
if "$venv/bin/python" - "${pins[@]}" <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    name = name.split("[")[0]
    if version(name) != want:
        sys.exit(1)
import jax, brax.training.agents.sac.train, mujoco_playground  # noqa: E401,F401
if jax.__version__ != "0.9.2":
    sys.exit(1)
PY
  echo "benchmarks/.venv-sac already set up: $("$venv/bin/python" -c 'import jax, brax; print("jax", jax.__version__, "brax", brax.__version__)')"
  exit 0
fi
# (grep drops pip's noise about local index folders that are absent on some machines)
"$venv/bin/python" -m pip install --quiet --upgrade pip 2> >(grep -v "is ignored: it is neither" >&2)
"$venv/bin/python" -m pip install --quiet "${pins[@]}" 2> >(grep -v "is ignored: it is neither" >&2)
"$venv/bin/python" -c 'import jax, brax, mujoco_playground; from brax.training.agents.sac import train; print("benchmarks/.venv-sac ready: jax", jax.__version__, "brax", brax.__version__)'
