"""One acquire and one release against lockd's gRPC API, from Python stubs generated with
grpcio-tools out of proto/lockd/v1/locks.proto: what a DFS team writes in its own language.

Usage: python acquire_release.py GENERATED_DIR HOST:PORT API_KEY
Prints one JSON line describing what happened; exits non-zero on any surprise.
"""

import json
import sys

import grpc
from grpc_status import rpc_status

sys.path.insert(0, sys.argv[1])
from lockd.v1 import locks_pb2, locks_pb2_grpc  # noqa: E402


def main():
    target, key = sys.argv[2], sys.argv[3]
    auth = (("authorization", f"Bearer {key}"),)
    with grpc.insecure_channel(target) as channel:
        locks = locks_pb2_grpc.LocksStub(channel)
        granted = locks.Acquire(
            locks_pb2.AcquireRequest(object="/vol/a/file.txt", owner="python-node", ttl_ms=30000),
            metadata=auth,
            timeout=10,
        )
        lease = granted.locks[0]

        # A second owner is refused with ABORTED, and the details say who holds the lock.
        try:
            locks.Acquire(
                locks_pb2.AcquireRequest(
                    object="/vol/a/file.txt",
                    mode=locks_pb2.LOCK_MODE_SHARED,
                    owner="someone-else",
                    ttl_ms=1000,
                ),
                metadata=auth,
                timeout=10,
            )
            raise SystemExit("a second owner was granted the lock")
        except grpc.RpcError as refused:
            status = rpc_status.from_call(refused)
            detail = locks_pb2.ErrorDetail()
            for any_detail in status.details:
                if any_detail.Is(locks_pb2.ErrorDetail.DESCRIPTOR):
                    any_detail.Unpack(detail)
            locked = {
                "status": refused.code().name,
                "code": detail.code,
                "holder": detail.holder,
                "conflicts": [c.object for c in detail.conflicts],
            }

        # Without the key: UNAUTHENTICATED.
        try:
            locks.Inspect(locks_pb2.InspectRequest(object="/vol/a/file.txt"), timeout=10)
            raise SystemExit("a call without the API key was served")
        except grpc.RpcError as refused:
            anonymous = refused.code().name

        released = locks.Release(
            locks_pb2.ReleaseRequest(object=lease.object, token=lease.token),
            metadata=auth,
            timeout=10,
        )
        print(
            json.dumps(
                {
                    "acquired": {"object": lease.object, "owner": lease.owner, "fence": lease.fence,
                                 "mode": locks_pb2.LockMode.Name(lease.mode),
                                 "token_prefix": lease.token[:4]},
                    "locked": locked,
                    "anonymous": anonymous,
                    "released": {"object": released.object, "fence": released.fence},
                }
            )
        )


if __name__ == "__main__":
    main()
