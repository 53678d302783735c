"""Cost of the index checksums (sha256, verified by ``ExampleIndex.load``) on a 1 GB file.

    python benchmarks/bench_index_checksum.py [--gb 1.0] [--repeat 3]

Writes a file of random bytes (a stand-in for ``embeddings.npy``/``index.faiss``: the hash cost depends on
the size only), then times ragicl's ``file_checksum`` (what save records and load verifies) next to
``zlib.crc32`` and BLAKE2b for scale. The file is read from the page cache after the first pass, so the
figures are the hash's CPU cost; a cold disk adds its read time. Results: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from ragicl.index.folder import file_checksum


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def _blake2b(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="file size in GB (10**9 bytes)")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes per hash (best is reported)")
    args = parser.parse_args()
    size = int(args.gb * 1e9)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "blob.bin"
        rng = np.random.default_rng(0)
        with open(path, "wb") as fh:
            fh.writelines(rng.integers(0, 256, min(1 << 26, size - start), dtype=np.uint8).tobytes()
                          for start in range(0, size, 1 << 26))
        print(f"file: {os.path.getsize(path) / 1e9:.2f} GB; cpu count {os.cpu_count()}; "
              f"load average {os.getloadavg()[0]:.1f}")
        for name, fn in [("sha256 (ragicl)", file_checksum), ("crc32 (zlib)", _crc32),
                         ("blake2b-128", _blake2b)]:
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                fn(path)
                times.append(time.perf_counter() - t0)
            best = min(times)
            print(f"{name:22s} best {best:6.2f} s  ({size / best / 1e9:5.2f} GB/s)  all {[round(t, 2) for t in times]}")


if __name__ == "__main__":
    main()
