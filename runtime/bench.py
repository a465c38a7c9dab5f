"""`chatfile bench`: load time, prefill and decode speed, time to first token, peak RSS.

With --against-llama-cpp the same measurements run on llama.cpp (llama-cpp-python, the
optional `chatfile[bench]` extra) on the same file with the same thread count, in a child
process so that each side's peak RSS is its own. Timings are printed, never asserted.

The prompt is code: this package's own source, tokenized and cut to --prompt-tokens.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from runtime.whole_file import replacing


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def code_prompt_text() -> str:
    here = Path(__file__).resolve().parent
    return "\n\n".join((here / name).read_text() for name in ("model.py", "gguf.py", "sampling.py"))


EDIT_CODE = """def moving_average(values, window):
    result = []
    total = 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        if i >= window - 1:
            result.append(total / window)
    return result
"""
# The prompts the speculative decode is measured on: a chat answer and a code edit.
SPEC_PROMPTS = {
    "chat": "What is a Python list comprehension? Explain briefly with two examples.",
    "code edit": "Add type hints and a docstring to this function. Reply with the code only."
                 "\n\n```python\n" + EDIT_CODE + "```",
}


def spec_prompt_texts(model) -> dict[str, str]:
    """The shipped prompts rendered with the model's chat template."""
    return {name: model.chat_prompt([{"role": "user", "content": text}])
            for name, text in SPEC_PROMPTS.items()}


def bench_chatfile(path: str, n_prompt: int, n_gen: int, mode: str, offset=0, size=None,
                   spec_texts: dict[str, str] | None = None) -> dict:
    import numpy as np
    from runtime.model import Model
    from runtime.sampling import Sampler, SamplingParams
    from runtime.speculate import greedy_tokens

    t0 = time.perf_counter()
    model = Model.load(path, offset=offset, size=size, mode=mode)
    load_s = time.perf_counter() - t0
    text = code_prompt_text()
    t0 = time.perf_counter()
    ids = model.tokenize(text)
    tokenize_mb_s = len(text.encode()) / (time.perf_counter() - t0) / 1e6
    ids = ids[:n_prompt]
    s = model.session(len(ids) + n_gen + 1)
    t0 = time.perf_counter()
    logits = s.eval(ids)
    prefill_s = time.perf_counter() - t0
    tok = int(np.argmax(logits))
    ttft_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n_gen):
        tok = int(np.argmax(s.eval([tok])))  # end tokens are ignored: always n_gen steps
    decode_s = time.perf_counter() - t0
    weight_bytes = model.bytes_read_per_token()
    res = {
        "impl": "chatfile", "mode": model.mode, "n_prompt": len(ids), "n_gen": n_gen,
        "load_s": load_s, "prefill_tok_s": len(ids) / prefill_s, "decode_tok_s": n_gen / decode_s,
        "ttft_s": ttft_s, "peak_rss_mb": _peak_rss_mb(),
        "decode_gb_s": weight_bytes * n_gen / decode_s / 1e9, "tokenize_mb_s": tokenize_mb_s,
    }
    # Greedy decode as the server does it: with prompt-lookup speculation.
    sampler = Sampler(SamplingParams(temperature=0))
    for name, text in (spec_texts or {}).items():
        ids = model.tokenize(text, parse_special=True)
        s = model.session(len(ids) + n_gen + 16)
        logits, hist, passes = s.eval(ids), list(ids), 0
        t0 = time.perf_counter()
        while len(hist) - len(ids) < n_gen:
            toks, logits = greedy_tokens(s, logits, sampler, hist, s.n_ctx - len(s.tokens))
            hist += toks
            passes += 1
        n = len(hist) - len(ids)
        res[f"spec_{name}_tok_s"] = n / (time.perf_counter() - t0)
        res[f"spec_{name}_tok_per_pass"] = n / passes
    return res


