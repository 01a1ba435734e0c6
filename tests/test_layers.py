"""The package's layering: no import cycles between modules, and the inference path (faces → models →
predictions) loads nothing from training, fairness or the occlusion synthesizer."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import agelens

PKG = Path(agelens.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imported_modules(path: Path) -> set[str]:
    """The agelens modules named by `from X import ...` / `import X` anywhere in a file (X itself, not its names)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")
            out.add(".".join(base[:len(base) - (node.level - 1)] + ([node.module] if node.module else [])))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("agelens"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("agelens"))
    return out


def test_every_import_names_something_that_exists():
    """Deferred imports run only on some paths: a moved module or function must not leave one of them dangling."""
    import importlib

    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    bad = sorted(f"{m}: {d}" for m, p in files.items() for d in _imported_modules(p) if d not in files)
    assert not bad, bad
    for m, p in files.items():
        package = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")
                mod = ".".join(base[:len(base) - (node.level - 1)] + ([node.module] if node.module else []))
            elif (node.module or "").startswith("agelens"):
                mod = node.module
            else:
                continue
            target = importlib.import_module(mod)
            bad += [f"{m}: from {mod} import {a.name}" for a in node.names
                    if not hasattr(target, a.name) and f"{mod}.{a.name}" not in files]
    assert not bad, bad


def _imports(path: Path) -> set[str]:
    """agelens modules a module imports anywhere, deferred (in-function) imports included: a cycle through a deferred
    import is still two layers that need each other. `if TYPE_CHECKING:` blocks are left out (they never run)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for child in node.body for n in ast.walk(child)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("agelens"):
                out.add(mod)
                out.update(f"{mod}.{a.name}" for a in node.names)  # `from . import x` may name a submodule
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("agelens"))
    return out


def test_no_import_cycles():
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {m: {d for d in _imports(p) if d in files and d != m} for m, p in files.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" → ".join(c) for c in cycles)


# the inference path and what it stands on; evaluation sits above it, training and fairness above that
INFERENCE = ("agelens.inference", "agelens.faces", "agelens.models", "agelens.serve", "agelens.export",
             "agelens.imageio", "agelens.numerics", "agelens.utils", "agelens.errors")
ABOVE_INFERENCE = ("agelens.train", "agelens.fairness", "agelens.occlusion.synth", "agelens.occlusion.families",
                   "agelens.occlusion.paper", "agelens.occlusion.tool", "agelens.data.dataset", "agelens.evaluate",
                   "agelens.cli")


def test_layers_import_only_downwards():
    """Statically, deferred imports included: the inference path imports nothing of evaluation, training, fairness
    or the occluder synthesizer, and evaluation nothing of training or fairness (before: evaluate.calibrate took
    its model loading from fairness.evaluate, and evaluate.runner the model fingerprint from fairness.knn)."""
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    rules = [(INFERENCE, ABOVE_INFERENCE), (("agelens.evaluate",), ("agelens.train", "agelens.fairness", "agelens.cli"))]
    bad = sorted(f"{m} imports {d}" for low, high in rules for m, p in files.items() if m.startswith(low)
                 for d in _imports(p) if d in files and d.startswith(high))
    assert not bad, bad


def test_predicting_loads_no_training_code(astronaut_path):
    code = f"""
import sys
from agelens import AgeEstimator
for backend in ("torch", "onnx"):
    est = AgeEstimator.from_pretrained(backend=backend)
    assert est.predict({astronaut_path!r})
bad = sorted(m for m in sys.modules if m.startswith(("agelens.train", "agelens.fairness", "agelens.occlusion.synth",
                                                      "agelens.occlusion.families", "agelens.data.dataset")))
print("LOADED", bad)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "LOADED []" in out.stdout, out.stdout
