"""The rules every layer shares, with no I/O: the key domain's value types, the exception
tree and its HTTP mapping, path normalisation, the client address, timestamps, a
concurrency bound, the write-behind flush loop and the shared header types.
"""

__all__ = [
    "bodies",
    "clientaddr",
    "domain",
    "errors",
    "paths",
    "periodic",
    "slots",
    "timeutil",
    "types",
]
