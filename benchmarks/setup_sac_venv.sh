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
# last JAX that still has device_put_replicated. The remaining pins keep pip from pulling
# releases that need a newer JAX (flax/optax/orbax/chex track JAX closely).
pins=(
  "jax[cpu]==0.9.2" "jaxlib==0.9.2"
  "brax==0.14.2" "playground==0.2.0"
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
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "${pins[@]}"
"$venv/bin/python" -c 'import jax, brax, mujoco_playground; from brax.training.agents.sac import train; print("benchmarks/.venv-sac ready: jax", jax.__version__, "brax", brax.__version__)'
