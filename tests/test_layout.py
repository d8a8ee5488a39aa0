"""The house rules of the layout (README "Layout"), read from the source with ``ast``: nothing is imported.

* The library (``nnunet_voco/``) never imports the programs built on it (pretrain, trainers, commands).
* The method (``nnunet_voco/voco/``) imports nothing of nnU-Net and nothing of the other wings.
* Only the nnU-Net door (``nnunet_voco/nnunet/``), the encoders and the trainers import nnunetv2.
* No import circle between modules, counting every import (also those inside functions).
* No source file over 400 lines; trainer files stay short.
* A package's ``__init__`` only re-exports: it defines no function and no class.
* Every command ends through the one exit mapping, ``nnunet_voco.command_exit``.
* What the package prints is ASCII: string literals other than docstrings hold no other character, so
  ``--help``, errors and reports print under any locale (an ASCII one raised UnicodeEncodeError).
"""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# repository folder -> package it is installed as (setup.py's package_dir)
ROOTS = {"nnunet_voco": "nnunet_voco", "pretrain": "nnunet_voco.pretrain", "trainers": "nnunet_voco.trainers",
         "commands": "nnunet_voco.commands"}


def _modules() -> dict[str, str]:
    """Installed module name -> file path, for every source file of the package folders."""
    found = {}
    for folder, package in ROOTS.items():
        for root, _, files in os.walk(os.path.join(REPO, folder)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(root, name)
                    rel = os.path.relpath(path, os.path.join(REPO, folder))[:-3].replace(os.sep, ".")
                    rel = rel[: -len(".__init__")] if rel.endswith("__init__") else rel
                    found[package if rel in ("", "__init__") else f"{package}.{rel}"] = path
    return found


MODULES = _modules()


def _imports(module: str, path: str) -> set[str]:
    """Absolute names of everything ``module`` imports (relative imports resolved)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def _internal(names: set[str]) -> set[str]:
    return {n for n in names if n in MODULES}


IMPORTS = {m: _imports(m, p) for m, p in MODULES.items()}


def test_the_library_never_imports_the_programs_built_on_it():
    upward = ("nnunet_voco.pretrain", "nnunet_voco.trainers", "nnunet_voco.commands")
    bad = {m: sorted(n for n in names if n.startswith(upward)) for m, names in IMPORTS.items()
           if not m.startswith(upward)}
    assert not {m: v for m, v in bad.items() if v}


def test_the_method_imports_only_the_method():
    bad = {m: sorted(n for n in names if n.startswith(("nnunet_voco", "nnunetv2")) and
                     not n.startswith("nnunet_voco.voco"))
           for m, names in IMPORTS.items() if m.startswith("nnunet_voco.voco")}
    assert not {m: v for m, v in bad.items() if v}


def test_nnunet_is_reached_only_through_its_door():
    allowed = ("nnunet_voco.nnunet", "nnunet_voco.trainers")
    bad = sorted(m for m, names in IMPORTS.items() if any(n.startswith("nnunetv2") for n in names)
                 and not m.startswith(allowed))
    assert not bad, f"these modules import nnunetv2 directly: {bad}; go through nnunet_voco.nnunet"


def test_no_import_circle():
    graph = {m: _internal(names) - {m} for m, names in IMPORTS.items()}
    # a package's __init__ that a submodule imports is the package's face; count it like any module
    state, stack, circles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in graph[m]:
            if state.get(n) == "open":
                circles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles


@pytest.mark.parametrize("module", sorted(MODULES))
def test_source_files_stay_small(module):
    lines = sum(1 for _ in open(MODULES[module], encoding="utf-8"))
    limit = 120 if module.startswith("nnunet_voco.trainers") else 400
    assert lines <= limit, f"{MODULES[module]} has {lines} lines (limit {limit}); split it by idea"


@pytest.mark.parametrize("module", sorted(m for m, p in MODULES.items() if p.endswith("__init__.py")))
def test_a_package_face_only_re_exports(module):
    tree = ast.parse(open(MODULES[module], encoding="utf-8").read())
    defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    assert not defined, f"{MODULES[module]} defines {defined}; move them into a module of their own and re-export"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("nnunet_voco.commands.")) +
                         ["nnunet_voco.pretrain.cli"])
def test_every_command_ends_through_the_one_exit_mapping(module):
    assert "nnunet_voco.command_exit" in IMPORTS[module], f"{MODULES[module]} maps exceptions to exit codes itself"


def _non_ascii_literals(path: str) -> list[str]:
    """String literals of a file, other than docstrings, that hold a non-ASCII character."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [f"line {node.lineno}: {node.value[:60]!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            and not node.value.isascii()]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_what_the_package_prints_is_ascii(module):
    assert not _non_ascii_literals(MODULES[module]), f"{MODULES[module]}: {_non_ascii_literals(MODULES[module])}"
