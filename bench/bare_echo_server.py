"""The floor for Python gRPC on this machine: a grpc.aio server (uvloop) whose ModelInfer only
echoes its first input back. No validation, no queue, no model. bench/serving_core.py compares
Ferry's `echo` model against it."""

from __future__ import annotations

import argparse

import grpc

from ferry.proto import grpc_service_pb2 as pb
from ferry.proto import grpc_service_pb2_grpc as pb_grpc


class Echo(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
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
