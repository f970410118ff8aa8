"""A fault-tolerant pool of Ray actors pulling shards of work from a queue.

``ray.util.ActorPool`` does not re-dispatch the work of an actor that died, so this drives the pool
with a ``ray.wait`` loop (docs/DESIGN.md section 3):

* actors are requested up front (``size`` of them, capped by the work); a pending actor (e.g.
  waiting for a GPU node the autoscaler is adding) gets work only once its ``ready()`` returns;
* shards go to idle ready actors one at a time, so a slow or lost actor delays only its shard;
* when an actor dies (``RayActorError``: killed, node lost, OOM), its shard goes back on the queue
  (at most ``max_retries`` times per shard) and a replacement actor is requested while fewer than
  ``min_alive`` remain (at most ``max_restarts`` replacements);
* an exception raised *by the work itself* (a bug or bad input) is not retried: it propagates.

The pool knows nothing about the work: the caller supplies ``make_actor(i)`` and
``submit(actor, shard) -> ObjectRef`` and receives results in ``on_result(shard, result)``.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("digzsl")


class PoolError(RuntimeError):
    pass


@dataclass
class PoolStats:
    dispatched: int = 0
    completed: int = 0
    actor_deaths: int = 0
    restarts: int = 0
    redispatched: int = 0
    per_actor: dict = field(default_factory=dict)


def run_pool(
    shards: list[list[Any]],
    make_actor: Callable[[int], Any],
    submit: Callable[[Any, list[Any]], Any],
    on_result: Callable[[list[Any], Any], None],
    size: int,
    min_alive: int = 1,
    max_retries: int = 3,
    max_restarts: int | None = None,
    wait_timeout_s: float = 1.0,
    on_tick: Callable[[], None] | None = None,
) -> PoolStats:
    """Process every shard on a pool of actors; returns counters. Blocks until done."""
    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    dead_errors = (RayActorError, ActorDiedError, ActorUnavailableError)
    stats = PoolStats()
    queue: deque = deque((list(s), 0) for s in shards if s)
    if not queue:
        return stats
    max_restarts = max_restarts if max_restarts is not None else max_retries * max(size, 1)
    target = max(1, min(size, len(queue)))
    min_alive = max(1, min(min_alive, target))
    next_id = 0
    starting: dict = {}  # ready-ref -> (actor_id, actor)
    idle: list = []  # (actor_id, actor)
    inflight: dict = {}  # result-ref -> (actor_id, actor, shard, attempts)

    def spawn() -> None:
        nonlocal next_id
        aid = next_id
        next_id += 1
        actor = make_actor(aid)
        starting[actor.ready.remote()] = (aid, actor)

    def alive() -> int:
        return len(starting) + len(idle) + len(inflight)

    def lost(aid: int, actor, err: Exception) -> None:
        stats.actor_deaths += 1
        log.warning("pool: actor %d lost (%s)", aid, type(err).__name__)
        try:  # "unavailable" may come back later still holding its GPU: make sure it is gone
            ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already dead
            pass
        if alive() < min_alive and queue_or_inflight():
            if stats.restarts >= max_restarts:
                if alive() == 0:
                    raise PoolError(f"all actors died and the restart budget ({max_restarts}) is spent") from err
                return
            stats.restarts += 1
            spawn()

    def queue_or_inflight() -> bool:
        return bool(queue) or bool(inflight)

    try:
        for _ in range(target):
            spawn()

        while queue or inflight:
            # 1. Hand shards to idle, ready actors.
            while idle and queue:
                aid, actor = idle.pop()
                shard, attempts = queue.popleft()
                inflight[submit(actor, shard)] = (aid, actor, shard, attempts)
                stats.dispatched += 1
            if not starting and not inflight:
                if queue and not idle:
                    raise PoolError("no live actors are left to process the queue")
                continue
            # 2. Wait for a result or a started actor.
            done, _ = ray.wait(list(inflight) + list(starting), num_returns=1, timeout=wait_timeout_s)
            if on_tick:
                on_tick()
            for ref in done:
                if ref in starting:
                    aid, actor = starting.pop(ref)
                    try:
                        ray.get(ref)
                        idle.append((aid, actor))
                    except dead_errors as e:
                        lost(aid, actor, e)
                    continue
                aid, actor, shard, attempts = inflight.pop(ref)
                try:
                    result = ray.get(ref)
                except dead_errors as e:
                    if attempts + 1 > max_retries:
                        lost(aid, actor, e)
                        raise PoolError(f"shard {shard!r} lost its actor {attempts + 1} times (max_retries={max_retries})") from e
                    queue.appendleft((shard, attempts + 1))
                    stats.redispatched += 1
                    lost(aid, actor, e)
                    continue
                on_result(shard, result)
                stats.completed += 1
                stats.per_actor[aid] = stats.per_actor.get(aid, 0) + 1
                idle.append((aid, actor))
    finally:
        # release every actor, also on errors (they hold pipelines / GPUs and have names)
        for _, actor in idle + list(starting.values()) + [(a, b) for a, b, _, _ in inflight.values()]:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
    return stats
