"""`chatfile info`: what is in a GGUF, read from its header alone (no weights loaded)."""
from __future__ import annotations

import json
import os
from collections import Counter

from runtime import archs, gguf

# Said by `info`, the server's log, the terminal chat and the page when a GGUF carries no
# chat template.
BASE_MODEL_NOTE = ("this model has no chat template, so it is probably a base model: it "
                   "continues text rather than answering questions")


def shown_name(value) -> str:
    """A name from a GGUF's metadata (general.name) fit to print: a file's control
    characters (ESC starts the sequences that clear a terminal, retitle its window or set
    its clipboard; a newline fakes a log line; U+202E reverses the text) become spaces."""
    return "".join(ch if ch.isprintable() else " " for ch in str(value or "")).strip()


def describe(path, offset: int = 0, size: int | None = None) -> dict:
    g = gguf.read(path, offset=offset, size=size, vocab_only=True)
    md = g.metadata
    arch = md.get("general.architecture", "unknown")
    n_params = sum(t.n_elements for t in g.tensors.values())
    types = Counter()
    type_bytes = Counter()
    for t in g.tensors.values():
        types[t.type_name] += 1
        type_bytes[t.type_name] += t.n_bytes
    return {
        "name": (shown_name(md.get("general.name"))
                 or shown_name(os.path.basename(os.fspath(path)))),
        "arch": arch,
        "arch_supported": arch in archs.ARCHS,
        "parameters": n_params,
        "tensors": len(g.tensors),
        "tensor_types": {k: {"tensors": types[k], "bytes": type_bytes[k]} for k in sorted(types)},
        "context_length": md.get(f"{arch}.context_length"),
        "vocab_type": md.get("tokenizer.ggml.model"),
        "vocab_size": len(md.get("tokenizer.ggml.tokens", [])),
        "chat_template": "tokenizer.chat_template" in md,
        "gguf_bytes": g.size,
        "gguf_version": g.version,
    }


def _human_count(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def print_info(path, offset: int = 0, size: int | None = None, as_json: bool = False,
               template_text: str | None = None) -> int:
    """template_text: a chat template that a bundle carries for this model."""
    d = describe(path, offset, size)
    if template_text is not None:
        d["chat_template"] = True
        d["chat_template_from_bundle"] = len(template_text)  # characters
    if as_json:
        print(json.dumps(d, indent=2))
        return 0
    print(f"name:           {d['name']}")
    support = "" if d["arch_supported"] else f"  (not supported; supported: {', '.join(archs.supported())})"
    print(f"architecture:   {d['arch']}{support}")
    print(f"parameters:     {_human_count(d['parameters'])} ({d['parameters']:,})")
    print(f"context length: {d['context_length']}")
    print(f"vocabulary:     {d['vocab_type']}, {d['vocab_size']:,} tokens")
    print("chat template:  " + (f"yes (the bundle's own, {len(template_text or '')} characters)"
                                 if template_text is not None else
                                 "yes" if d["chat_template"] else "no (a built-in one will be used)"))
    if not d["chat_template"]:
        print(f"note:           {BASE_MODEL_NOTE}")
    print(f"file:           {d['gguf_bytes']:,} bytes, GGUF v{d['gguf_version']}")
    print("tensor types:")
    for name, v in d["tensor_types"].items():
        print(f"  {name:8s} {v['tensors']:5d} tensors {v['bytes'] / 1e6:10.1f} MB")
    return 0
