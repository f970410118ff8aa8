"""The live service's shared core: immutable model versions (:mod:`.versions`), add-class jobs
(:mod:`.jobs`), class-name checks (:mod:`.names`) and bearer-token access (:mod:`.auth`); its
metrics are Ray plumbing (:mod:`digzsl_ray.distributed.metrics`).

A method that can add classes to a served run sets ``Method.add_class`` (DIG-ZSL does:
:mod:`digzsl_ray.methods.digzsl.addclass`); everything here is method-agnostic. docs/live.md.
"""
