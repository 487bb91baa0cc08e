# Production image: NVIDIA's TensorRT container brings CUDA, TensorRT and its Python bindings;
# Ferry installs on top with its pinned dependencies. Without a GPU the same image serves ONNX
# models on ONNX Runtime (CPU).
FROM nvcr.io/nvidia/tensorrt:25.10-py3

WORKDIR /opt/ferry
COPY pyproject.toml README.md ./
COPY proto proto
COPY server server
COPY scheduler scheduler
COPY engines engines
COPY common common
COPY loadtest loadtest
COPY telemetry telemetry
COPY ferry ferry
RUN python3 -m pip install --no-cache-dir ".[gpu]" && ferry example-repo /models

# 8001: gRPC; 8002: Prometheus /metrics
EXPOSE 8001 8002
# The model repository is a volume in production: docker run -v /path/to/repo:/models ...
ENTRYPOINT ["ferry", "serve", "--model-repository", "/models", "--host", "0.0.0.0"]