def _llama_last_logits(llm):
    """llama.cpp's logits of the last evaluated token (without logits_all, which would
    make its prefill compute the output head at every position)."""
    import llama_cpp
    import numpy as np
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def bench_llama_cpp(path: str, n_prompt: int, n_gen: int, threads: int,
                    spec_texts: dict[str, str] | None = None) -> dict:
    """Runs inside a child process (see run_bench)."""
    import numpy as np
    from llama_cpp import Llama

    t0 = time.perf_counter()
    llm = Llama(model_path=path, n_ctx=max(n_prompt + n_gen + 16, 2048), n_threads=threads,
                n_threads_batch=threads, n_batch=512, verbose=False)
    load_s = time.perf_counter() - t0
    ids = llm.tokenize(code_prompt_text().encode(), add_bos=True, special=False)[:n_prompt]
    t0 = time.perf_counter()
    llm.eval(ids)
    prefill_s = time.perf_counter() - t0
    tok = int(np.argmax(_llama_last_logits(llm)))
    ttft_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n_gen):
        llm.eval([tok])
        tok = int(np.argmax(_llama_last_logits(llm)))
    decode_s = time.perf_counter() - t0
    res = {
        "impl": "llama.cpp", "n_prompt": len(ids), "n_gen": n_gen, "load_s": load_s,
        "prefill_tok_s": len(ids) / prefill_s, "decode_tok_s": n_gen / decode_s,
        "ttft_s": ttft_s, "peak_rss_mb": _peak_rss_mb(),
    }
    # llama.cpp's plain greedy decode on the same rendered prompts, for the ratio.
    for name, text in (spec_texts or {}).items():
        llm.reset()
        ids = llm.tokenize(text.encode(), add_bos=False, special=True)
        llm.eval(ids)
        t0 = time.perf_counter()
        for _ in range(n_gen):
            tok = int(np.argmax(_llama_last_logits(llm)))
            llm.eval([tok])
        res[f"spec_{name}_tok_s"] = n_gen / (time.perf_counter() - t0)
    return res


ROWS = [("load_s", "load (s)", "{:.2f}"), ("prefill_tok_s", "prefill (tok/s)", "{:.1f}"),
        ("decode_tok_s", "decode (tok/s)", "{:.1f}"), ("ttft_s", "time to first token (s)", "{:.2f}"),
        ("peak_rss_mb", "peak RSS (MB)", "{:.0f}"), ("decode_gb_s", "decode weight reads (GB/s)", "{:.1f}"),
        ("tokenize_mb_s", "tokenize, first time (MB/s)", "{:.2f}")]
ROWS += [(f"spec_{name}_tok_s", f"decode, {name} prompt, prompt lookup (tok/s)", "{:.1f}")
         for name in SPEC_PROMPTS]
ROWS += [(f"spec_{name}_tok_per_pass", f"  tokens per forward pass ({name})", "{:.2f}")
         for name in SPEC_PROMPTS]


def format_table(ours: dict, ref: dict | None, threads: int) -> str:
    mode = f", {ours['mode']} weights" if "mode" in ours else ""
    head = (f"| measure ({threads} threads, {ours['n_prompt']}-token prompt, {ours['n_gen']} new"
            f"{mode}) | chatfile |")
    lines = [head + (" llama.cpp | chatfile ÷ llama.cpp |" if ref else ""),
             "|---|---|" + ("---|---|" if ref else "")]
    for key, label, fmt in ROWS:
        if key not in ours:
            continue
        row = f"| {label} | {fmt.format(ours[key])} |"
        if ref:
            if key in ref:
                ratio = ours[key] / ref[key] if ref[key] else float("nan")
                row += f" {fmt.format(ref[key])} | {ratio:.2f}× |"
            else:
                row += " – | – |"
        lines.append(row)
    return "\n".join(lines)


