#!/usr/bin/env python3
"""Shrink the hdf5plugin wheel for the GPU host (46 MB -> 6 MB) so the wheels fit the device tool's
64 MiB transfer: keep only the Blosc and Zstd filters that DSEC's events.h5 use.

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 -d .whl hdf5plugin==7.1.0
    python3 scripts/slim_hdf5plugin_wheel.py .whl/hdf5plugin-*.whl
"""
import sys
import zipfile
from pathlib import Path

KEEP = {"libh5blosc.so", "libh5zstd.so"}

for src in map(Path, sys.argv[1:]):
    tmp = src.with_suffix(".slim")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
        kept, record = [], None
        for info in zin.infolist():
            name = info.filename
            if name.startswith("hdf5plugin/plugins/") and name.endswith(".so") and name.rsplit("/", 1)[-1] not in KEEP:
                continue
            if name.endswith(".dist-info/RECORD"):
                record = name
                continue
            zout.writestr(info, zin.read(name))
            kept.append(name)
        rows = [r for r in zin.read(record).decode().splitlines() if r.split(",")[0] in kept]
        zout.writestr(record, "\n".join(rows + [f"{record},,"]) + "\n")
    tmp.replace(src)
    print(f"{src}: {src.stat().st_size / 1e6:.1f} MB")
