"""The config: read it (JSON or YAML, see syntax.py), map the seed's spellings onto one (one table), check it with
each type's schema and its own checks.

Only `load` and `load_config` touch the disk; `parse` and `validate` are pure, so every message can be tested on a
string. Every problem found is reported at once, in the config's order, each with the path of the key it is about
(`nodes[0].engine.localrc.X`): a refused value is left out of the checks, not its neighbours.
"""

import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from coordinator import plugins, syntax

# Re-exported for callers of the config API (tests, scripts): the plugins and the planner take them from
# coordinator.problems, so that importing this module's plugins never comes back here.
from coordinator.problems import PRUNED, ConfigError, Problem, describe, format_path, kept, nearest  # noqa: F401

log = logging.getLogger(__name__)

# The seed's (and Rally's) spellings of one setting: spelling -> the name used everywhere after loading.
# Applied to the keys of a typed config (engine or provider) only, where the type has the canonical key.
KEY_ALIASES = {
    "name": "type",
    "local_conf": "localrc",
    "nodes_per_server": "containers_per_host",
    "container_name": "container_name_prefix",
}


@dataclass(frozen=True)
class Site:
    """Where a typed config sits, and how its keys were spelled, so messages use the user's own words."""

    parts: tuple
    spelled: dict

    def __str__(self):
        return format_path(self.parts)

    def at(self, key, *more):
        return format_path(self.parts + (self.spelled.get(key, key),) + more)


@dataclass(frozen=True)
class Config:
    """A validated config: the top-level type and the model built by the plugins (see engines.py)."""

    type: str
    root: Any
    data: dict
    source: str | None = None
    folder: str | None = None  # the config file's folder, absolute: relative paths in it start there

    def groups(self):
        """The node groups in plan order: the controller first, then the nodes in the order written."""
        return self.root.groups("controller")


# ---------------------------------------------------------------- reading


def _read(path):
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([Problem(None, f"cannot read the config: {error.strerror or error}")], source) from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            [Problem(None, f"the config is not UTF-8 text ({error.reason} at byte {error.start})")], source
        ) from None
    log.debug("read config %s (%s, %d characters)", os.path.abspath(path), syntax.guess_format(source, text), len(text))
    return _parse(text, source, None)


def load(path):
    """Read and parse one config file (the only I/O here); syntax errors name the line and column."""
    return _plain(_read(path), str(path))


def load_config(path):
    """Read, parse and validate one config file: the usual way in. Every problem is reported at once."""
    config = validate(_read(path), source=str(path), folder=os.path.dirname(os.path.abspath(path)))
    log.debug("config %s: a valid %s", path, config.type)
    return config


def parse(text, source=None, fmt=None):
    """Text -> plain data. `fmt` is 'json' or 'yaml'; by default the file name decides, then the first character."""
    return _plain(_parse(text, source, fmt), source)


def _parse(text, source, fmt):
    try:
        return syntax.parse(text, fmt or syntax.guess_format(source or "", text))
    except syntax.SyntaxProblem as error:
        raise ConfigError([Problem(None, str(error))], source) from None


def _plain(data, source):
    problems: list = []
    data = _clean(data, source, problems, [])
    if problems:
        raise ConfigError(problems, source)
    return data


def _clean(data, source, problems, blocked):
    try:
        return syntax.clean(data, problems, blocked)
    except syntax.TooBig as error:
        raise ConfigError([Problem(None, str(error))], source) from None


# ---------------------------------------------------------------- validating


def validate(data, source=None, folder=None):
    """Plain data -> Config, or ConfigError listing every problem found. `folder` is where relative paths in the
    config start (load_config gives the file's own folder)."""
    plugins.load()
    problems: list = []
    blocked: list = []
    data = _clean(data, source, problems, blocked)
    checked_from = len(problems)
    if not isinstance(data, dict):
        problems.append(
            Problem(
                "",
                f"the config must be an object with a 'type' "
                f"(one of {plugins.ENGINES.describe()}), got {_describe(data)}",
            )
        )
        raise ConfigError(_settle(problems, blocked, checked_from), source)
    top = plugins.Slot("engine", tuple(plugins.ENGINES.names()), "the top of the config is an engine")
    model = _walk(data, (), top, plugins.Context(), problems)
    problems = _in_order(_settle(problems, blocked, checked_from), data)
    if problems:
        raise ConfigError(problems, source)
    return Config(type=_type_name(data), root=model, data=data, source=source, folder=folder)


def _type_name(data):
    name = data.get("type", data.get("name"))
    return plugins.ENGINES.get(name).NAME


def _settle(problems, blocked, checked_from):
    """Each problem once; none (from `checked_from` on) at or below a value already reported as unusable."""
    seen = set()
    out = []
    for index, problem in enumerate(problems):
        if problem in seen:
            continue
        if index >= checked_from and problem.path is not None and any(_below(problem.path, stop) for stop in blocked):
            continue
        seen.add(problem)
        out.append(problem)
    return out


def _below(path, stop):
    """Whether `path` is `stop` or inside it ('a.b' and 'a[0]' are inside 'a'; '' holds everything)."""
    return not stop or path == stop or (path.startswith(stop) and path[len(stop)] in ".[")


