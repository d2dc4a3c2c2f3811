"""Polyglot check: stream a segment with a Python client generated from
segd's proto by grpcio-tools.

usage: stream_members.py <host:port> <workspace> <segment name> <expected count>
Prints the number of ids received; exits non-zero on any mismatch.
"""

import os
import sys
import tempfile

from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def generate(out):
    proto_dir = os.path.join(ROOT, "proto")
    wkt = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    files = sorted(
        os.path.join("segd", "v1", f)
        for f in os.listdir(os.path.join(proto_dir, "segd", "v1"))
        if f.endswith(".proto")
    )
    args = ["protoc", f"-I{proto_dir}", f"-I{wkt}", f"--python_out={out}", f"--grpc_python_out={out}", *files]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out)


def main():
    addr, workspace, segment, expected = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    with tempfile.TemporaryDirectory() as out:
        generate(out)
        import grpc
        from segd.v1 import query_service_pb2 as q
        from segd.v1 import query_service_pb2_grpc as qg

        channel = grpc.insecure_channel(addr, options=[("grpc.max_receive_message_length", 8 << 20)])
        stub = qg.QueryServiceStub(channel)
        request = q.StreamMembersRequest(selector=q.SegmentSelector(segment_name=segment))
        ids, last, summary = [], None, None
        for message in stub.StreamMembers(request, metadata=[("x-segd-workspace", workspace)]):
            for i in message.ids:
                if last is not None and i <= last:
                    sys.exit(f"ids out of order: {i} after {last}")
                last = i
                ids.append(i)
            if message.HasField("summary"):
                summary = message.summary
        if summary is None:
            sys.exit("no summary message")
        if len(ids) != expected or summary.total_rows != expected:
            sys.exit(f"expected {expected} ids, got {len(ids)} (summary says {summary.total_rows})")
        count = stub.CountMembers(
            q.CountMembersRequest(selector=q.SegmentSelector(segment_name=segment)),
            metadata=[("x-segd-workspace", workspace)],
        ).count
        if count != expected:
            sys.exit(f"CountMembers says {count}")
        print(len(ids))


if __name__ == "__main__":
    main()
