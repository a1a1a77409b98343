#!/usr/bin/env python3
"""A Python gRPC client against a running fanout root.

Generates Python stubs from proto/proto with grpcio-tools into a temporary
folder, then checks what any gRPC client would rely on:

- grpc.health.v1 Check says SERVING (overall and for fanout.search.v1.Search);
- server reflection lists the services and resolves the Search method's
  request type (with its imports) from the server alone;
- Search answers with hits, the expected document first, full coverage, the
  stored title, also with gzip compression;
- an empty query is INVALID_ARGUMENT.

Usage: client_test.py --addr 127.0.0.1:50051 --proto-dir proto/proto \
           --query "..." --expect-id ID --shards N
Exits 0 when every check passes and prints one line per check.
"""

import argparse
import pathlib
import subprocess
import sys
import tempfile

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

TIMEOUT_SECONDS = 10


def generate_stubs(proto_dir: pathlib.Path, out_dir: pathlib.Path) -> None:
    protos = sorted(str(path) for path in proto_dir.rglob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {proto_dir}")
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    subprocess.run(command, check=True)
    print(f"ok   generated stubs for {len(protos)} proto files")


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def check_health(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ["", "fanout.search.v1.Search"]:
        response = health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_SECONDS
        )
        check(
            response.status == health_pb2.HealthCheckResponse.SERVING,
            f"health of {service!r} is {response.status}, not SERVING",
        )
    print("ok   health: SERVING")


def check_reflection(channel: grpc.Channel) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    for wanted in ["fanout.search.v1.Search", "fanout.v1.Root", "grpc.health.v1.Health"]:
        check(wanted in services, f"reflection does not list {wanted}: {sorted(services)}")
    pool = DescriptorPool(database)
    search = pool.FindServiceByName("fanout.search.v1.Search")
    method = search.FindMethodByName("Search")
    check(
        method.input_type.full_name == "fanout.search.v1.SearchRequest",
        f"Search takes {method.input_type.full_name}",
    )
    coverage = method.output_type.fields_by_name["coverage"].message_type
    check(
        coverage.full_name == "fanout.v1.Coverage",
        f"SearchResponse.coverage is {coverage.full_name}",
    )
    print(f"ok   reflection: {len(services)} services, Search resolved with its imports")


def check_search(channel, search_pb2, search_pb2_grpc, args) -> None:
    stub = search_pb2_grpc.SearchStub(channel)
    for label, compression in [("plain", None), ("gzip", grpc.Compression.Gzip)]:
        response = stub.Search(
            search_pb2.SearchRequest(query=args.query, k=5),
            timeout=TIMEOUT_SECONDS,
            compression=compression,
        )
        check(len(response.hits) > 0, f"no hits for {args.query!r}")
        first = response.hits[0]
        check(
            first.id == args.expect_id,
            f"first hit for {args.query!r} is {first.id}, expected {args.expect_id}",
        )
        check(first.score > 0, f"first hit has score {first.score}")
        check(first.fields.get("title"), f"first hit has no title: {dict(first.fields)}")
        coverage = response.coverage
        check(
            coverage.shards_total == args.shards
            and coverage.shards_answered == args.shards
            and not coverage.partial,
            f"coverage {coverage}",
        )
        print(
            f"ok   search ({label}): "
            f"{len(response.hits)} hits, first {first.id} {first.fields.get('title')!r}"
        )


def check_empty_query(channel, search_pb2, search_pb2_grpc) -> None:
    stub = search_pb2_grpc.SearchStub(channel)
    try:
        stub.Search(search_pb2.SearchRequest(query=""), timeout=TIMEOUT_SECONDS)
    except grpc.RpcError as error:
        check(
            error.code() == grpc.StatusCode.INVALID_ARGUMENT,
            f"empty query gave {error.code()}: {error.details()}",
        )
        print(f"ok   empty query: INVALID_ARGUMENT ({error.details()})")
        return
    raise AssertionError("an empty query was answered")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", required=True)
    parser.add_argument("--proto-dir", required=True, type=pathlib.Path)
    parser.add_argument("--query", required=True)
    parser.add_argument("--expect-id", required=True)
    parser.add_argument("--shards", required=True, type=int)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fanout-python-stubs-") as out:
        generate_stubs(args.proto_dir.resolve(), pathlib.Path(out))
        sys.path.insert(0, out)
        from fanout.search.v1 import search_pb2, search_pb2_grpc

        with grpc.insecure_channel(args.addr) as channel:
            grpc.channel_ready_future(channel).result(timeout=TIMEOUT_SECONDS)
            check_health(channel)
            check_reflection(channel)
            check_search(channel, search_pb2, search_pb2_grpc, args)
            check_empty_query(channel, search_pb2, search_pb2_grpc)
    print("python client: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