def _in_order(problems, data):
    """Problems in the order of the config's text (a problem about a missing key sits at its object)."""
    order: dict = {}

    def visit(value, parts):
        order.setdefault(format_path(parts), len(order))
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            visit(item, parts + (key,))

    visit(data, ())

    def position(problem):
        path = problem.path
        if path is None:
            return -1
        while path not in order and path:
            path = path[: max(path.rfind("."), path.rfind("["), 0)]
        return order.get(path, 0)

    return sorted(problems, key=position)


# Keys that stand for the type when the type key itself is misspelled ('tpye'), so the rest can still be checked.
_TYPE_KEYS = ("type", "name")


def _walk(value, path, slot, ctx, problems):
    """Check one typed config and everything below it; return its model, or None when anything is wrong."""
    registry = plugins.registry(slot.kind)
    where = format_path(path)
    if not isinstance(value, dict):
        problems.append(
            Problem(
                where, f"expected an object describing {_article(slot.kind)} (with a 'type'), got {_describe(value)}"
            )
        )
        return None
    renamed = {}
    type_keys = [key for key in _TYPE_KEYS if key in value]
    if not type_keys:
        slip = next((key for key in value if nearest(key, _TYPE_KEYS)), None)
        if slip is None:
            problems.append(Problem(where, f"missing 'type': which {slot.kind} this is; here {_one_of(slot.allowed)}"))
            return None
        canonical = nearest(slip, _TYPE_KEYS)
        problems.append(Problem(format_path(path + (slip,)), f"unknown key; did you mean '{canonical}'?"))
        # Read on as if it were spelled right, so one run reports the rest too.
        value = {(canonical if key == slip else key): item for key, item in value.items()}
        renamed[canonical] = slip
        type_keys = [canonical]
    name = value[type_keys[0]]
    type_path = format_path(path + (renamed.get(type_keys[0], type_keys[0]),))
    if not isinstance(name, str):
        problems.append(Problem(type_path, f"expected a type name, got {_describe(name)}"))
        return None
    cls = registry.get(name)
    if cls is None:
        problems.append(Problem(type_path, _unknown_type(name, slot, registry)))
        return None
    if cls.NAME not in slot.allowed:
        problems.append(Problem(type_path, f"{name} cannot be used here ({slot.what}); use {_one_of(slot.allowed)}"))
        return None
    before = len(problems)
    cfg, spelled = _canonical(value, cls, path, problems, renamed)
    site = Site(path, spelled)
    errors = _schema_errors(cls, cfg)
    for error in errors:
        problems.extend(_explain_schema(error, _error_parts(error, site), cls, site))
    # The type's own checks still run on what the schema accepted, so one run reports as much as it can.
    checkable = _prune(cfg, errors)
    if checkable is not None:
        problems.extend(cls.check(checkable, site, ctx))
    children = {}
    for key, child_slot in cls.SLOTS.items():
        if key not in cfg:
            continue
        child_ctx = ctx.enter(child_slot, cls.NAME)
        child_path = path + (spelled.get(key, key),)
        child_where = format_path(child_path)
        if any(problem.path == child_where for problem in problems[before:]):
            continue  # the type refused this key as a whole (e.g. 'provider' inside an LxcEngine): said once
        if child_slot.many:
            items = cfg[key]
            if not isinstance(items, list):
                problems.append(Problem(child_where, f"expected a list of {child_slot.kind}s, got {_describe(items)}"))
                continue
            children[key] = tuple(
                _walk(item, child_path + (index,), child_slot, child_ctx, problems) for index, item in enumerate(items)
            )
        else:
            children[key] = _walk(cfg[key], child_path, child_slot, child_ctx, problems)
    if len(problems) != before:
        return None
    return cls.build(cfg, site, children, ctx)


def _canonical(value, cls, path, problems, renamed):
    """Map the seed's spellings onto one (where the type knows the setting); two spellings at once is a problem."""
    known = cls.SCHEMA.get("properties", {})
    cfg: dict = {}
    spelled: dict = {}
    for key, item in value.items():
        written = renamed.get(key, key)
        canonical = KEY_ALIASES.get(key, key)
        if canonical not in known or key in known:
            canonical = key
        if canonical in spelled:
            problems.append(
                Problem(
                    format_path(path + (written,)),
                    f"'{spelled[canonical]}' and '{written}' are two spellings of one setting; give only one",
                )
            )
            continue
        cfg[canonical] = item
        spelled[canonical] = written
    return cfg, spelled


_VALIDATORS: dict[type, jsonschema.protocols.Validator] = {}


def _validator(cls):
    if cls not in _VALIDATORS:
        jsonschema.Draft202012Validator.check_schema(cls.SCHEMA)
        _VALIDATORS[cls] = jsonschema.Draft202012Validator(cls.SCHEMA)
    return _VALIDATORS[cls]


def _schema_errors(cls, cfg):
    return sorted(_validator(cls).iter_errors(cfg), key=lambda e: [str(p) for p in e.absolute_path])


