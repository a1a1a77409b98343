"""Generates (when missing or stale) and imports the Python stubs of fanout's contracts.

The stubs are generated with grpcio-tools from the .proto files under proto/proto
(``-I proto/proto``) into ``fanout_py/_generated/`` (git-ignored), so that::

    from fanout_py import stubs            # generates if needed, fixes sys.path
    from fanout.v1 import leaf_pb2, leaf_pb2_grpc

works. They are regenerated when the folder is missing or older than any of the
.proto files. Several processes may start at once (tests start many servers): the
generation is serialised with a lock file and the new folder swapped in by rename.

The gRPC health protocol (grpc.health.v1) comes prebuilt with grpcio-health-checking
(``grpc_health.v1.health_pb2``); that wheel ships no health.proto, so it is not
generated here.

Set FANOUT_PROTO_ROOT to use another proto/proto folder. Set FANOUT_STUBS_PREBUILT=1
where the stubs were generated beforehand and must be used as they are (the Python
image: a read-only root filesystem, no grpcio-tools, no .proto files): nothing is
checked or generated, only imported.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
GENERATED_DIR = PACKAGE_DIR / "_generated"
PROTO_ROOT = Path(
    os.environ.get("FANOUT_PROTO_ROOT", PACKAGE_DIR.parents[1] / "proto" / "proto")
).resolve()

# Relative to PROTO_ROOT; google/protobuf/any.proto comes from grpcio-tools' include
# folder and its module from the protobuf package.
PROTOS = (
    "fanout/v1/common.proto",
    "fanout/v1/leaf.proto",
    "fanout/v1/merger.proto",
    "fanout/v1/root.proto",
    "fanout/search/v1/search.proto",
    "fanout/knn/v1/knn.proto",
)
_STAMP = ".stamp"


def _proto_paths() -> list[Path]:
    return [PROTO_ROOT / name for name in PROTOS if (PROTO_ROOT / name).exists()]


def is_stale() -> bool:
    """True when the stubs are missing or older than a .proto file."""
    stamp = GENERATED_DIR / _STAMP
    if not stamp.exists():
        return True
    try:
        recorded = stamp.read_text().split("\n")
    except OSError:
        return True
    protos = _proto_paths()
    if recorded != [str(path) for path in protos]:
        return True
    built = stamp.stat().st_mtime_ns
    return any(path.stat().st_mtime_ns > built for path in protos)


def generate() -> None:
    """Runs grpc_tools.protoc over PROTOS into a fresh folder, then swaps it in."""
    from grpc_tools import protoc
    import grpc_tools

    protos = _proto_paths()
    if not protos:
        raise RuntimeError(f"no .proto files found under {PROTO_ROOT}")
    include = Path(grpc_tools.__file__).resolve().parent / "_proto"
    staging = Path(tempfile.mkdtemp(prefix="_generated.", dir=PACKAGE_DIR))
    try:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={staging}",
            f"--pyi_out={staging}",
            f"--grpc_python_out={staging}",
            *[str(path.relative_to(PROTO_ROOT)) for path in protos],
        ]
        code = protoc.main(args)
        if code != 0:
            raise RuntimeError(f"grpc_tools.protoc failed with exit code {code}: {args}")
        (staging / _STAMP).write_text("\n".join(str(path) for path in protos))
        old = None
        if GENERATED_DIR.exists():
            old = Path(tempfile.mkdtemp(prefix="_generated.old.", dir=PACKAGE_DIR))
            os.replace(GENERATED_DIR, old / "g")
        os.replace(staging, GENERATED_DIR)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def prebuilt() -> bool:
    """True when FANOUT_STUBS_PREBUILT=1: the stubs are used as they are."""
    return os.environ.get("FANOUT_STUBS_PREBUILT") == "1"


def ensure() -> Path:
    """Makes sure the stubs exist and are fresh, and that they are importable."""
    if prebuilt():
        if not (GENERATED_DIR / "fanout").is_dir():
            raise RuntimeError(
                f"FANOUT_STUBS_PREBUILT=1 but there are no stubs in {GENERATED_DIR}"
            )
    elif is_stale():
        lock_path = PACKAGE_DIR / "_generated.lock"
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if is_stale():
                    generate()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    path = str(GENERATED_DIR)
    if path not in sys.path:
        sys.path.insert(0, path)
    return GENERATED_DIR


ensure()

# The modules everybody needs, importable as `from fanout_py.stubs import leaf_pb2`.
from fanout.v1 import common_pb2, leaf_pb2, leaf_pb2_grpc  # noqa: E402
from fanout.v1 import merger_pb2, merger_pb2_grpc, root_pb2, root_pb2_grpc  # noqa: E402
from fanout.search.v1 import search_pb2, search_pb2_grpc  # noqa: E402
from fanout.knn.v1 import knn_pb2  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from google.protobuf import any_pb2  # noqa: E402

__all__ = [
    "any_pb2", "common_pb2", "health_pb2", "health_pb2_grpc", "knn_pb2", "leaf_pb2",
    "leaf_pb2_grpc", "merger_pb2", "merger_pb2_grpc", "root_pb2", "root_pb2_grpc",
    "search_pb2", "search_pb2_grpc", "ensure", "pack", "type_url",
]

TYPE_URL_PREFIX = "type.googleapis.com/"


def type_url(message_class) -> str:
    """The type URL fanout uses for a message class (type.googleapis.com/<full name>)."""
    return TYPE_URL_PREFIX + message_class.DESCRIPTOR.full_name


def pack(message) -> any_pb2.Any:
    """Packs a message into an Any with fanout's type URL."""
    return any_pb2.Any(type_url=type_url(type(message)), value=message.SerializeToString())


if __name__ == "__main__":
    if "--force" in sys.argv:
        generate()
    print(ensure())
