"""Generate the Python gRPC code for every contract under protos/ (run: python tools/gen_protos.py).

Output goes to cdp/<package path>/ (e.g. cdp/ingest/v1/ingest_service_pb2.py), beside the hand-written
kernel packages. Generated files are never committed; this script is idempotent and clears stale output
first, but only inside the generated package directories.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
# The only top-level cdp/ packages this script owns; every other cdp/ path is hand-written.
GENERATED_PACKAGES = ("common", "ingest", "identity", "segments", "activation", "governance", "ops")
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Return every .proto file under `proto_root`, sorted, relative to it."""
    return sorted(path.relative_to(proto_root) for path in proto_root.rglob("*.proto"))


def output_dirs(protos: Sequence[Path], out_root: Path = ROOT) -> list[Path]:
    """Return the package directories the generated code for `protos` lands in."""
    dirs = {out_root / proto.parent for proto in protos}
    for proto in protos:
        check_owned(proto)
    return sorted(dirs)


def check_owned(proto: Path) -> None:
    """Refuse a proto whose output would land outside the generated packages."""
    parts = proto.parts
    if len(parts) < 3 or parts[0] != "cdp" or parts[1] not in GENERATED_PACKAGES:
        raise SystemExit(f"{proto}: contracts must live in protos/cdp/<{'|'.join(GENERATED_PACKAGES)}>/...")


def clean(out_root: Path = ROOT) -> None:
    """Remove previously generated files from the generated packages only."""
    for package in GENERATED_PACKAGES:
        package_dir = out_root / "cdp" / package
        if package_dir.is_dir():
            # The whole directory is ours (it is git-ignored), so stale packages go too.
            shutil.rmtree(package_dir)


def add_init_files(dirs: Sequence[Path], out_root: Path = ROOT) -> None:
    """Create an empty __init__.py in each generated directory and its parents below cdp/."""
    stop = out_root / "cdp"
    for directory in dirs:
        current = directory
        while current != stop and stop in current.parents:
            (current / "__init__.py").touch()
            current = current.parent


def run_protoc(protos: Sequence[Path], out_root: Path = ROOT, proto_root: Path = PROTO_ROOT) -> None:
    """Run grpc_tools.protoc once over all `protos`."""
    bundled = resources.files("grpc_tools") / "_proto"
    # mypy-protobuf's plugin types the generated stubs and servicers, which grpc_tools leaves untyped.
    typed_grpc_plugin = Path(sys.executable).parent / "protoc-gen-mypy_grpc"
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{bundled}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--plugin=protoc-gen-mypy_grpc={typed_grpc_plugin}",
        f"--mypy_grpc_out={out_root}",
        *(str(proto_root / proto) for proto in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed (see the messages above)")


def generate(out_root: Path = ROOT, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Regenerate everything from scratch; return the generated package directories."""
    protos = proto_files(proto_root)
    if not protos:
        raise SystemExit(f"no .proto files under {proto_root}")
    dirs = output_dirs(protos, out_root)
    clean(out_root)
    for directory in dirs:
        directory.mkdir(parents=True, exist_ok=True)
    run_protoc(protos, out_root, proto_root)
    add_init_files(dirs, out_root)
    return dirs


def main() -> int:
    """Entry point: generate and print a one-line summary."""
    dirs = generate()
    count = sum(1 for d in dirs for f in d.iterdir() if f.name.endswith(GENERATED_SUFFIXES))
    print(f"generated {count} files in {len(dirs)} packages from {PROTO_ROOT.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
