"""What ``import peft`` costs a coalora process with and without bitsandbytes (not a test).

Each way runs in a fresh interpreter, alternating, after what the fork server imports
before peft (``coalora.models``, transformers' Llama): ``import_peft`` is
``coalora.bnb.import_peft()`` (bitsandbytes left out, what the fork server and adapter
writers do), ``plain`` is ``import peft`` (bitsandbytes imported with it, as peft does in
any process). Printed: wall and CPU seconds of the import alone (medians), whether
bitsandbytes was loaded, and the ratio plain / import_peft.

    HF_HUB_OFFLINE=1 python benchmarks/peft_import.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = """
import json, resource, sys, time
import coalora.models, transformers.models.llama.modeling_llama
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
wall, used = time.perf_counter(), cpu()
if sys.argv[1] == "import_peft":
    from coalora.bnb import import_peft
    import_peft()
else:
    import peft
print(json.dumps({"wall": time.perf_counter() - wall, "cpu": cpu() - used,
                  "bitsandbytes": "bitsandbytes.functional" in sys.modules}))
"""

WAYS = ("import_peft", "plain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {way: [] for way in WAYS}
    for _ in range(args.repeat):
        for way in WAYS:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, way], capture_output=True, text=True, check=True
            )
            runs[way].append(json.loads(out.stdout.strip().splitlines()[-1]))
    median = {
        way: {k: statistics.median(r[k] for r in rs) for k in ("wall", "cpu")}
        for way, rs in runs.items()
    }
    print(f"{'way':12s} {'wall s':>7s} {'cpu s':>7s}  bitsandbytes loaded")
    for way in WAYS:
        loaded = {r["bitsandbytes"] for r in runs[way]}
        print(f"{way:12s} {median[way]['wall']:7.2f} {median[way]['cpu']:7.2f}  {sorted(loaded)}")
    ratio = median["plain"]["cpu"] / median["import_peft"]["cpu"]
    print(f"plain / import_peft (cpu): {ratio:.1f}x, over {args.repeat} runs each")


if __name__ == "__main__":
    main()
