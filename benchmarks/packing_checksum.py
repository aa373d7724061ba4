"""Cost of verifying a packed split when the cache is opened (data/packing.py: verify_split).

    python benchmarks/packing_checksum.py [--sizes-mib 64 256 1024] [--repeats 5]

For each file size, a uint16 split of random ids below the vocabulary is written to a temp dir; the baseline is
mapping it (what opening cost before: np.memmap plus the size check), the measured case is mapping plus
verify_split (one streaming pass: max id and xxh3-128 checksum). Prints medians, spreads (min-max) and the
verification throughput. The file is in the page cache (a cache just written or just read); a cold read adds the
disk's read time, which any first epoch pays anyway.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import xxhash

from timing import timed

from recurrent_lm.data.packing import CHECKSUM, verify_split

VOCAB = 32_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| split size | open (map) median | open + verify median (min-max) | verify throughput | ratio |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for mib in args.sizes_mib:
            path = Path(scratch, f"{mib}.bin")
            ids = rng.integers(0, VOCAB, size=mib * 2**20 // 2, dtype=np.uint16)
            ids.tofile(path)
            checksum = f"{CHECKSUM}:{xxhash.xxh3_128(ids.tobytes()).hexdigest()}"
            del ids
            base = timed(lambda: np.memmap(path, dtype=np.uint16, mode="r"), args.repeats)
            full = timed(lambda: verify_split(path, np.memmap(path, dtype=np.uint16, mode="r"), VOCAB, checksum),
                         args.repeats)
            b, f = statistics.median(base), statistics.median(full)
            print(f"| {mib} MiB | {b * 1e3:.2f} ms | {f * 1e3:.0f} ms ({min(full) * 1e3:.0f}-{max(full) * 1e3:.0f}) "
                  f"| {mib / 1024 / f:.2f} GiB/s | {f / b:.0f}x |")
            path.unlink()


if __name__ == "__main__":
    main()
