"""digzsl-ray: zero-shot learning by generating training data for classes that have no images.

The Python API (:mod:`digzsl_ray.api`): ``run`` a config into a run directory, ``open_run`` a finished
one (config, metrics, per-variant ablation, report and artefact paths), ``Classifier`` / ``classify``
images with a run's served model without Ray Serve, ``generate`` images of a class. Importing the
package loads neither torch nor Ray; a function loads what it needs when it is called.
"""

__all__ = ["Classifier", "Run", "classify", "generate", "open_run", "run"]


def __getattr__(name: str):
    if name in __all__:
        from digzsl_ray import api

        return getattr(api, name)
    raise AttributeError(f"module 'digzsl_ray' has no attribute {name!r}")
