"""What is wrong with a config, and where: one Problem per finding, all of them in one ConfigError; and the small
helpers every check shares (how a value or a path is written, the nearest known spelling, the items the schema kept).

The config loader and the plugins' own checks both use these, so they live here, below both: `coordinator.config`
imports the plugins, and the plugins never import it back.
"""

import difflib
import json
import re
from dataclasses import dataclass

from coordinator.errors import CoordinatorError


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where (a path like `nodes[0].provider`; "" is the top level; None is the
    file itself, for syntax errors) and what. Both are kept printable even when the config held a lone surrogate."""

    path: str | None
    message: str

    def __post_init__(self):
        if self.path is not None:
            object.__setattr__(self, "path", _printable(self.path))
        object.__setattr__(self, "message", _printable(self.message))

    def __str__(self):
        if self.path is None:
            return self.message
        return f"{self.path or '(top level)'}: {self.message}"


def _printable(text):
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class ConfigError(CoordinatorError):
    """The config cannot be used; `problems` lists everything found, not only the first."""

    def __init__(self, problems, source=None):
        self.problems = tuple(problems)
        self.source = source
        super().__init__(str(self))

    def __str__(self):
        head = f"{self.source}: " if self.source else ""
        if len(self.problems) == 1:
            return f"{head}{self.problems[0]}"
        lines = [f"{head}{len(self.problems)} problems:"]
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


def format_path(parts):
    """('nodes', 0, 'engine') -> 'nodes[0].engine'; a key that would blur the path (with '.', brackets, quotes,
    '|', '$' or spaces, like a meta-section's "post-config|$NOVA_CONF") is written as ["key"]."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _BLURS.search(str(part)) or part == "":
            text += f"[{json.dumps(part, ensure_ascii=False)}]"
        else:
            text += f".{part}" if text else str(part)
    return text


_BLURS = re.compile(r'[.\[\]"|$\\\s]')


def describe(value):
    """A value as a message shows it: its JSON type and, when short, itself."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"the string {json.dumps(shown)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def nearest(word, candidates):
    """The closest known spelling (case first, then edit similarity), or None: the "did you mean" of a message."""
    for candidate in sorted(candidates):
        if candidate.lower() == word.lower():
            return candidate
    close = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.6)
    return close[0] if close else None


class _Pruned:
    """Stands in a list for an item the schema refused, so the items after it keep their index."""

    def __repr__(self):
        return "PRUNED"


PRUNED = _Pruned()


def kept(items):
    """(index, item) for the items of a list the schema accepted (see PRUNED): a plugin's checks skip the refused
    ones, already reported, and still name the others by their index as written."""
    return [(index, item) for index, item in enumerate(items) if item is not PRUNED]
