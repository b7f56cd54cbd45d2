"""``callcov-sidecar``, the command line: the parser and the serve, check-config and token
commands (``main``), the operator's key commands (``keys``) and the audit trail's verify
and export (``audit``). The top of the stack: it imports everything, nothing imports it.
"""

__all__ = ["audit", "keys", "main"]
