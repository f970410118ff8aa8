"""What every deployment shares: the errors that mean "a replica was lost or is full" (retryable,
answered 503 / 429) and the request metrics of this replica's process."""

from __future__ import annotations

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

UNAVAILABLE: tuple = (RayActorError, ActorDiedError, ActorUnavailableError)
BACKPRESSURE: tuple = ()
try:
    from ray.serve.exceptions import BackPressureError

    UNAVAILABLE += (BackPressureError,)
    BACKPRESSURE = (BackPressureError,)
except ImportError:  # older Serve: a full queue is not a distinct error
    pass

_METRICS: list = []


def request_metrics():
    """This process's :class:`~digzsl_ray.distributed.metrics.Metrics` (created on first use, in the replica)."""
    if not _METRICS:
        from digzsl_ray.distributed.metrics import Metrics

        _METRICS.append(Metrics())
    return _METRICS[0]
