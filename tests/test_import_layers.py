"""The package's rooms and their one-way imports (docs/DESIGN.md, "Rooms").

Every module of ``medurwkv_net`` is read with :mod:`ast` (nothing is imported): static imports at any depth
(module level and inside functions), and ``importlib.import_module("medurwkv_net....")`` with a string
literal. Imports under ``if TYPE_CHECKING:`` do not run and are skipped. Each module belongs to a room (its
first package component, or its own name for a top-level module); a room may import its own modules and
the rooms of the layers below its own, never a room of its own layer or above. No two modules may import
each other, directly or through others (a cycle), whatever their rooms.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

PACKAGE = "medurwkv_net"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

#: the layers, lowest first; the rooms of one layer do not import each other
LAYERS: Tuple[Tuple[str, ...], ...] = (
    ("ops", "core"),  # the Bi-WKV op (torch only); errors, atomic writes, safe weight files
    ("networks",),  # VRWKV, Med-URWKV and their blocks: no file or network I/O
    ("pretrained", "export", "onnx_export"),  # state-dict work (filter, resize, inflate, fetch); export
    ("data",),  # readers of the releases, datalists, the mask/image conversions, the pair check
    ("reliability",),  # verification, checkpoints, guards, inferers (may import data, never the reverse)
    ("bundle", "hub"),  # what knows bundle configs and their ids
    ("cli",),  # the command line: the commands and their printing
    ("__main__",),  # ``python -m medurwkv_net``: calls the command line
)
#: the package's own ``__init__`` (a lazy facade) sits above every room
ROOT_ROOM = "<package>"


@dataclass(frozen=True)
class Import:
    """One import statement: who imports what, and where."""

    file: Path
    line: int
    importer: str
    imported: str


def module_name(path: Path, package_dir: Path, package: str) -> str:
    """The dotted name of the module at ``path`` inside ``package_dir``."""
    parts = list(path.relative_to(package_dir).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _run_time_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _base_of(importer: str, is_package: bool, level: int, module: Optional[str]) -> str:
    """The absolute module a (possibly relative) ``from ... import`` names."""
    if level == 0:
        return module or ""
    parts = importer.split(".")
    if not is_package:
        parts = parts[:-1]
    parts = parts[: len(parts) - (level - 1)]
    return ".".join(parts + ([module] if module else []))


def _literal_import_module(node: ast.Call) -> Optional[Tuple[str, Optional[str]]]:
    """``(name, package)`` of ``importlib.import_module("name"[, "package"])`` with string literals."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name != "import_module" or not node.args:
        return None
    args = [a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) else None for a in node.args[:2]]
    if args[0] is None:
        return None
    return args[0], (args[1] if len(args) > 1 else None)


def collect_imports(package_dir: Path, package: str) -> Tuple[List[str], List[Import]]:
    """The modules of the package and every import of one of its modules (resolved to a module name)."""
    files = sorted(p for p in package_dir.rglob("*.py") if "__pycache__" not in p.parts)
    modules = [module_name(p, package_dir, package) for p in files]
    known = set(modules)
    out: List[Import] = []
    for path, importer in zip(files, modules):
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _run_time_nodes(tree):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _base_of(importer, is_package, node.level, node.module)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in known else base)
            elif isinstance(node, ast.Call):
                found = _literal_import_module(node)
                if found is not None:
                    name, anchor = found
                    if name.startswith("."):
                        level = len(name) - len(name.lstrip("."))
                        anchor_pkg = anchor or importer
                        name = _base_of(anchor_pkg, True, level, name.lstrip(".") or None)
                    targets = [name]
            line = getattr(node, "lineno", 0)
            for target in targets:
                if target == package or target.startswith(package + "."):
                    out.append(Import(path, line, importer, _known_module(target, known)))
    unique = {(i.file, i.line, i.imported): i for i in out}
    return modules, sorted(unique.values(), key=lambda i: (str(i.file), i.line, i.imported))


def _known_module(name: str, known: set) -> str:
    """``name`` or, for ``package.module.attribute``, the module that holds the attribute."""
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def room_of(module: str, package: str) -> str:
    """The room of a module: its first component below the package (``ROOT_ROOM`` for the package)."""
    rest = module[len(package) + 1 :] if module != package else ""
    return rest.split(".")[0] if rest else ROOT_ROOM


def _levels(layers: Sequence[Sequence[str]]) -> Dict[str, int]:
    levels = {room: i for i, layer in enumerate(layers) for room in layer}
    levels[ROOT_ROOM] = len(layers)
    return levels


def _where(imp: Import, root: Path) -> str:
    return f"{imp.file.relative_to(root).as_posix()}:{imp.line}"


def layer_problems(package_dir: Path, package: str, layers: Sequence[Sequence[str]]) -> List[str]:
    """One message per module without a room and per import into a room of the same or a higher layer."""
    modules, imports = collect_imports(package_dir, package)
    levels = _levels(layers)
    root = package_dir.parent
    problems = [
        f"{module}: its room '{room_of(module, package)}' is not in the rooms table; add it to LAYERS "
        "(tests/test_import_layers.py) and to docs/DESIGN.md"
        for module in modules
        if room_of(module, package) not in levels
    ]
    for imp in imports:
        src, dst = room_of(imp.importer, package), room_of(imp.imported, package)
        if src == dst or src not in levels or dst not in levels:
            continue
        if levels[dst] >= levels[src]:
            kind = "a higher" if levels[dst] > levels[src] else "the same"
            problems.append(
                f"{_where(imp, root)}: '{imp.importer}' (room '{src}') imports '{imp.imported}' (room '{dst}', "
                f"{kind} layer): move the code it needs into a lower room, or the importing code up"
            )
    return problems


