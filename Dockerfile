# syntax=docker/dockerfile:1
# Ferry's container images, one file, each picked with --target:
#   gpu       NVIDIA's TensorRT image + Ferry: TensorRT plans and ONNX Runtime (also `release`,
#             the default target)
#   gpu-demo  gpu with the example model repository at /models
#   cpu       a slim Debian Python image + Ferry: ONNX models on ONNX Runtime's CPU provider
#   cpu-demo  cpu with the example model repository at /models
#     docker build --target cpu -t ferry:cpu .
#     docker run -p 8001:8001 -p 8002:8002 -v /path/to/repository:/models ferry:cpu
# Each build stage installs with scripts/setup.sh, the README's own install step, into
# /opt/ferry; the image stage copies that environment alone and runs as an unprivileged user.
# Production images hold no models: the repository is a volume (deploy/ mounts one at /models).

ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm
ARG TENSORRT_IMAGE=nvcr.io/nvidia/tensorrt:25.10-py3

# ---- the sources both images install: what the wheel needs, and the install script ---------
FROM scratch AS source
WORKDIR /src
COPY pyproject.toml README.md ./
COPY scripts/setup.sh scripts/setup.sh
COPY ferry ferry
COPY server server
COPY scheduler scheduler
COPY engines engines
COPY common common
COPY proto proto
COPY loadtest loadtest
COPY telemetry telemetry
COPY builder builder

# ---- CPU ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=source /src /src
WORKDIR /src
RUN FERRY_VENV=/opt/ferry FERRY_INSTALL=package bash scripts/setup.sh

FROM ${PYTHON_IMAGE} AS cpu
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin ferry
COPY --from=cpu-build /opt/ferry /opt/ferry
ENV PATH=/opt/ferry/bin:$PATH PYTHONUNBUFFERED=1
USER 10001
# 8001: gRPC (KServe v2 / Triton); 8002: Prometheus /metrics and HTTP health probes
EXPOSE 8001 8002
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 CMD ["ferry", "health"]
ENTRYPOINT ["ferry", "serve", "--host", "0.0.0.0"]
CMD ["--model-repository", "/models"]

FROM cpu AS cpu-demo
USER 0
RUN ferry example-repo /models
USER 10001

# ---- GPU ----------------------------------------------------------------------------------
FROM ${TENSORRT_IMAGE} AS gpu-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=source /src /src
WORKDIR /src
# The base image's TensorRT bindings live in its system Python: the environment sees them.
RUN FERRY_VENV=/opt/ferry FERRY_INSTALL=package FERRY_VENV_OPTIONS=--system-site-packages \
    bash scripts/setup.sh gpu

FROM ${TENSORRT_IMAGE} AS gpu
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin ferry
COPY --from=gpu-build /opt/ferry /opt/ferry
ENV PATH=/opt/ferry/bin:$PATH PYTHONUNBUFFERED=1
USER 10001
EXPOSE 8001 8002
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 CMD ["ferry", "health"]
ENTRYPOINT ["ferry", "serve", "--host", "0.0.0.0"]
CMD ["--model-repository", "/models"]

FROM gpu AS gpu-demo
USER 0
RUN ferry example-repo /models
USER 10001

# Without --target, docker builds the last stage: the GPU image, without models.
FROM gpu AS release
