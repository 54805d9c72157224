"""The registry of the seed's types (engines and providers): type name -> class, duplicates refused.

Each type carries its JSON Schema and its slots (the keys that hold another typed config) beside its code;
`coordinator.config` walks a config through these classes.
"""

from dataclasses import dataclass
from typing import Any, ClassVar


class PluginError(Exception):
    """Two classes claim one type name: a programming error, never a config problem."""


@dataclass(frozen=True)
class Slot:
    """A key whose value is another engine or provider (or a list of them, when `many`)."""

    kind: str  # "engine" or "provider"
    allowed: tuple  # type names accepted at this place
    what: str  # what this place is for, said when a wrong type is put here
    role: str | None = None  # the role given to everything below (controller / compute)
    many: bool = False


@dataclass(frozen=True)
class Context:
    """Where a typed config sits: the role of the nodes it makes and the type that holds it."""

    role: str = "standalone"  # standalone (top level), controller or compute
    inside: str | None = None

    def enter(self, slot, holder):
        return Context(role=slot.role or self.role, inside=holder)


class Plugin:
    """Base of every engine and provider: a schema, slots, pure checks and a pure build into a model."""

    NAME: ClassVar[str] = ""
    ALIASES: ClassVar[tuple[str, ...]] = ()  # older type names that mean the same (Rally's DummyProvider)
    SCHEMA: ClassVar[dict[str, Any]] = {"type": "object"}
    SLOTS: ClassVar[dict[str, "Slot"]] = {}

    @classmethod
    def check(cls, cfg, site, ctx):
        """Problems the schema cannot express; `cfg` has passed the schema."""
        return []

    @classmethod
    def build(cls, cfg, site, children, ctx):
        """The model of this config; called only when it and everything below it are valid."""
        raise NotImplementedError


class Registry:
    """Type name (and aliases) -> plugin class for one kind."""

    def __init__(self, kind):
        self.kind = kind
        self._classes = {}

    def register(self, cls):
        for name in (cls.NAME, *cls.ALIASES):
            other = self._classes.get(name)
            if other is not None and other is not cls:
                raise PluginError(
                    f"{self.kind} type {name!r} is registered twice: by "
                    f"{other.__module__}.{other.__qualname__} and by {cls.__module__}.{cls.__qualname__}"
                )
            self._classes[name] = cls
        return cls

    def get(self, name):
        return self._classes.get(name)

    def names(self):
        """The canonical names, sorted (aliases left out)."""
        return sorted({cls.NAME for cls in self._classes.values()})

    def spellings(self):
        return sorted(self._classes)

    def describe(self):
        """'A, B (also DummyProvider), C' for messages."""
        parts = []
        for name in self.names():
            aliases = self._classes[name].ALIASES
            parts.append(f"{name} (also {', '.join(aliases)})" if aliases else name)
        return ", ".join(parts)


ENGINES = Registry("engine")
PROVIDERS = Registry("provider")
_BY_KIND = {"engine": ENGINES, "provider": PROVIDERS}


def registry(kind):
    return _BY_KIND[kind]


def engine(cls):
    return ENGINES.register(cls)


def provider(cls):
    return PROVIDERS.register(cls)


def load():
    """Import the modules that register the seed's types (explicitly, no entry-point discovery)."""
    from coordinator import engines, providers  # noqa: F401