def cycle_problems(package_dir: Path, package: str) -> List[str]:
    """One message per import cycle (a strongly connected group of modules), naming each import in it."""
    modules, imports = collect_imports(package_dir, package)
    edges: Dict[str, Dict[str, Import]] = {m: {} for m in modules}
    for imp in imports:
        if imp.imported in edges and imp.imported != imp.importer:
            edges[imp.importer].setdefault(imp.imported, imp)
    root = package_dir.parent
    problems = []
    for group in _strongly_connected(edges):
        if len(group) < 2:
            continue
        inside = sorted(
            (imp for m in group for dst, imp in edges[m].items() if dst in group), key=lambda i: (i.importer, i.line)
        )
        lines = "; ".join(f"{_where(i, root)} '{i.importer}' imports '{i.imported}'" for i in inside)
        problems.append(f"import cycle between {sorted(group)}: {lines}")
    return problems


def _strongly_connected(edges: Dict[str, Dict[str, Import]]) -> List[set]:
    """Tarjan's strongly connected components, iteratively."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: set = set()
    groups: List[set] = []
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(edges[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                groups.append(group)
    return groups


# ---------------------------------------------------------------------------------------------- tests
def test_every_import_goes_to_a_lower_room():
    problems = layer_problems(PACKAGE_DIR, PACKAGE, LAYERS)
    assert not problems, "imports against the rooms (docs/DESIGN.md, Rooms):\n" + "\n".join(problems)


def test_no_import_cycle():
    problems = cycle_problems(PACKAGE_DIR, PACKAGE)
    assert not problems, "\n".join(problems)


def test_rooms_table_matches_the_design_notes():
    design = (PACKAGE_DIR.parent / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    section = design.split("## Rooms", 1)
    assert len(section) == 2, "docs/DESIGN.md has no '## Rooms' section"
    table = section[1].split("\n## ", 1)[0]
    for layer in LAYERS:
        for room in layer:
            assert f"`{room}`" in table, f"room '{room}' of LAYERS is not in the Rooms section of docs/DESIGN.md"


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def synthetic(tmp_path):
    """A small package ``pkg`` with rooms ``low`` < ``high``, an upward import and a cycle."""
    pkg = tmp_path / "pkg"
    _write(pkg, "__init__.py", "")
    _write(pkg, "low/__init__.py", "from .a import f\n")
    _write(pkg, "low/a.py", "def f():\n    from pkg.high.b import g\n    return g\n")
    _write(pkg, "low/c.py", "from . import d\n")
    _write(pkg, "low/d.py", "import importlib\n\nC = importlib.import_module('pkg.low.c')\n")
    _write(pkg, "low/typed.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.high import b\n")
    _write(pkg, "high/__init__.py", "")
    _write(pkg, "high/b.py", "from ..low import c\n\ndef g():\n    return c\n")
    _write(pkg, "stray.py", "")
    return pkg


def test_an_upward_import_is_reported_with_file_line_and_module(synthetic):
    problems = layer_problems(synthetic, "pkg", (("low",), ("high",)))
    upward = [p for p in problems if "imports" in p]
    assert len(upward) == 1, problems
    assert upward[0].startswith("pkg/low/a.py:2: 'pkg.low.a' (room 'low') imports 'pkg.high.b' (room 'high'")
    assert [p for p in problems if "imports" not in p] == [
        "pkg.stray: its room 'stray' is not in the rooms table; add it to LAYERS (tests/test_import_layers.py) "
        "and to docs/DESIGN.md"
    ]


def test_a_cycle_is_reported_with_each_import(synthetic):
    problems = cycle_problems(synthetic, "pkg")
    assert len(problems) == 1, problems
    assert "['pkg.low.c', 'pkg.low.d']" in problems[0]
    assert "pkg/low/c.py:1 'pkg.low.c' imports 'pkg.low.d'" in problems[0]
    assert "pkg/low/d.py:3 'pkg.low.d' imports 'pkg.low.c'" in problems[0]


def test_same_layer_and_type_checking_imports(synthetic):
    _write(synthetic, "side/__init__.py", "from pkg.low import c\n")
    _write(synthetic, "low/e.py", "from pkg.side import c\n")
    problems = layer_problems(synthetic, "pkg", (("low", "side"), ("high", "stray")))
    same = sorted(p for p in problems if "same layer" in p)
    assert len(same) == 2, problems
    assert same[0].startswith("pkg/low/e.py:1: 'pkg.low.e' (room 'low') imports 'pkg.side'")
    assert same[1].startswith("pkg/side/__init__.py:1: 'pkg.side' (room 'side') imports 'pkg.low.c'")
    assert not any("typed.py" in p for p in problems)