def _error_parts(error, site):
    parts = list(error.absolute_path)
    if parts:
        parts[0] = site.spelled.get(parts[0], parts[0])
    return site.parts + tuple(parts)


def _prune(cfg, errors):
    """A copy of `cfg` without exactly the values the schema refused (a list item becomes PRUNED, a key goes),
    so the type's checks see everything else; None when the object itself is wrong."""
    if not errors:
        return cfg
    out = copy.deepcopy(cfg)
    for error in errors:
        parts = list(error.absolute_path)
        if _is_name_error(error):
            _remove(out, parts + [error.instance])
        elif error.validator == "additionalProperties" and error.validator_value is False:
            known = error.schema.get("properties", {})
            for key in [key for key in error.instance if key not in known]:
                _remove(out, parts + [key])
        elif error.validator == "required" and not parts:
            continue  # the type's own checks cope with a missing key
        elif not parts:
            return None
        else:
            _remove(out, parts)
    return out


def _remove(cfg, parts):
    target = cfg
    for part in parts[:-1]:
        try:
            target = target[part]
        except (KeyError, IndexError, TypeError):
            return
        if target is PRUNED:
            return
    last = parts[-1]
    if isinstance(target, list) and isinstance(last, int) and 0 <= last < len(target):
        target[last] = PRUNED
    elif isinstance(target, dict):
        target.pop(last, None)


def _is_name_error(error):
    return "propertyNames" in error.relative_schema_path


_TYPE_WORDS = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "object": "an object",
    "array": "a list",
    "null": "null",
}


def _explain_schema(error, base, cls, site):
    """A jsonschema error as problems that say what was expected, in the user's spelling."""
    where = format_path(base)
    schema = error.schema if isinstance(error.schema, dict) else {}
    expected = schema.get("x-expected")
    if schema.get("x-message"):
        return [Problem(where, schema["x-message"])]
    kind = error.validator
    if kind == "additionalProperties" and error.validator_value is False:
        known = set(schema.get("properties", {}))
        extras = [key for key in error.instance if key not in known]
        typed = not base[len(site.parts) :]  # the typed config itself, not an object inside it
        if typed:
            extras = [site.spelled.get(key, key) for key in extras]
        return [Problem(format_path(base + (key,)), _unknown_key(key, known, cls if typed else None)) for key in extras]
    if kind == "required":
        missing = [key for key in error.validator_value if key not in error.instance]
        # A misspelled required key is one slip: the unknown key's "did you mean" says it all.
        known = set(schema.get("properties", {}))
        guesses = {nearest(key, known) for key in error.instance if key not in known}
        out = []
        for key in missing:
            if key in guesses:
                continue
            also = [alias for alias, canonical in KEY_ALIASES.items() if canonical == key]
            hint = f" (also spelled '{also[0]}')" if also and not base[len(site.parts) :] else ""
            out.append(Problem(where, f"missing required key '{key}'{hint}"))
        return out
    if _is_name_error(error):
        where = format_path(base + (str(error.instance),))
        return [Problem(where, f"not a valid name: expected {expected or 'a valid key'}")]
    if kind == "type":
        wanted = error.validator_value
        words = expected or _one_of(
            [_TYPE_WORDS.get(t, t) for t in (wanted if isinstance(wanted, list) else [wanted])], quote=False
        )
        return [Problem(where, f"expected {words}, got {_describe(error.instance)}")]
    if kind == "enum":
        return [Problem(where, f"expected {_one_of(error.validator_value)}, got {_describe(error.instance)}")]
    if kind in ("minimum", "exclusiveMinimum"):
        return [Problem(where, f"expected at least {error.validator_value}, got {error.instance}")]
    if kind == "maximum":
        return [Problem(where, f"expected at most {error.validator_value}, got {error.instance}")]
    if kind == "minItems":
        return [Problem(where, f"expected at least {error.validator_value} item(s), got none")]
    if kind == "minLength":
        return [Problem(where, "expected a non-empty string")]
    if kind == "maxLength":
        return [Problem(where, f"expected at most {error.validator_value} characters, got {len(error.instance)}")]
    if expected:
        return [Problem(where, f"expected {expected}, got {_describe(error.instance)}")]
    return [Problem(where, error.message)]


def _unknown_key(key, known, cls):
    spellings = set(known)
    if cls is not None:
        spellings |= {alias for alias, canonical in KEY_ALIASES.items() if canonical in known}
    owner = f" for {cls.NAME}" if cls is not None else ""
    guess = nearest(key, spellings)
    if guess:
        return f"unknown key{owner}; did you mean '{guess}'?"
    return f"unknown key{owner}; known keys: {', '.join(sorted(spellings))}"


def _unknown_type(name, slot, registry):
    message = f"unknown {slot.kind} type '{name}'; known {slot.kind} types: {registry.describe()}"
    guess = nearest(name, registry.spellings())
    if guess:
        message += f"; did you mean '{guess}'?"
    return message


def _one_of(items, quote=True):
    items = [f"'{item}'" if quote and isinstance(item, str) else str(item) for item in items]
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " or " + items[-1]


def _article(kind):
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


_describe = describe
