"""PyInstaller's entry script: the frozen executable runs this, which runs runtime/__main__.py.

PyInstaller needs a script file, not a module name, and a script inside the runtime
package would lose its package context; this one-line shim keeps `runtime` a package.
"""
from runtime.__main__ import _entry

_entry()
