"""The package's import structure, checked by parsing every module with ``ast`` (no imports run).

* ``ray`` is imported only where it is allowed: the Ray plumbing, stage modules, serving, the
  pretraining job (and ``jobs/``, outside the package);
* the shared core imports no method, no world (MiniWorld) and no application layer (CLI, serving);
* a method imports no other method, and a stage module imports no other stage module;
* no import cycle exists between package modules (function-local imports included).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "digzsl_ray"

# Where `import ray` may appear (prefixes of module names).
RAY_ALLOWED = (
    "digzsl_ray.distributed.",  # the plumbing: cluster, pool, train loop
    "digzsl_ray.methods.*.stages.",  # stage modules of each method (any method) ...
    "digzsl_ray.stages.",  # ... and the shared stages
    "digzsl_ray.serve",  # serving (its deployments; parsing, settings and run reading stay Ray-free, below)
    "digzsl_ray.cli.serve",  # `digzsl serve`: starts a local cluster and Serve
    "digzsl_ray.pretrain.job",  # the Ray Train pretraining job
)
# Not the shared core: the methods and their registry, the worlds, the application layer.
NOT_CORE = ("digzsl_ray.methods", "digzsl_ray.miniworld", "digzsl_ray.cli", "digzsl_ray.serve", "digzsl_ray.api")


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


MODS = _modules()


@functools.lru_cache(maxsize=None)
def _imports(name: str) -> list[tuple[str, int]]:
    """Every module ``name`` imports (absolute names, relative imports resolved), with line numbers."""
    path = MODS[name]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, node.lineno))
            out += [(f"{mod}.{a.name}", node.lineno) for a in node.names if f"{mod}.{a.name}" in MODS]
    return out


def _internal(name: str) -> set[str]:
    return {m for m, _ in _imports(name) if m in MODS and m != name}


def _is_core(name: str) -> bool:
    if name == "digzsl_ray":  # the package's __init__: the Python API's names (lazily from digzsl_ray.api)
        return False
    return not any(name == p or name.startswith(p + ".") for p in NOT_CORE)


def test_the_checker_sees_the_package():
    assert "digzsl_ray.stages.contract" in MODS and "digzsl_ray.methods.digzsl.dct" in MODS
    assert ("ray", 10) not in _imports("digzsl_ray.config")
    assert any(m == "ray" for m, _ in _imports("digzsl_ray.distributed.pool"))


def _allowed(name: str, prefix: str) -> bool:
    if "*" in prefix:  # one package level, any name
        head, _, tail = prefix.partition("*")
        return name.startswith(head) and "." in name[len(head):] and name[len(head):].split(".", 1)[1].startswith(tail[1:])
    return name.startswith(prefix) or name == prefix.rstrip(".")


def test_ray_only_at_the_edges():
    bad = [f"{name}:{line}" for name in MODS for mod, line in _imports(name)
           if (mod == "ray" or mod.startswith("ray.")) and not any(_allowed(name, p) for p in RAY_ALLOWED)]
    assert not bad, f"ray imported outside the plumbing/stage/serve modules: {bad}"


def test_serving_parses_reads_and_configures_without_ray():
    """What a route checks, what serving reads from a run directory and the serve settings are
    tested without a cluster: those modules import neither Ray nor the web framework."""
    bad = [f"{name}:{line} {mod}" for name in ("digzsl_ray.serve.requests", "digzsl_ray.serve.rundir",
                                               "digzsl_ray.serve.settings", "digzsl_ray.serve.model")
           for mod, line in _imports(name) if mod.split(".")[0] in ("ray", "fastapi", "starlette")]
    assert not bad, bad


def test_shared_core_names_no_method_only_model():
    """The shared core says nothing about DIG-ZSL's CDM, not even in an example: a core module that
    needs it is method code that came back. (Learned tokens stay nameable: ``tokens`` is a key of
    version.json, the live service's per-class files, which any method may fill.)"""
    import re

    bad = [f"{name}:{i}" for name in MODS if _is_core(name)
           for i, line in enumerate(MODS[name].read_text().splitlines(), 1) if re.search(r"\bcdm\b", line, re.I)]
    assert not bad, bad


def test_shared_core_imports_no_method_world_or_app():
    bad = [f"{name} -> {dep}" for name in MODS if _is_core(name)
           for dep in _internal(name) if not _is_core(dep)]
    assert not bad, bad


def test_methods_are_independent_and_stages_do_not_import_stages():
    methods = {n.split(".")[2] for n in MODS if n.startswith("digzsl_ray.methods.") and n.count(".") >= 2}
    bad = []
    for name in MODS:
        if name.startswith("digzsl_ray.methods.") and name.count(".") >= 2:
            mine = name.split(".")[2]
            bad += [f"{name} -> {d}" for d in _internal(name)
                    if d.startswith("digzsl_ray.methods.") and d.count(".") >= 2 and d.split(".")[2] != mine
                    and d.split(".")[2] in methods]
        if ".stages." in name:
            bad += [f"{name} -> {d}" for d in _internal(name) if ".stages." in d and not d.startswith("digzsl_ray.stages.")
                    and d != name]
    assert not bad, bad


def test_no_import_cycles():
    graph = {name: _internal(name) for name in MODS}
    # a package imports its own submodules by design of Python; only module <-> module cycles count
    for name in graph:
        graph[name] = {d for d in graph[name] if not name.startswith(d + ".")}
    cycles, state = [], {}

    def visit(n, stack):
        state[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [])
    assert not cycles, cycles[:5]


def test_error_path_is_light():
    """Reporting a bad input imports nothing heavy: the CLI and the config loader stay torch-free."""
    import subprocess
    import sys

    code = ("import sys; from digzsl_ray.cli import main; rc = main(['config', 'show', '--set', 'cdm.epochs=0']); "
            "heavy = [m for m in ('torch', 'ray', 'pyarrow', 'matplotlib') if m in sys.modules]; "
            "print(rc, heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "2 []", r.stdout + r.stderr


# Shared modules that one method happens to be the only user of today, but that are generic by nature
# (an actor pool, multi-label metrics, ViT resizing): any other single-method module belongs to its method.
GENERIC_SINGLE_USER = {"digzsl_ray.distributed.pool", "digzsl_ray.metrics.multilabel", "digzsl_ray.models.vit"}


def test_method_only_code_lives_in_its_method():
    def owner(name: str) -> str:
        if name.startswith("digzsl_ray.methods.") and name.count(".") >= 3:
            return "method:" + name.split(".")[2]
        return "core" if _is_core(name) else name.split(".")[1]

    bad = []
    for mod in (m for m in MODS if _is_core(m)):
        users = {owner(n) for n in MODS if n != mod and mod in _internal(n)}
        methods = {u for u in users if u.startswith("method:")}
        if len(methods) == 1 and users <= methods | {"cli", "serve", "miniworld"} and mod not in GENERIC_SINGLE_USER:
            bad.append(f"{mod} (used by {sorted(users)})")
    assert not bad, f"core modules only one method uses: move them under methods/<name>/: {bad}"



def test_no_function_over_100_lines_in_methods_or_serve():
    """Methods and serving read as short steps: no function (nested ones included) over 100 lines."""
    long = []
    for area in ("methods", "serve"):
        for path in sorted((PKG / area).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > 100:
                        long.append(f"{path.relative_to(PKG.parent)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over 100 lines (split them into helpers): " + ", ".join(long)
