"""The lowest room besides ``ops``: what every other room may use and that knows nothing of them.

- :mod:`.errors`: the package's exceptions (every message names the file or key at fault) and the hook that
  prints a user error as one line.
- :mod:`.atomic`: atomic, durable file writes.
- :mod:`.weights`: sha256 checks and safe loading of weight files (``weights_only``, safetensors).

It imports only the standard library, torch and (lazily) safetensors.
"""
