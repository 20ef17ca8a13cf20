"""The layering of the package, checked from every module's imports (ast).

Data flows one way: a module imports only what stands below it,

    tools (cli, mount, fsck, inspect, ...) -> fuse -> fs -> engine / group_commit
        -> trans / recovery -> btree / journal / alloc -> superblock -> format
        -> device

btree, journal and alloc are siblings and import none of each other (the
engine wires them). Inside btree/ the same holds module by module (INNER):
BtreeSet (tree) is composed of mixins that call each other only through
self, so their imports still go one way. And no module re-exports: a name
is imported from the module that defines it (a package's __init__ may
gather its own submodules' names: that is the package's interface).
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "pyfs"

# Rank of each top-level part of the package: lower may not import higher.
LAYERS = {
    "device": 0,
    "format": 1,
    "superblock": 2,
    "btree": 3, "journal": 3, "alloc": 3,
    "trans": 4, "recovery": 4,
    "engine": 5, "group_commit": 5,
    "fs": 6,
    "fuse": 7, "fuse_loop": 7,
}
TOOLS = 8           # everything else: cli, mount, mkfs, resize, fsck, inspect, tools, ...
SIBLINGS = {"btree", "journal", "alloc"}
# Rank of each module inside a part: a module imports only lower ones.
INNER = {
    "btree": {
        "node": 0, "io": 0,                         # one node in memory / on disk
        "node_scan": 1, "cache": 1, "lookup": 1,
        "update": 2, "interior": 2, "write": 2,     # BtreeSet's mixins
        "tree": 3,                                  # BtreeSet
    },
}


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def part(mod: str) -> str:
    bits = mod.split(".")
    return bits[1] if len(bits) > 1 else ""


def rank(mod: str) -> int:
    return LAYERS.get(part(mod), TOOLS)


def imports(mod: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names, line) of every pyfs import of mod."""
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "pyfs" or target.startswith("pyfs."):
                out.append((target, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out.extend((a.name, [], node.lineno) for a in node.names
                       if a.name.startswith("pyfs"))
    return out


def defined(path: Path) -> set[str]:
    """Names a module defines at its top level."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_every_import_goes_down_the_stack():
    mods = modules()
    bad = []
    for mod, path in mods.items():
        for target, _names, line in imports(mod, path):
            if part(target) in ("", part(mod)):
                continue                    # the package root, or its own part
            if rank(target) > rank(mod) or (
                    part(mod) in SIBLINGS and part(target) in SIBLINGS):
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: {mod} imports {target}")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_module_re_exports_what_it_imported():
    mods = modules()
    bad = []
    for mod, path in mods.items():
        for target, names, line in imports(mod, path):
            tpath = mods.get(target)
            if tpath is None:
                continue                    # a submodule import
            is_pkg = tpath.name == "__init__.py"
            own = defined(tpath)
            for name in names:
                if name in own or f"{target}.{name}" in mods:
                    continue
                if is_pkg and any(name in defined(p) for m, p in mods.items()
                                  if m.startswith(target + ".")):
                    continue                # a package's own interface
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: {name} imported from "
                           f"{target}, which does not define it")
    assert not bad, "re-exported names:\n" + "\n".join(bad)


def test_the_layers_cover_the_package():
    """Every top-level part is placed (a new subsystem must be given a layer)."""
    parts = {part(m) for m in modules()} - {""}
    tools = parts - set(LAYERS)
    assert {"cli", "mount", "fsck"} <= tools
    assert not tools & {"btree", "journal", "alloc", "fs", "engine"}


def test_every_import_inside_a_part_goes_down():
    """Within a part listed in INNER, every module has a rank (a new module
    must be given one) and imports only modules of a lower rank."""
    mods = modules()
    bad = []
    for p, ranks in INNER.items():
        for mod, path in mods.items():
            bits = mod.split(".")
            if part(mod) != p or len(bits) < 3:
                continue                    # another part, or the package's __init__
            me = ranks.get(bits[2])
            if me is None:
                bad.append(f"{path.relative_to(PKG.parent)}: {mod} has no rank in INNER[{p!r}]")
                continue
            for target, _names, line in imports(mod, path):
                tbits = target.split(".")
                if part(target) == p and len(tbits) > 2 and ranks.get(tbits[2], me) >= me:
                    bad.append(f"{path.relative_to(PKG.parent)}:{line}: {mod} imports {target}")
    assert not bad, "imports against the order inside a part:\n" + "\n".join(bad)
