# transferlab: the pipeline in a container, installed by the same script as `make run`.
#
#   docker build -t transferlab .                                   # CPU image
#   docker run --rm -v transferlab-runs:/home/transferlab/app/mlruns transferlab   # dvc repro
#   docker run --rm -it transferlab dvc exp run -S finetune.lr=0.003
#
# GPU variant: CUDA wheels of torch bring their own CUDA runtime, so the same slim base serves once
# the torch wheel comes from a CUDA index; run it with the NVIDIA Container Toolkit:
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t transferlab:cuda .
#   docker run --rm --gpus all transferlab:cuda dvc exp run -S trainer=gpu
# BASE_IMAGE swaps the base (e.g. an nvidia/cuda image); it needs apt and a python3.11 interpreter.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# The job's optional groups, as `make run` installs them (hf: the MiniLM model); never dev.
ARG EXTRAS=launchers,hf
ARG UID=1000

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DVC_NO_ANALYTICS=1 \
    MLFLOW_DISABLE_TELEMETRY=true

# git: DVC works inside a git repository; make: the Makefile's targets. Debian's security updates
# move package versions, so they are not pinned here (the Python set is, in pyproject.toml).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates git make \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid "${UID}" --shell /bin/bash transferlab

WORKDIR /home/transferlab/app

# The install layer depends only on what the install script reads.
COPY --chown=transferlab:transferlab pyproject.toml README.md ./
COPY --chown=transferlab:transferlab scripts/install.sh scripts/install.sh
COPY --chown=transferlab:transferlab src/ src/
# As root: the Debian data packages need it. The venv stays root-owned, read-only for the user.
RUN EXTRAS="${EXTRAS}" TORCH_INDEX_URL="${TORCH_INDEX_URL}" bash scripts/install.sh \
    && rm -rf /var/lib/apt/lists/* /root/.cache

COPY --chown=transferlab:transferlab . .

USER ${UID}
ENV PATH=/home/transferlab/app/.venv/bin:${PATH}
# DVC needs a git repository (and `dvc exp run` an identity): the image's project is one commit.
RUN git config --global user.name "transferlab" \
    && git config --global user.email "transferlab@localhost" \
    && git init -q \
    && git add -A \
    && git commit -qm "transferlab image"

CMD ["dvc", "repro"]
