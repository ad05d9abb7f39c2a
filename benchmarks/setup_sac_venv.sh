#!/usr/bin/env bash
# Create benchmarks/.venv-sac: one environment in which benchmarks/bench_vs_sac.py runs both
# trainers, pql_jax and brax's SAC, in one process on the same JAX.
#
# Why JAX 0.9.2: brax 0.14.2's SAC trainer calls jax.device_put_replicated, which JAX 0.10
# removed, so the baseline cannot run on the project venv's JAX (0.10.2). 0.9.2 is also the
# lowest JAX this project supports and CI tests (.ci/constraints-lowest.txt), so this project is
# installed here too (editable, from this checkout), resolved against the same constraints as
# CI's lowest venv. Idempotent: re-running only installs what is missing or mismatched.
# Usage: bash benchmarks/setup_sac_venv.sh   [PYTHON=/path/to/python3.11]
# Then:  benchmarks/.venv-sac/bin/python benchmarks/bench_vs_sac.py ...
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
venv="$here/.venv-sac"
python="${PYTHON:-python3}"
ci_constraints="$repo/.ci/constraints-lowest.txt"

# Pins: the baseline must be the trainer the task names (brax 0.14.2, playground 0.2.0) on the
# last JAX that still has device_put_replicated. The remaining pins freeze the set pip resolved
# and the baseline was checked with (flax 0.12.6 is the newest flax pip accepts with JAX 0.9.2;
# CI's lowest venv resolves to the same versions), so a later release of a dependency cannot
# change or break the baseline.
pins=(
  "jax[cpu]==0.9.2" "jaxlib==0.9.2"
  "brax==0.14.2" "playground==0.2.0"
  "flax==0.12.6" "optax==0.2.8" "orbax-checkpoint==0.12.8"
  "mujoco==4.0.0" "mujoco-mjx==3.17.0"
)
# The pins must agree with CI's lowest constraints (jax, jaxlib): fail loudly if one moved.
for pin in "${pins[@]}"; do
  name="${pin%%==*}"; name="${name%%\[*}"
  ci="$(grep -E "^${name}==" "$ci_constraints" || true)"
  if [ -n "$ci" ] && [ "$ci" != "$name==${pin##*==}" ]; then
    echo "setup_sac_venv: pin $pin disagrees with $ci in .ci/constraints-lowest.txt; update the pins here" >&2
    exit 2
  fi
done

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
if "$venv/bin/python" - "$repo" "${pins[@]}" <<'PY' 2>/dev/null; then
import os, sys
from importlib.metadata import version
repo = os.path.realpath(sys.argv[1])
for pin in sys.argv[2:]:
    name, want = pin.split("==")
    name = name.split("[")[0]
    if version(name) != want:
        sys.exit(1)
import jax, brax.training.agents.sac.train, mujoco_playground, matplotlib  # noqa: E401,F401
import pql_jax
if jax.__version__ != "0.9.2" or not os.path.realpath(pql_jax.__file__).startswith(repo + os.sep):
    sys.exit(1)
PY
  echo "benchmarks/.venv-sac already set up: $("$venv/bin/python" -c 'import jax, brax, pql_jax; print("jax", jax.__version__, "brax", brax.__version__, "pql_jax from", pql_jax.__file__)')"
  exit 0
fi
# pip constraints take no extras: the pins minus "[cpu]", next to CI's own constraints file.
constraints="$venv/sac-pins.txt"
printf '%s\n' "${pins[@]}" | sed 's/\[[^]]*\]//' > "$constraints"
# (grep drops pip's noise about local index folders that are absent on some machines)
"$venv/bin/python" -m pip install --quiet --upgrade pip 2> >(grep -v "is ignored: it is neither" >&2)
"$venv/bin/python" -m pip install --quiet -c "$ci_constraints" -c "$constraints" "${pins[@]}" -e "$repo" \
  2> >(grep -v "is ignored: it is neither" >&2)
"$venv/bin/python" -c 'import jax, brax, mujoco_playground, pql_jax; from brax.training.agents.sac import train; print("benchmarks/.venv-sac ready: jax", jax.__version__, "brax", brax.__version__, "pql_jax from", pql_jax.__file__)'
