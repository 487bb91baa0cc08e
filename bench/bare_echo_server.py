"""The floor for Python gRPC on this machine: a grpc.aio server (uvloop) whose ModelInfer only
echoes its first input back. No validation, no queue, no model. bench/serving_core.py compares
Ferry's `echo` model against it. It answers ServerMetadata, ModelMetadata, ModelConfig and
ModelStatistics (a request count) as well, which perf_analyzer and bench/front_end_cost.py need."""

from __future__ import annotations

import argparse

import grpc

from ferry.proto import grpc_service_pb2 as pb
from ferry.proto import grpc_service_pb2_grpc as pb_grpc


class Echo(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.answered = 0

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        self.answered += 1
        response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        tensor = response.outputs.add(name="y", datatype="FP32")
        tensor.shape.extend(request.inputs[0].shape)
        response.raw_output_contents.append(request.raw_input_contents[0])
        return response

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        meta = pb.ModelMetadataResponse(name=request.name, platform="bare")
        meta.inputs.add(name="x", datatype="FP32", shape=[-1, -1])
        meta.outputs.add(name="y", datatype="FP32", shape=[-1, -1])
        return meta

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        response = pb.ModelConfigResponse()
        response.config.name = request.name
        response.config.max_batch_size = 1024
        return response


    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="bare", version="0")

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        response = pb.ModelStatisticsResponse()
        stats = response.model_stats.add(name=request.name, version="1")
        stats.inference_count = self.answered
        stats.inference_stats.success.count = self.answered
        return response


async def serve(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Echo(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"serving on 127.0.0.1:{bound},", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    import uvloop

    uvloop.run(serve(parser.parse_args().port))
