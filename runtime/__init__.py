"""chatfile's runtime: everything that ships inside a bundle. See docs/architecture.md."""
from runtime.errors import GGUFError

__all__ = ["GGUFError", "Model"]


def __getattr__(name):
    # Model pulls in NumPy-heavy modules; import it lazily so that `import runtime` (for
    # GGUFError or the trailer reader) stays cheap.
    if name == "Model":
        from runtime.model import Model
        return Model
    raise AttributeError(name)
