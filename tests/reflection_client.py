#!/usr/bin/env python3
"""A gRPC client that knows no .proto file: it discovers onair's services through
server reflection, then calls StreamRegistry.ListStreams (and CreateStream) with
messages built from the reflected descriptors. Usage: reflection_client.py HOST:PORT [--list]
Prints the service list and the ListStreams answer as JSON; exits non-zero on failure.
With --list it only prints the services the port lists (one line, space-separated)."""
import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase


def main(target: str, list_only: bool) -> int:
    channel = grpc.insecure_channel(target)
    grpc.channel_ready_future(channel).result(timeout=10)
    db = ProtoReflectionDescriptorDatabase(channel)
    services = sorted(db.get_services())
    print("services:", " ".join(services))
    if list_only:
        return 0
    if "onair.v1.StreamRegistry" not in services:
        print("onair.v1.StreamRegistry is not listed", file=sys.stderr)
        return 1
    pool = descriptor_pool.DescriptorPool(db)
    svc = pool.FindServiceByName("onair.v1.StreamRegistry")

    def call(method_name: str, body: dict) -> dict:
        m = svc.FindMethodByName(method_name)
        req_cls = message_factory.GetMessageClass(m.input_type)
        resp_cls = message_factory.GetMessageClass(m.output_type)
        rpc = channel.unary_unary(
            f"/{svc.full_name}/{m.name}",
            request_serializer=lambda msg: msg.SerializeToString(),
            response_deserializer=resp_cls.FromString,
        )
        resp = rpc(json_format.ParseDict(body, req_cls()), timeout=10)
        return json_format.MessageToDict(resp)

    created = call("CreateStream", {"title": "via reflection", "broadcaster": "py-peer", "node": "py"})
    listed = call("ListStreams", {"state": "STREAM_STATE_LIVE", "pageSize": 10})
    print(json.dumps(listed))
    ids = [s["id"] for s in listed.get("streams", [])]
    if created["id"] not in ids:
        print(f"created stream {created['id']} missing from ListStreams", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], "--list" in sys.argv[2:]))