def run_bench(args) -> int:
    import importlib.util
    threads = args.threads or os.cpu_count() or 1
    # What the optional parts need is checked first, not after minutes of measuring.
    for wanted, flag, module in ((args.against_llama_cpp, "--against-llama-cpp", "llama_cpp"),
                                 (args.plot, "--plot", "matplotlib")):
        if wanted and not importlib.util.find_spec(module):
            print(f"chatfile: error: {flag} needs the Python package {module}: "
                  "pip install 'chatfile[bench]'", file=sys.stderr)
            return 1
    if getattr(args, "gguf_offset", 0) and args.against_llama_cpp:
        # It was said after llama.cpp had failed on the bundle, as "is the optional extra
        # installed?"; llama.cpp reads a GGUF file from its start only.
        print(f"chatfile: error: --against-llama-cpp needs the GGUF file itself: llama.cpp "
              f"cannot read the one inside a bundle. Write it out with `{args.model} "
              f"--extract model.gguf` and bench that", file=sys.stderr)
        return 1
    for out, is_plot in ((args.json, False), (args.plot and plot_file(args.plot), True)):
        problem = out and (output_problem(out, args.model) or is_plot and plot_format_problem(out))
        if problem:
            print(f"chatfile: error: cannot write {out}: {problem}", file=sys.stderr)
            return 1
    offset, size = getattr(args, "gguf_offset", 0), getattr(args, "gguf_size", None)
    from runtime.model import Model
    vocab = Model.load(args.model, offset=offset, size=size, vocab_only=True)
    need_tok = args.prompt_tokens + args.gen_tokens
    if vocab.n_ctx_train and need_tok > vocab.n_ctx_train:
        print(f"chatfile: error: --prompt-tokens {args.prompt_tokens} + --gen-tokens {args.gen_tokens} "
              f"need a context of {need_tok} tokens; this model's is {vocab.n_ctx_train}",
              file=sys.stderr)
        return 1
    try:
        spec_texts = spec_prompt_texts(vocab)
    except ValueError as e:  # a template that cannot render: skip those rows, say why
        print(f"note: no speculative-decode rows: {e}", file=sys.stderr)
        spec_texts = {}
    ref = None
    if args.against_llama_cpp:
        # First, in a child, so its memory is not counted in ours.
        job = {"model": args.model, "n_prompt": args.prompt_tokens, "n_gen": args.gen_tokens,
               "threads": threads, "spec_texts": spec_texts}
        cmd = [sys.executable, "-m", "runtime.bench", "--llama-cpp-child", json.dumps(job)]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            print("llama.cpp comparison failed (is the optional extra installed? "
                  "pip install 'chatfile[bench]'):\n" + r.stderr[-1500:], file=sys.stderr)
            return 1
        ref = json.loads(r.stdout.strip().splitlines()[-1])
    ours = bench_chatfile(args.model, args.prompt_tokens, args.gen_tokens, args.mode,
                          offset, size, spec_texts)
    print(format_table(ours, ref, threads))
    if args.json:
        try:
            _write_atomically(args.json, json.dumps({"threads": threads, "chatfile": ours,
                                                     "llama.cpp": ref}, indent=2))
        except OSError as e:  # a full disk says only "No space left on device"
            raise OSError(f"cannot write {args.json}: {e.strerror or e}") from None
    if args.plot:
        plot_prefill_curve(args, threads, args.plot, offset, size)
    return 0


def plot_file(out: str) -> str:
    """The file that `--plot out` writes: matplotlib adds its default format's extension
    (.png) to a name without one. (A directory's name stays, to be refused as one.)"""
    if os.path.splitext(out)[1] or os.path.isdir(out) or out.endswith(os.sep):
        return out
    import matplotlib  # run_bench checked that it is there
    return f"{out}.{matplotlib.rcParams['savefig.format']}"


