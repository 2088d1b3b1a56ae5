"""Compiles the gateway's test contract (`protos/medsched/gwtest/v1/gwtest.proto`) with protoc."""

from __future__ import annotations

from pathlib import Path

import google.api.annotations_pb2 as annotations_pb2  # type: ignore[import-untyped, unused-ignore]
import grpc_tools
from grpc_tools import protoc

PROTO_ROOT = Path(__file__).parent / "protos"
TEST_PROTO = "medsched/gwtest/v1/gwtest.proto"
VISIT_SERVICE = "medsched.gwtest.v1.VisitService"


def compile_descriptor_set(out_dir: Path) -> bytes:
    """The FileDescriptorSet (with imports and source info) of the test contract."""
    googleapis_root = Path(annotations_pb2.__file__).parent.parent.parent
    well_known_root = Path(grpc_tools.__file__).parent / "_proto"
    target = out_dir / "gwtest.binpb"
    status = protoc.main(
        [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{googleapis_root}",
            f"-I{well_known_root}",
            f"--descriptor_set_out={target}",
            "--include_imports",
            "--include_source_info",
            TEST_PROTO,
        ]
    )
    if status != 0:
        raise RuntimeError(f"protoc failed on {TEST_PROTO} with status {status}")
    return target.read_bytes()
