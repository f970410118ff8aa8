"""The stage contract: what every pipeline stage of every method declares and implements.

A stage is a small class (:class:`Stage`) with

* ``name``: its ``digzsl`` subcommand (``train-classifier``) and its key in references;
* ``writes``: the run-directory paths it owns, declared once, here and nowhere else
  (``{"evaluation": "evaluation.json"}``); other stages refer to them as ``"evaluate:evaluation"``;
* ``reads``: references to upstream outputs whose *content* its output depends on;
* ``depends_on``: config keys whose values its output depends on: whole sections (``"evaluate"``) or
  single keys (``"models.clip"``). A section counts whole, minus fields marked
  ``affects_outputs=False`` where they are declared (:func:`digzsl_ray.config.runtime`), so a new
  setting invalidates stale outputs unless it says it cannot;
* ``fingerprint(ctx)``: a hash of those config values, the class split and the upstream contents;
* ``complete(ctx)``: its outputs exist and carry the current fingerprint;
* ``run(ctx)``: does the work (resuming where it can) and returns what the CLI prints.
* ``curves(ctx)``: optional, its curves read back from its outputs (experiment tracking).

A :class:`Method` is a config class, a stage list in pipeline order and the ablation variants.
``digzsl run`` iterates the list; the per-stage subcommands and their ``--help`` are built from
it. Stages never import each other: they reach each other's outputs through :meth:`Context.path`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from digzsl_ray.config import section_value
from digzsl_ray.errors import MissingInputError

log = logging.getLogger("digzsl")


def fingerprint(*parts) -> str:
    """A short stable hash of what an output depends on (settings and upstream outputs).

    Stored with the output; a stage whose stored fingerprint differs is redone instead of reused,
    and Ray Train run names carry it, so a changed setting never resumes an old run's checkpoint.
    """
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:10]


def file_sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] if Path(path).is_file() else ""


class Stage:
    """Base class of a pipeline stage (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    writes: ClassVar[dict[str, str]] = {}
    reads: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()  # upstream outputs that must exist (content not fingerprinted)
    depends_on: ClassVar[tuple[str, ...]] = ()
    needs_ray: ClassVar[bool] = True

    def fingerprint(self, ctx: "Context", *extra) -> str:
        parts = {
            "stage": self.name,
            "config": {key: section_value(ctx.cfg, key) for key in self.depends_on},
            "classes": list(ctx.split.classes), "unseen": list(ctx.split.unseen),
            "inputs": {ref: file_sha(ctx.path(ref)) for ref in self.reads},
        }
        return fingerprint(parts, *extra)

    def complete(self, ctx: "Context") -> bool:
        raise NotImplementedError

    def run(self, ctx: "Context") -> Any:
        raise NotImplementedError

    def cached(self, ctx: "Context") -> Any:
        """What a complete stage returns without running (default: nothing)."""
        return None

    def curves(self, ctx: "Context") -> dict[str, list[tuple[int, float]]]:
        """The per-epoch / per-update curves of the stage's outputs, read back from the run directory:
        ``{series: [(step, value), ...]}`` (experiment tracking logs them; default: none)."""
        return {}

    def required(self, ctx: "Context") -> tuple[str, ...]:
        """References that must exist before the stage may start (default: ``reads`` + ``requires``)."""
        return tuple(self.reads) + tuple(self.requires)

    # CLI hooks: extra flags of the subcommand, and what it prints.
    @classmethod
    def add_arguments(cls, parser) -> None:
        pass

    def describe(self, ctx: "Context", result: Any) -> str:
        return json.dumps(result, indent=2, default=str) if result is not None else ""

    def __repr__(self) -> str:
        return f"<stage {self.name}>"


def check_inputs(stage: Stage, ctx: "Context") -> None:
    """Every upstream output the stage reads exists, or a :class:`MissingInputError` names the stage
    to run first (checked before any cluster starts or model loads)."""
    for ref in stage.required(ctx):
        ctx.require(ref)


def execute(stage: Stage, ctx: "Context") -> Any:
    """Run ``stage`` unless it is complete (then say so and return its cached result)."""
    check_inputs(stage, ctx)
    if stage.complete(ctx):
        log.info("%s: complete, skipped", stage.name)
        ctx.state.setdefault("skipped_stages", set()).add(stage.name)
        return stage.cached(ctx)
    stale = [rel for rel in stage.writes.values() if (ctx.rd.root / rel).exists()]
    if stale:
        log.info("%s: %s exist(s) but were made with other settings, an older version, or are incomplete: "
                 "redoing what differs", stage.name, ", ".join(sorted(stale)[:3]))
    return stage.run(ctx)


@dataclass(frozen=True)
class Method:
    """A method: its run config class, its stages in pipeline order, its ablation variants."""

    name: str
    description: str
    config: type
    stages: tuple[Stage, ...]
    variants: tuple[str, ...]  # ablation variants, in the order tables and plots show them
    main_variant: str  # the variant whose figures are metrics.json's top-level keys
    serve_model: str  # reference of the classifier folder the endpoint serves ("stage:output")
    report: Any = None  # (Context) -> Path: builds OUT/report.html (after `digzsl run` records its memory)
    multi_label: bool = False  # whether the method takes label sets (coco, nuswide, MiniWorld scenes)
    headline: Any = None  # (metrics, variants) -> str: the table `digzsl run` prints (default: single-label ZSL)
    serve_loader: Any = None  # (classifier_dir, device) -> module: uint8 images -> per-label probabilities (multi-label)
    # or logits (single-label, softmaxed by serving); None: the shared single-label classifier
    add_class: Any = None  # (run_dir, job_dir, name, reporter, versions, cfg, split) -> result: one class added to
    # a served run (docs/live.md); None: the method's runs cannot grow
    add_class_stages: tuple[str, ...] = ()  # the stage names add_class reports, in order
    generation: Any = None  # (cfg) -> (requests -> [[png bytes] per request]): images of a served run's classes
    # (POST /v1/generate, digzsl_ray.generate); None: the method's runs do not draw images on request
    tokens: Any = None  # (run_dir) -> {class name: file}: the learned token of each of a run's classes, which
    # its served version 0 carries for generation; None: none
    preflight: Any = None  # (cfg) -> None: raises ConfigError for settings the models cannot take, before any work
    served: Any = None  # (cfg) -> "stage:output": the classifier a run of this config serves (default serve_model)

    def serve_ref(self, cfg) -> str:
        """The classifier folder reference the endpoint serves for a run of ``cfg`` (a method whose
        main variant depends on its settings says so through ``served``)."""
        return self.served(cfg) if self.served is not None else self.serve_model

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"method {self.name!r} has no stage {name!r}; stages: {[s.name for s in self.stages]}")

    def output(self, root: str | Path, ref: str) -> Path:
        """The run-directory path of ``"stage:output"``."""
        stage, _, out = ref.partition(":")
        writes = self.stage(stage).writes
        if out not in writes:
            raise KeyError(f"stage {stage!r} writes no {out!r}; it writes {sorted(writes)}")
        return Path(root) / writes[out]


@dataclass
class Context:
    """What a stage runs with: the run config, the run directory, the class split, the method."""

    cfg: Any
    rd: Any  # digzsl_ray.stages.rundir.RunDir
    split: Any  # digzsl_ray.data.ZSLSplit
    method: Method
    progress: bool = True
    args: Any = None  # the subcommand's parsed flags (None under `digzsl run`)
    state: dict = field(default_factory=dict)  # per-invocation memo (e.g. a loaded model)

    def path(self, ref: str) -> Path:
        return self.method.output(self.rd.root, ref)

    def require(self, ref: str) -> Path:
        """The path of an upstream output, or a :class:`MissingInputError` naming the stage to run."""
        p = self.path(ref)
        if not p.exists():
            stage = ref.partition(":")[0]
            raise MissingInputError(f"{p}: missing; run `digzsl {stage} --config ... --out {self.rd.root}` first "
                                    f"(or `digzsl run`, which runs every stage in order)")
        return p
