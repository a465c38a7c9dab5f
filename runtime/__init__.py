"""chatfile's runtime: everything that ships inside a bundle.

    from runtime import Model
    from runtime.engine import tokenize_prompt    # the template's special tokens, one BOS
    model = Model.load("model.gguf")          # mmap, parse, dequantize once if it fits
    ids = tokenize_prompt(model, model.chat_prompt([{"role": "user", "content": "Hi"}]))
    print(model.detokenize(list(model.generate(ids, 64))))   # greedy, stops at end tokens

Reading order, the model first: model.py's docstring (the data layout and the shape
names, once), then `Session._forward` at its end (the one forward pass, a loop over the
layers) and the functions it calls under "The forward pass and its pieces"; archs.py is
the table of switches by which an architecture differs from llama. Underneath: gguf.py
(the file format), quants.py (ggml blocks to float32) and weights.py (how a matrix is
held: float32, int8 or the GGUF's own blocks; the loader that fuses q/k/v). Serving it:
engine.py (one worker, the prompt cache) and server.py (the HTTP API).
docs/architecture.md lists every module and the names the others rely on.
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
