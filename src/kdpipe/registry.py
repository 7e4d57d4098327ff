"""Registries whose names are known without importing their entries.

params.yaml names methods, architectures and data sets; every stage validates those names, but
a stage must import (and so depend on, in dvc.yaml) only the code it runs. A ``Registry`` lists
its names from file names (or a small table of name -> module) and imports an entry's module the
first time the entry is looked up; the module registers the entry as it is imported. A name
family too large to list (``timm:<name>``) is a prefix whose module registers a resolver that
builds the entry for a name when first asked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """``name -> entry``. With ``directory``, every ``<name>.py`` there (not ``_*`` and not
    ``__init__``) is the module of entry ``name``; with ``modules``, the table says which module
    of ``package`` holds each name. ``prefixes`` maps a name prefix to the module whose
    ``add_resolver`` call resolves the names that start with it (not listed by ``names()``)."""

    def __init__(self, kind: str, package: str, directory: Path | None = None, modules: dict[str, str] | None = None,
                 prefixes: dict[str, str] | None = None):
        if (directory is None) == (modules is None):
            raise ValueError("a registry takes a directory or a table of modules")
        self.kind, self.package = kind, package
        self._directory, self._modules = directory, modules
        self._prefixes = dict(prefixes or {})
        self._resolvers: dict[str, Callable[[str], T]] = {}
        self._entries: dict[str, T] = {}

    def names(self) -> list[str]:
        if self._modules is not None:
            return sorted(self._modules)
        return sorted(p.stem for p in self._directory.glob("*.py") if not p.stem.startswith("_"))

    def module_of(self, name: str) -> str:
        """The module (relative to the package) that registers ``name``."""
        return self._modules[name] if self._modules is not None else name

    def add(self, name: str, entry: T) -> T:
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        return lambda entry: self.add(name, entry)

    def add_resolver(self, prefix: str, resolve: Callable[[str], T]) -> None:
        """``resolve(name)`` builds the entry of a ``prefix`` name, or raises KeyError."""
        self._resolvers[prefix] = resolve

    def prefix_of(self, name: str) -> str | None:
        return next((p for p in self._prefixes if name.startswith(p)), None)

    def __getitem__(self, name: str) -> T:
        if name not in self._entries and (prefix := self.prefix_of(name)) is not None:
            __import__(f"{self.package}.{self._prefixes[prefix]}")
            self._entries[name] = self._resolvers[prefix](name)
        if name not in self._entries:
            if name not in self.names():
                raise KeyError(name)
            module = f"{self.package}.{self.module_of(name)}"
            # __import__, the import statement's own path: `python -X importtime` lists it like any
            # other import (importlib.import_module bypasses it), which tests/test_dvc_yaml.py reads
            __import__(module)
            if name not in self._entries:
                raise LookupError(f"{module} does not register the {self.kind} '{name}'")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and self.prefix_of(name) is not None:
            try:
                self[name]
            except KeyError:
                return False
            return True
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())
