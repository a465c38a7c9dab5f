"""The 8B-class memory-mode check: a random-weight Llama-3-8B-shaped Q4_K_M.

    python build/bench_8b.py [--mode int8|quant|auto] [--keep DIR] [--prompt-tokens 16]
                             [--gen-tokens 4] [--threads 2]

Makes the ~4.9 GB GGUF (build/make_random_gguf.py) in a temporary directory, benches it
with `runtime.bench.bench_chatfile(mode=...)` in a child process (so the peak RSS is
the model's alone, not the generator's), prints the table, and deletes the file. The
target (issue 7): peak RSS <= 10 GB and decode >= 0.5 tok/s. Nothing is asserted; the
numbers are printed. Peak RSS counts the touched pages of the mmap'd GGUF too.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_RSS_BYTES = 10e9  # the 10 GB (decimal); the peak is printed in GiB
TARGET_DECODE_TOK_S = 0.5


def child(path: str, n_prompt: int, n_gen: int, threads: int, mode: str) -> None:
    """Runs in the child: BLAS threads must be set before NumPy loads."""
    sys.path.insert(0, str(ROOT))
    from runtime.cli import set_threads
    set_threads(threads)
    from runtime.bench import bench_chatfile
    res = bench_chatfile(path, n_prompt, n_gen, mode)  # no speculative-decode rows
    print(json.dumps(res))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="bench a random Llama-3-8B-shaped Q4_K_M in int8 or quant mode")
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--gen-tokens", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", choices=("int8", "quant", "auto"), default="int8",
                    help="memory mode (auto: what `chatfile run` picks on this machine "
                         "without --mode: quant when float32 does not fit)")
    ap.add_argument("--keep", metavar="DIR", help="write (or reuse) the GGUF in DIR and keep it")
    ap.add_argument("--child", metavar="GGUF", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.prompt_tokens, args.gen_tokens, args.threads, args.mode)
        return 0
    if min(args.prompt_tokens, args.gen_tokens, args.threads) <= 0:
        ap.error("--prompt-tokens, --gen-tokens and --threads must be positive")

    sys.path.insert(0, str(ROOT / "build"))
    from make_random_gguf import synthetic_model

    with tempfile.TemporaryDirectory(prefix="chatfile-8b-") as tmp:
        out_dir = Path(args.keep or tmp)
        path = out_dir / "random-llama3-8b.gguf"
        t0 = time.perf_counter()
        if not path.exists():
            try:
                path = synthetic_model("llama3-8b", out_dir)
            except OSError as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
        gen_s = time.perf_counter() - t0
        size_gb = path.stat().st_size / 1e9
        print(f"GGUF: {size_gb:.2f} GB, made in {gen_s:.1f} s", flush=True)
        cmd = [sys.executable, __file__, "--child", str(path), "--prompt-tokens",
               str(args.prompt_tokens), "--gen-tokens", str(args.gen_tokens),
               "--threads", str(args.threads), "--mode", args.mode]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        if r.returncode != 0:
            print("error: the benchmark child failed", file=sys.stderr)
            return 1
        res = json.loads(r.stdout.strip().splitlines()[-1])

    sys.path.insert(0, str(ROOT))
    from runtime.bench import format_table
    print(format_table(res, None, args.threads))
    rss_ok = res["peak_rss_mb"] * 2**20 <= TARGET_RSS_BYTES  # peak_rss_mb is in MiB
    tok_ok = res["decode_tok_s"] >= TARGET_DECODE_TOK_S
    print(f"peak RSS {res['peak_rss_mb'] / 1024:.2f} GiB (target <= 10 GB: {'met' if rss_ok else 'NOT met'}); "
          f"decode {res['decode_tok_s']:.3f} tok/s (target >= {TARGET_DECODE_TOK_S}: "
          f"{'met' if tok_ok else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
