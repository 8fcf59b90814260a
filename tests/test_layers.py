"""The layer order of blockyard's packages, checked on the imports themselves.

Every module under src/blockyard is parsed with `ast`; every import counts, also those inside
functions and under ``if TYPE_CHECKING:`` (a lazy import is still a dependency, only a hidden
one). The order, bottom first:

- bottom: `errors`, `model` (the values the layers exchange), `exec` (the one command runner
  and process helpers), `failpoints` (fault injection any layer may carry) and `rbdimage` (the
  librbd handle the rbd backend and the rbd connector share), `statuses` (the status names,
  which the database models and the compute agent name too). `config` is not here: only the
  service, the API, the CLI and the compute agent read it; drivers, targets and connectors
  get plain option dicts, so the bottom stays what every layer really needs;
- drivers: `backends`, `targets`, `connectors`: siblings, built on the bottom only, never on
  each other;
- core, in this order: `config`, `db`, `states`, `service` (which composes drivers with
  targets);
- `rest`: the HTTP edge both servers share (fault bodies, request guards, JSON schemas), on
  the bottom only;
- top: `api` and `compute` (siblings: the compute agent talks to the volume service over
  HTTP only, and never imports service, backends, targets or db);
- entry points: `cli`, `migrate_cli`; nothing but `cli` imports `api`.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

#: bottom first; a unit may import units of lower layers, and units of its own layer unless
#: the layer is of siblings
LAYERS: list[tuple[frozenset[str], bool]] = [  # (units, siblings)
    (frozenset({"errors", "model", "exec", "failpoints", "rbdimage", "statuses", "identity",
                "policy", "service_auth"}), False),
    (frozenset({"backends", "targets", "connectors"}), True),
    (frozenset({"config"}), False),
    (frozenset({"db"}), False),
    (frozenset({"states"}), False),
    (frozenset({"service"}), False),
    (frozenset({"rest"}), False),
    (frozenset({"api", "compute"}), True),
    (frozenset({"cli", "migrate_cli"}), False),
]
#: what a unit must not import even though it sits above it
FORBIDDEN = {
    "compute": frozenset({"service", "backends", "targets", "db", "states", "api"}),
    "rest": frozenset({"service", "backends", "targets", "connectors", "db", "states"}),
}
#: the only units besides api itself that may import api
API_IMPORTERS = frozenset({"api", "cli"})
#: known exceptions, module → module, each with its reason; an entry that no longer occurs
#: fails the test, so the list only shrinks (today it is empty: the HTTP edge both servers
#: share lives in `rest`, below them both)
EXCEPTIONS: frozenset[tuple[str, str]] = frozenset()


def unit_of(module: str) -> str:
    """``blockyard.backends.rbd`` → ``backends``; ``blockyard.cli`` → ``cli``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(source: str, module: str, is_package: bool = False) -> Iterator[str]:
    """The blockyard modules `module` imports, wherever the import statement is."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # `from blockyard.api import guard`, `from . import sparse`: names may be modules
            names = [f"{origin}.{alias.name}" if not node.module
                     or _is_module(f"{origin}.{alias.name}") else origin
                     for alias in node.names]
        else:
            continue
        yield from (n for n in names if n == "blockyard" or n.startswith("blockyard."))


@functools.cache
def all_imports() -> tuple[tuple[str, str], ...]:
    """(importer, imported) for every import in every module of src/blockyard."""
    edges = []
    for path in sorted((SRC / "blockyard").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package else parts)
        edges += [(module, imported)
                  for imported in imports_of(path.read_text(), module, is_package)]
    return tuple(edges)


def _layer(unit: str) -> tuple[int, bool] | None:
    for rank, (units, siblings) in enumerate(LAYERS):
        if unit in units:
            return rank, siblings
    return None


def violations(edges: Iterable[tuple[str, str]]) -> list[str]:
    """Why each import breaks the order (empty: none does)."""
    found = []
    for importer, imported in edges:
        src, dst = unit_of(importer), unit_of(imported)
        if not src or not dst or src == dst or (importer, imported) in EXCEPTIONS:
            continue
        where, what = _layer(src), _layer(dst)
        if where is None or what is None:
            found.append(f"{importer} -> {imported}: place {src if where is None else dst} "
                         f"in a layer (tests/test_layers.py)")
        elif what[0] > where[0]:
            found.append(f"{importer} -> {imported}: {src} may not import {dst}, a layer above")
        elif what[0] == where[0] and where[1]:
            found.append(f"{importer} -> {imported}: {src} and {dst} are siblings")
        elif dst in FORBIDDEN.get(src, ()):
            found.append(f"{importer} -> {imported}: {src} never imports {dst}")
        elif dst == "api" and src not in API_IMPORTERS:
            found.append(f"{importer} -> {imported}: only {sorted(API_IMPORTERS)} import api")
    return found


def test_blockyard_keeps_its_layer_order() -> None:
    assert violations(all_imports()) == []


def test_every_exception_still_occurs() -> None:
    assert EXCEPTIONS - set(all_imports()) == set()


# ---------------------------------------------------------------------------- the checker


@pytest.mark.parametrize(("importer", "imported", "why"), [
    ("blockyard.backends.rbd", "blockyard.connectors.rbd", "siblings"),
    ("blockyard.targets.tgt", "blockyard.backends.base", "siblings"),
    ("blockyard.model", "blockyard.backends.base", "a layer above"),
    ("blockyard.exec", "blockyard.config", "a layer above"),
    ("blockyard.connectors.properties", "blockyard.service.attachments", "a layer above"),
    ("blockyard.db.models", "blockyard.states", "a layer above"),
    ("blockyard.service.volumes", "blockyard.api.wire", "a layer above"),
    ("blockyard.compute.manager", "blockyard.service.volumes", "never imports service"),
    ("blockyard.compute.disks", "blockyard.backends", "never imports backends"),
    ("blockyard.compute.api", "blockyard.api.wire", "siblings"),
    ("blockyard.migrate_cli", "blockyard.api.app", "only"),
    ("blockyard.newthing", "blockyard.model", "place newthing in a layer"),
])
def test_the_checker_names_a_violation(importer: str, imported: str, why: str) -> None:
    found = violations([(importer, imported)])
    assert len(found) == 1 and why in found[0], found


@pytest.mark.parametrize(("importer", "imported"), [
    ("blockyard.backends.rbd", "blockyard.rbdimage"),
    ("blockyard.targets.tgt", "blockyard.exec"),
    ("blockyard.rbdimage", "blockyard.model"),
    ("blockyard.service.runtime", "blockyard.targets"),
    ("blockyard.compute.manager", "blockyard.connectors"),
    ("blockyard.cli", "blockyard.api.app"),
    ("blockyard.connectors.rbd", "blockyard.connectors.base"),
])
def test_the_checker_lets_the_order_pass(importer: str, imported: str) -> None:
    assert violations([(importer, imported)]) == []


def test_hidden_imports_count() -> None:
    """Imports inside functions and TYPE_CHECKING blocks, relative or not, are dependencies."""
    source = '''
from typing import TYPE_CHECKING
from . import sparse
from ..errors import BackendError
from blockyard import targets

if TYPE_CHECKING:
    from blockyard.connectors.base import Device

def lazy():
    import blockyard.service.volumes
    from .exports import load_export
'''
    found = set(imports_of(source, "blockyard.backends.file"))
    assert found == {"blockyard.backends.sparse", "blockyard.errors", "blockyard.targets",
                     "blockyard.connectors.base", "blockyard.service.volumes",
                     "blockyard.backends.exports"}
    assert set(imports_of("from .base import X", "blockyard.connectors", is_package=True)) == {
        "blockyard.connectors.base"}
    assert len(violations(("blockyard.backends.file", m) for m in found)) == 3
