"""Bearer-token access control of the service's mutating routes and generation.

The token is read from the file named by ``DIGZSL_API_TOKEN_FILE`` (the environment wins) or by
``serve.api_token_file``; only its SHA-256 travels into the replicas, requests are compared in
constant time (:func:`hmac.compare_digest` of digests) and no token is ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from digzsl_ray.errors import UserError

ENV = "DIGZSL_API_TOKEN_FILE"
MIN_CHARS = 16


class TokenFileError(UserError):
    """A token file that is missing, empty or too short."""


def token_file(configured: str = "") -> str:
    """The token file in effect: ``$DIGZSL_API_TOKEN_FILE``, else ``serve.api_token_file``, else ''."""
    return os.environ.get(ENV, "") or configured or ""


def token_digest(configured: str = "") -> str | None:
    """SHA-256 (hex) of the configured token, or None when no token file is configured."""
    path = token_file(configured)
    if not path:
        return None
    p = Path(path).expanduser()
    try:
        token = p.read_text().strip()
    except OSError as e:
        raise TokenFileError(f"API token file {p} ({ENV} or serve.api_token_file): {e.strerror or e}") from None
    if len(token) < MIN_CHARS:
        raise TokenFileError(f"API token file {p}: holds {len(token)} characters; use at least {MIN_CHARS} "
                             f"(e.g. `python -c 'import secrets; print(secrets.token_hex(32))' > {p}`)")
    return hashlib.sha256(token.encode()).hexdigest()


def check(authorization: str | None, digest: str | None) -> tuple[int, str] | None:
    """None when the request may pass; else ``(status, message)``: 401 without a bearer token, 403
    with a wrong one or when the service has no token configured."""
    if digest is None:
        return 403, (f"this route needs an API token and the service has none: start it with {ENV} or "
                     f"serve.api_token_file naming a token file")
    if not authorization:
        return 401, "missing 'Authorization: Bearer <token>' header"
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return 401, "the Authorization header must be 'Bearer <token>'"
    got = hashlib.sha256(given.strip().encode()).hexdigest()
    if not hmac.compare_digest(got, digest):
        return 403, "wrong API token"
    return None
