# syntax=docker/dockerfile:1
# Two images from one file (the CI stage .ci/images builds and runs both; docs/images.md):
#   docker build --target operator -t quantjob-operator .
#   docker build --target worker   -t quantjob-worker .                      # CPU (tests, small models)
#   docker build --target worker   --build-arg BASE=<cann+torch_npu image> \
#                --build-arg TORCH_SPEC=none -t quantjob-worker:npu .          # Ascend: torch/torch_npu come with BASE
#   docker build --target worker   --build-arg BASE=pytorch/pytorch:<tag>-cuda<ver>-cudnn9-runtime \
#                --build-arg TORCH_SPEC=none -t quantjob-worker:cuda .
#
# pip reads its sources from the build's environment, never from this file: pass
# --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu for the CPU torch wheel
# (without it pip may take the much larger CUDA build), or --build-arg PIP_CONFIG_FILE=<path>
# together with a volume that holds that file and the local indexes it names (what .ci/images does).
#
# BASE and PY_BASE need python3 (3.10 or newer) with the venv module and useradd; any Debian or
# Ubuntu python image has them. Everything is installed into the venv /opt/quantjob, made with
# --system-site-packages so that a torch (and torch_npu) shipped by BASE is used as is.
ARG BASE=python:3.11-slim-bookworm
ARG PY_BASE=python:3.11-slim-bookworm

FROM ${PY_BASE} AS wheel
ARG PIP_CONFIG_FILE
ARG PIP_EXTRA_INDEX_URL
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python3 -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- operator: pydantic + kopf + kubernetes, never torch --------------------------------------
FROM ${PY_BASE} AS operator
ARG PIP_CONFIG_FILE
ARG PIP_EXTRA_INDEX_URL
# The uid the chart runs the operator as (charts/quantjob/values.yaml: operator.securityContext).
ARG QUANTJOB_UID=10001
COPY --from=wheel /wheels /wheels
RUN python3 -m venv /opt/quantjob \
 && /opt/quantjob/bin/python -m pip install --no-cache-dir "$(ls /wheels/quantjob-*.whl)[operator]" \
 && rm -rf /wheels \
 && useradd --uid "${QUANTJOB_UID}" --user-group --home-dir /tmp --no-create-home --shell /usr/sbin/nologin quantjob
ENV PATH=/opt/quantjob/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
WORKDIR /tmp
USER ${QUANTJOB_UID}:${QUANTJOB_UID}
ENTRYPOINT ["quantjob", "operator"]

# --- worker: torch (+ torch_npu on Ascend bases), transformers, safetensors --------------------
FROM ${BASE} AS worker
ARG PIP_CONFIG_FILE
ARG PIP_EXTRA_INDEX_URL
# "torch==2.13.0" for the CPU image; "none" when BASE already ships torch (CANN/torch_npu, CUDA).
ARG TORCH_SPEC=torch==2.13.0
# The uid of the worker pods (quantjob.operator.builders.WORKER_UID): files on the output volume
# belong to it.
ARG QUANTJOB_UID=10001
COPY --from=wheel /wheels /wheels
RUN python3 -m venv --system-site-packages /opt/quantjob \
 && if [ "${TORCH_SPEC}" != "none" ]; then /opt/quantjob/bin/python -m pip install --no-cache-dir ${TORCH_SPEC}; fi \
 && /opt/quantjob/bin/python -m pip install --no-cache-dir "$(ls /wheels/quantjob-*.whl)[worker,compressed-tensors]" \
 && rm -rf /wheels \
 && (getent passwd "${QUANTJOB_UID}" >/dev/null \
     || useradd --uid "${QUANTJOB_UID}" --user-group --home-dir /tmp --no-create-home --shell /usr/sbin/nologin quantjob)
COPY docker/worker-entrypoint.sh /usr/local/bin/quantjob-worker-entrypoint
# The pods mount a writable emptyDir at /tmp and keep the root filesystem read-only: everything
# that writes (home, caches, scratch) points there.
ENV PATH=/opt/quantjob/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp TMPDIR=/tmp PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORKDIR /tmp
USER ${QUANTJOB_UID}:${QUANTJOB_UID}
# `quantjob "$@"` after CANN's environment: the pods pass `args`, never `command`. The script runs
# under `/bin/bash -p` (its #! line), so no variable of the pod makes it run other code.
ENTRYPOINT ["/usr/local/bin/quantjob-worker-entrypoint"]
CMD ["quantize", "--help"]
