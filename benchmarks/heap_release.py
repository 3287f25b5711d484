"""What giving the quantizer's freed heap back to the OS costs a configuration switch, and what
it saves (not a test).

``QuantizedBase.apply`` calls ``coalora.heap.release_freed_memory`` after each matrix it
quantizes (a cache miss). Here, in one process, a model with its cache off (every switch
re-quantizes every targeted matrix, as a model does whose cache cannot hold two
configurations) switches between NF3 and NF4, with the release on and replaced by a no-op,
alternated ``--reps`` times: the median seconds of each, their ratio, and the resident memory
above the model's after each mode's switches.

    python benchmarks/heap_release.py                       # Qwen2.5-1.5B shape, 4 layers
    python benchmarks/heap_release.py --model tiny-llama    # a quick check of the code path
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])


def rss_gib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-1.5b", help="a paper shape or a model name")
    parser.add_argument("--layers", type=int, default=4, help="blocks kept of a paper shape")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    import coalora.quant.apply as apply_module
    from benchmarks.paper_shapes import SHAPES, build_model_dir
    from coalora.models import load_model
    from coalora.precision import hold
    from coalora.quant import ModelQConfig, QuantConfig, QuantizedBase

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="heap-") as tmp:
        ref = args.model
        if ref in SHAPES:
            ref = str(
                build_model_dir(ref, Path(tmp) / ref, layers=args.layers, dtype=torch.bfloat16)
            )
        model = load_model(ref).model
    model.requires_grad_(False)
    hold(model, torch.bfloat16)
    qbase = QuantizedBase(model, cache_bytes=0)
    configs = [
        ModelQConfig.uniform(qbase.targets, QuantConfig(b, 8, "fp32", 64, 256), name=f"nf{b}")
        for b in (3, 4)
    ]
    release = apply_module.release_freed_memory
    modes = {"release": release, "keep": lambda: False}
    seconds = {mode: [] for mode in modes}
    held = {}
    try:
        for _ in range(args.reps):
            for mode, fn in modes.items():
                apply_module.release_freed_memory = fn
                started = time.perf_counter()
                for mqc in configs:
                    qbase.apply(mqc)
                seconds[mode].append(time.perf_counter() - started)
                held[mode] = rss_gib()
    finally:
        apply_module.release_freed_memory = release
    print(
        f"two switches of {args.model} (cache off, {len(qbase.targets)} matrices each), "
        f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S}, {args.threads} thread(s), {args.reps} reps"
    )
    for mode in modes:
        print(
            f"{mode:<8} median {statistics.median(seconds[mode]):7.2f} s  "
            f"({', '.join(f'{s:.2f}' for s in seconds[mode])})  RSS after {held[mode]:.2f} GiB"
        )
    ratio = statistics.median(seconds["release"]) / statistics.median(seconds["keep"])
    print(f"release / keep seconds: {ratio:.2f}x")


if __name__ == "__main__":
    main()
