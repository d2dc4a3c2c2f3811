"""Polyglot scenario, with bearer tokens: a Python client generated from
segd's proto by grpcio-tools creates a workspace (admin token), imports
contacts and defines a live segment (write token), streams the segment and
watches it change (read token) while a write adds a member.

usage: scenario.py <host:port> <workspace> <admin token> <write token> <read token>
Prints "ok <members streamed>"; exits non-zero on any mismatch.
"""

import sys
import tempfile
import threading
import time

from stream_members import generate


def main():
    addr, workspace, admin, write, read = sys.argv[1:6]
    with tempfile.TemporaryDirectory() as out:
        generate(out)
        import grpc
        from segd.v1 import contact_pb2 as c
        from segd.v1 import contact_service_pb2 as cs
        from segd.v1 import contact_service_pb2_grpc as csg
        from segd.v1 import query_service_pb2 as q
        from segd.v1 import query_service_pb2_grpc as qg
        from segd.v1 import rule_pb2 as r
        from segd.v1 import segment_pb2 as s
        from segd.v1 import segment_service_pb2 as ss
        from segd.v1 import segment_service_pb2_grpc as ssg
        from segd.v1 import workspace_service_pb2 as w
        from segd.v1 import workspace_service_pb2_grpc as wg

        channel = grpc.insecure_channel(addr)

        def auth(token):
            return [("authorization", "Bearer " + token)]

        def step(what):
            print(what, file=sys.stderr, flush=True)

        # A read token may not write: the server says so.
        try:
            csg.ContactServiceStub(channel).CreateContact(
                cs.CreateContactRequest(contact=c.Contact(email="x@example.com")), metadata=auth(read))
            sys.exit("a read token wrote a contact")
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.PERMISSION_DENIED:
                sys.exit(f"expected PERMISSION_DENIED, got {e.code()}")

        step("create the workspace")
        wg.WorkspaceServiceStub(channel).CreateWorkspace(
            w.CreateWorkspaceRequest(name=workspace), metadata=auth(admin))
        contacts = csg.ContactServiceStub(channel)
        batch = [c.Contact(external_id=f"py-{i}", tags=["vip"] if i < 3 else []) for i in range(5)]
        acks = list(contacts.BatchUpsertContacts(
            iter([cs.BatchUpsertContactsRequest(contacts=batch)]), metadata=auth(write)))
        if acks[-1].created != 5:
            sys.exit(f"import: {acks}")

        step("define the segment")
        segments = ssg.SegmentServiceStub(channel)
        seg = segments.CreateSegment(ss.CreateSegmentRequest(segment=s.Segment(
            name="vips", definition=r.Definition(filter="tags:vip"), live=True)), metadata=auth(write)).segment
        ref = r.SegmentReference(id=seg.id)
        for _ in range(300):
            got = segments.GetSegment(ss.GetSegmentRequest(segment=ref), metadata=auth(read)).segment
            if got.live_status.built:
                break
            time.sleep(0.1)
        else:
            sys.exit("the live segment was not built")

        step("watch it")
        query = qg.QueryServiceStub(channel)
        watch = query.WatchMembership(
            q.WatchMembershipRequest(segment_ids=[seg.id], snapshot_first=True), metadata=auth(read), timeout=60)
        snapshot = set()
        for m in watch:
            snapshot.update(m.snapshot.contact_ids)
            if m.snapshot_complete:
                break
        if len(snapshot) != 3:
            sys.exit(f"snapshot: {sorted(snapshot)}")

        def add_member():
            time.sleep(0.2)
            # The acknowledgements must be read: a response stream left
            # unread is cancelled, and the import with it.
            list(contacts.BatchUpsertContacts(iter([cs.BatchUpsertContactsRequest(
                contacts=[c.Contact(external_id="py-3", tags=["vip"])])]), metadata=auth(write)))

        step("add a member")
        threading.Thread(target=add_member).start()
        entered = None
        for m in watch:
            for ch in m.changes:
                if ch.entered and ch.segment_id == seg.id and ch.contact_id not in snapshot:
                    entered = ch.contact_id
            if entered:
                break
        watch.cancel()

        step("stream it")
        ids = []
        for m in query.StreamMembers(q.StreamMembersRequest(
                selector=q.SegmentSelector(segment_id=seg.id)), metadata=auth(read)):
            ids.extend(m.ids)
        if sorted(ids) != sorted(snapshot | {entered}):
            sys.exit(f"streamed {sorted(ids)}, expected {sorted(snapshot | {entered})}")
        print(f"ok {len(ids)}")


if __name__ == "__main__":
    main()
