"""Every public name of ``medurwkv_net`` has a docstring.

Every module of the package is read with :mod:`ast` (nothing is imported). Public are: the modules whose path
has no component starting with ``_`` (``__init__`` and ``__main__`` count as public), and in them the classes,
functions and methods whose names do not start with ``_``, at module level, in classes, and in ``if``/``try``
blocks of either (not inside functions: nested functions are not public). Dunder methods are skipped, except
``__init__``: it needs its own docstring unless it takes no arguments besides ``self`` or the class docstring
documents the arguments (an ``Args:`` section). ``typing.overload`` stubs are skipped.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, List, Sequence, Union

PACKAGE = "medurwkv_net"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

FunctionNode = Union[ast.FunctionDef, ast.AsyncFunctionDef]


def module_name(path: Path, package_dir: Path, package: str) -> str:
    """The dotted name of the module at ``path`` inside ``package_dir``."""
    parts = list(path.relative_to(package_dir).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def _is_public_module(path: Path, package_dir: Path) -> bool:
    parts = path.relative_to(package_dir).with_suffix("").parts
    return not any(p.startswith("_") and p not in ("__init__", "__main__") for p in parts)


def _is_overload(node: FunctionNode) -> bool:
    return any(
        (isinstance(d, ast.Name) and d.id == "overload") or (isinstance(d, ast.Attribute) and d.attr == "overload")
        for d in node.decorator_list
    )


def _takes_arguments(node: FunctionNode) -> bool:
    args = node.args
    named = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    return len(named) > 1 or args.vararg is not None or args.kwarg is not None


def _definitions(body: Sequence[ast.stmt]) -> Iterator[Union[FunctionNode, ast.ClassDef]]:
    """The classes and functions of a module or class body, including those in ``if``/``try`` blocks."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node
        elif isinstance(node, ast.If):
            yield from _definitions(node.body)
            yield from _definitions(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                yield from _definitions(block)


def _missing_in(body: Sequence[ast.stmt], prefix: str, owner: ast.ClassDef | None) -> Iterator[str]:
    for node in _definitions(body):
        name = node.name
        qualname = f"{prefix}{name}"
        if isinstance(node, ast.ClassDef):
            if name.startswith("_"):
                continue
            if ast.get_docstring(node) is None:
                yield qualname
            yield from _missing_in(node.body, f"{qualname}.", node)
            continue
        if _is_overload(node):
            continue
        if name == "__init__" and owner is not None:
            class_doc = ast.get_docstring(owner) or ""
            if ast.get_docstring(node) is None and _takes_arguments(node) and "Args:" not in class_doc:
                yield qualname
            continue
        if name.startswith("_"):
            continue  # private names and the other dunder methods
        if ast.get_docstring(node) is None:
            yield qualname


def missing_docstrings(package_dir: Path, package: str) -> List[str]:
    """``module:qualname`` of every public module, class, function and method without a docstring."""
    missing: List[str] = []
    for path in sorted(package_dir.rglob("*.py")):
        if not _is_public_module(path, package_dir):
            continue
        module = module_name(path, package_dir, package)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        if ast.get_docstring(tree) is None:
            missing.append(f"{module}:<module>")
        missing += [f"{module}:{q}" for q in _missing_in(tree.body, "", None)]
    return missing


def test_every_public_name_has_a_docstring():
    missing = missing_docstrings(PACKAGE_DIR, PACKAGE)
    assert not missing, f"{len(missing)} public name(s) without a docstring:\n" + "\n".join(missing)


def test_the_check_finds_missing_docstrings(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""Package."""\n')
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "_private.py").write_text("def undocumented():\n    pass\n")
    (pkg / "sub" / "mod.py").write_text(
        '"""A module."""\n'
        "import typing\n\n"
        "def bare(x):\n    def nested():\n        pass\n    return x\n\n"
        "def _helper():\n    pass\n\n"
        "@typing.overload\ndef over(x: int) -> int: ...\n\n"
        'def over(x):\n    """Documented."""\n    return x\n\n'
        "class Plain:\n"
        "    def __init__(self, a):\n        self.a = a\n\n"
        "    def __repr__(self):\n        return 'Plain'\n\n"
        "    def method(self):\n        pass\n\n"
        "    @property\n    def value(self):\n        return 1\n\n"
        "    class Inner:\n        pass\n\n"
        "class Documented:\n"
        '    """A class.\n\n    Args:\n        a: a value.\n    """\n\n'
        "    def __init__(self, a):\n        self.a = a\n\n"
        "    def _private(self):\n        pass\n\n"
        "class NoArgs:\n"
        '    """No constructor arguments."""\n\n'
        "    def __init__(self):\n        self.a = 1\n\n"
        "if True:\n    def conditional():\n        pass\n"
    )
    assert missing_docstrings(pkg, "pkg") == [
        "pkg.sub:<module>",
        "pkg.sub.mod:bare",
        "pkg.sub.mod:Plain",
        "pkg.sub.mod:Plain.__init__",
        "pkg.sub.mod:Plain.method",
        "pkg.sub.mod:Plain.value",
        "pkg.sub.mod:Plain.Inner",
        "pkg.sub.mod:conditional",
    ]
