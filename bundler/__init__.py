"""The `chatfile` command's build side: stubs (bundler.stub) and the GGUF splice (bundler.splice).

Nothing here ships inside a bundle; runtime/ never imports bundler/.
"""
