"""What the sidecar answers itself, one module per surface: the key-management API, the
admin listener (health, readiness, metrics, JWKS), the forward-auth decision listener,
the secret-scanning endpoint with its signature-key source, and the API Keys page.
"""

__all__ = ["admin", "console", "forward_auth", "keys", "scanning_source", "secret_scanning"]
