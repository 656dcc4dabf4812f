"""Time and peak memory of reading torch.save `.pth` files: our torch-free reader vs torch.load.

Each reading runs in a fresh subprocess and prints one JSON line: the file, the reader, seconds to
import it, to read the file, to make every tensor a contiguous float32 numpy array (what the Keras
import does next; a no-op for our memory-mapped float32 views) and to sum every element (so that
every page of a memory-mapped file is read: the checksum must agree between readers), and the
process's peak resident set (ru_maxrss, which counts the file pages mapped in) after the import
and at the end.

    # full-size seeded files (torch.save, 100-230 MB; not committed):
    PYTHONPATH=$PWD /work/torchvenv/bin/python scripts/make_torch_fixtures.py --pth-only --pth-dir /tmp/pth
    PYTHONPATH=$PWD .venv/bin/python scripts/pth_read_benchmark.py /tmp/pth/torchvision_resnet50.pth \\
        /tmp/pth/torchvision_resnet152.pth --torch-python /work/torchvenv/bin/python

Readers: `ours` (resnet_keras.pretrained.state_dicts.read_state_dict, run with this Python),
`torch` (torch.load(weights_only=True)) and `torch-mmap` (the same with mmap=True), run with
--torch-python.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
reader, path = sys.argv[1], sys.argv[2]
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
start = time.perf_counter()
import numpy as np
if reader == "ours":
    from resnet_keras.pretrained.state_dicts import read_state_dict
else:
    import torch
imported, rss_imported = time.perf_counter(), rss()
if reader == "ours":
    state = read_state_dict(path)
else:
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=reader == "torch-mmap")
read = time.perf_counter()
if reader == "ours":
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}
else:
    arrays = {k: np.ascontiguousarray(v.float().numpy()) for k, v in state.items()}
done = time.perf_counter()
checksum = sum(float(a.sum(dtype=np.float64)) for a in arrays.values())  # every element touched
touched = time.perf_counter()
print(json.dumps(dict(
    file=path, reader=reader, tensors=len(arrays),
    mib=round(sum(a.nbytes for a in arrays.values()) / 2**20, 1),
    import_s=round(imported - start, 3), read_s=round(read - imported, 3), to_float32_s=round(done - read, 3),
    checksum=checksum, sum_all_s=round(touched - done, 3),
    peak_rss_after_import_mib=round(rss_imported, 1), peak_rss_mib=round(rss(), 1),
)))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--torch-python", help="a Python with PyTorch, for the torch.load readers")
    parser.add_argument("--readers", default="ours,torch,torch-mmap")
    args = parser.parse_args()
    repo = str(Path(__file__).resolve().parents[1])
    for path in args.files:
        for reader in args.readers.split(","):
            python = sys.executable if reader == "ours" else args.torch_python
            if python is None:
                continue
            env = {**os.environ, "PYTHONPATH": repo} if reader == "ours" else dict(os.environ)
            result = subprocess.run(
                [python, "-c", CHILD, reader, str(path)], env=env, capture_output=True, text=True, check=False
            )
            if result.returncode:
                print(json.dumps(dict(file=str(path), reader=reader, error=result.stderr.strip()[-300:])))
            else:
                print(result.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