def plot_format_problem(out: str) -> str | None:
    """Why matplotlib cannot write a plot named `out`, or None. It said so only after the
    measurements (minutes on a real model): "Format 'txt' is not supported"."""
    try:
        from matplotlib.figure import Figure
    except ImportError:  # cannot tell here; savefig will say
        return None
    ext = os.path.splitext(out)[1][1:].lower()
    formats = Figure().canvas.get_supported_filetypes()
    if ext in formats:
        return None
    return (f"a plot cannot be written as .{ext}; give a name that ends in "
            f"{', '.join('.' + f for f in sorted(formats))}")


def _holds_a_model(path: str) -> bool:
    """Is the file at `path` a GGUF model or a chatfile bundle (damaged ones included)?"""
    from runtime.embedded import BundleError, read_trailer
    try:
        with open(path, "rb") as f:
            if f.read(4) == b"GGUF":
                return True
        return read_trailer(path) is not None
    except BundleError:
        return True
    except OSError:
        return False


def output_problem(out: str, model: str) -> str | None:
    """Why --json or --plot cannot write the file `out`, or None: said before minutes of
    measuring, not after them. The results never replace a model: `chatfile bench
    model.gguf --json model.gguf` (a slip of the shell's completion) wrote them over it."""
    where = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(where):
        return "its directory does not exist"
    if os.path.isdir(out):
        return "it is a directory"
    if out.endswith(tuple(sep for sep in (os.sep, os.altsep) if sep)):  # a missing one's:
        # a file was written under its name without the "/"
        return "it names a directory, which does not exist; give a file name"
    if os.path.isfile(out):  # (not /dev/stdout: reading it would wait for the keyboard)
        if os.path.samefile(out, model):
            return "it is the model being measured; give the results another file name"
        if _holds_a_model(out):
            return "it is a GGUF model or a chatfile bundle; give the results another file name"
        if not os.access(out, os.W_OK):
            return "it is not writable"
    if not os.access(where, os.W_OK):  # (also for a read-only file system)
        return f"its directory {where} is not writable"
    return None


def _write_atomically(path: str, text: str) -> None:
    """Write `path` through a temporary file beside it, renamed into place: a full disk
    leaves the previous file (or none), never a cut-off one. What is no regular file
    (/dev/stdout, a FIFO) is written as such: a rename would replace it."""
    if os.path.exists(path) and not os.path.isfile(path):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return
    with replacing(os.path.realpath(path), "w") as f:  # (a symbolic link's file, not the link)
        f.write(text)


def plot_prefill_curve(args, threads: int, out: str, offset: int = 0, size: int | None = None) -> None:
    import matplotlib  # run_bench checked that it is there
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    lengths = [32, 64, 128, 256, 512]
    ours = [bench_chatfile(args.model, n, 1, args.mode, offset, size)["prefill_tok_s"]
            for n in lengths]
    plt.figure(figsize=(6, 4))
    plt.plot(lengths, ours, marker="o", label="chatfile")
    if args.against_llama_cpp:
        ref = []
        for n in lengths:
            job = {"model": args.model, "n_prompt": n, "n_gen": 1, "threads": threads}
            r = subprocess.run([sys.executable, "-m", "runtime.bench", "--llama-cpp-child",
                                json.dumps(job)], stdout=subprocess.PIPE, text=True)
            ref.append(json.loads(r.stdout.strip().splitlines()[-1])["prefill_tok_s"])
        plt.plot(lengths, ref, marker="s", label="llama.cpp")
    plt.xlabel("prompt length (tokens)")
    plt.ylabel("prefill tok/s")
    plt.legend()
    plt.title(f"{os.path.basename(args.model)}, {threads} threads")
    plt.savefig(out)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--llama-cpp-child":
        job = json.loads(sys.argv[2])
        from runtime.cli import set_threads
        set_threads(job["threads"])
        res = bench_llama_cpp(job["model"], job["n_prompt"], job["n_gen"], job["threads"],
                              job.get("spec_texts"))
        print(json.dumps(res))
    else:
        print("usage: chatfile bench MODEL", file=sys.stderr)
        sys.exit(2)
