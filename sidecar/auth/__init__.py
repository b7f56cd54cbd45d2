"""Who is calling: API-key and JWT credentials, the failed-authentication limit, what a
restricted key may do, and the signed identity assertion the upstream can verify.
"""

__all__ = ["assertion", "credentials", "failed_auth", "jwt_auth", "restrictions"]
