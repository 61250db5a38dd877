# syntax=docker/dockerfile:1
# Two images from one file:
#   docker build --target operator -t quantjob-operator .
#   docker build --target worker   -t quantjob-worker .                      # CPU (tests, small models)
#   docker build --target worker   --build-arg BASE=<cann+torch_npu image> \
#                --build-arg TORCH_SPEC=none -t quantjob-worker:npu .          # Ascend: torch/torch_npu come with BASE
#   docker build --target worker   --build-arg BASE=pytorch/pytorch:<tag>-cuda<ver>-cudnn9-runtime \
#                --build-arg TORCH_SPEC=none -t quantjob-worker:cuda .
ARG BASE=python:3.11-slim
ARG PY_BASE=python:3.11-slim

FROM ${PY_BASE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m pip wheel --no-deps --wheel-dir /wheels .

# --- operator: pydantic + kopf + kubernetes, never torch --------------------------------------
FROM ${PY_BASE} AS operator
COPY --from=wheel /wheels /wheels
RUN python -m pip install --no-cache-dir "$(ls /wheels/quantjob-*.whl)[operator]" && rm -rf /wheels
RUN useradd --uid 10001 --create-home quantjob
USER 10001
ENTRYPOINT ["quantjob", "operator"]

# --- worker: torch (+ torch_npu on Ascend bases), transformers, safetensors --------------------
FROM ${BASE} AS worker
# "torch==2.13.0" for the CPU image; "none" when BASE already ships torch (CANN/torch_npu, CUDA).
ARG TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
COPY --from=wheel /wheels /wheels
RUN if [ "${TORCH_SPEC}" != "none" ]; then python -m pip install --no-cache-dir ${TORCH_SPEC}; fi \
 && python -m pip install --no-cache-dir "$(ls /wheels/quantjob-*.whl)[worker,compressed-tensors]" && rm -rf /wheels
RUN useradd --uid 10001 --create-home quantjob || true
# The Job mounts a writable emptyDir at /tmp (root filesystem is read-only).
ENV HOME=/tmp PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
USER 10001
ENTRYPOINT ["quantjob"]
CMD ["quantize", "--help"]
