"""chatfile's runtime: everything that ships inside a bundle.

    from runtime import Model
    from runtime.engine import tokenize_prompt
    model = Model.load("model.gguf")                  # mmap, parse, dequantize once
    ids = tokenize_prompt(model, model.chat_prompt([{"role": "user", "content": "Hi"}]))
    print(model.detokenize(list(model.generate(ids, 64))))   # greedy, stops at end tokens

Reading order: gguf.py (the file format) -> quants.py (blocks to float32) -> archs.py
(what differs between architectures: a table of switches) -> model.py (the one forward
pass and the KV-cache session) -> engine.py and server.py (serving it). docs/architecture.md
lists every module and the names the others rely on.
"""
from runtime.errors import GGUFError

__version__ = "0.1.0"  # the package's version too (pyproject.toml reads it from here)
__all__ = ["GGUFError", "Model", "__version__"]


def __getattr__(name):
    # Model pulls in NumPy; import it lazily so that `import runtime` (for GGUFError or the
    # bundle's trailer reader) stays instant and the BLAS thread count can still be set.
    if name == "Model":
        from runtime.model import Model
        return Model
    raise AttributeError(name)
