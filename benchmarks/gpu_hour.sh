#!/usr/bin/env bash
# The first GPU hour on a lent machine that reaches no package index (benchmarks/gpu_hour.py).
#
#   bash benchmarks/gpu_hour.sh wheels        # here, where pip reaches an index: the wheels the lent
#                                             # machine's image lacks -> .whl/ (~26 MB; git-ignored)
#   bash benchmarks/gpu_hour.sh run [ARGS]    # there (carry .whl): install them into /tmp/site, then
#                                             # gpu_hour.py --out $OUT/gpu_hour.json ARGS, log beside it
#
# The image (KINDS.md of the device tool, 2026-11) holds JAX 0.11.2 with its CUDA 13 plugin (inside
# pyproject's range), flax, optax, chex, orbax, scipy, pandas, matplotlib, etils, lxml, absl; it lacks
# MuJoCo, MJX, Playground, brax and a few small pure-Python needs of theirs. warp-lang (Playground's
# declared need, ~390 MB) is left out: MJX imports it only if present. Versions: those of the tested venv.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(mujoco==4.0.1 mujoco-core==4.0.1 mujoco-mjx==3.17.0 playground==0.2.0 brax==0.14.2 jaxopt==0.8.5
        ml_collections==1.1.0 trimesh==5.2.0 glfw==2.11.0 tensorboardX==2.6.5 mediapy==1.2.7)
PY=${PYTHON:-python3}

case "${1:-}" in
  wheels)
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
    du -sh .whl
    ;;
  run)
    shift
    out=${OUT:-.}
    if compgen -G ".whl/*.whl" >/dev/null; then
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
      export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    export PYTHONUNBUFFERED=1
    "$PY" benchmarks/gpu_hour.py --out "$out/gpu_hour.json" "$@" 2>&1 | tee "$out/gpu_hour.log"
    ;;
  *)
    echo "usage: bash benchmarks/gpu_hour.sh wheels | run [gpu_hour.py arguments]" >&2
    exit 2
    ;;
esac
