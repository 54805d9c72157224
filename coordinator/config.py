"""The config: read it (JSON or YAML), map the seed's spellings onto one (one table), check it with each type's schema.

Only `load` touches the disk; `parse` and `validate` are pure, so every message can be tested on a string.
Every problem found is reported at once, each with the path of the key it is about (`nodes[0].engine.localrc.X`).
"""

import difflib
import json
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

from coordinator import plugins

# The seed's (and Rally's) spellings of one setting: spelling -> the name used everywhere after loading.
# Applied to the keys of a typed config (engine or provider) only, where the type has the canonical key.
KEY_ALIASES = {
    "name": "type",
    "local_conf": "localrc",
    "nodes_per_server": "containers_per_host",
    "container_name": "container_name_prefix",
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where (a path like `nodes[0].provider`) and what."""

    path: str
    message: str

    def __str__(self):
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
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
    """('nodes', 0, 'engine') -> 'nodes[0].engine'."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


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
    root: object
    data: dict
    source: str | None = None

    def groups(self):
        """The node groups in plan order: the controller first, then the nodes in the order written."""
        return self.root.groups("controller")


# ---------------------------------------------------------------- reading

def load(path):
    """Read and parse one config file (the only I/O here); syntax errors name the line and column."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([Problem("", f"cannot read the config: {error.strerror or error}")], source)
    except UnicodeDecodeError as error:
        raise ConfigError([Problem("", f"the config is not UTF-8 text ({error.reason} at byte {error.start})")],
                          source)
    return parse(text, source)


def load_config(path):
    """load() then validate(): the usual way in."""
    return validate(load(path), source=str(path))


def parse(text, source=None, fmt=None):
    """Text -> plain data. `fmt` is 'json' or 'yaml'; by default the file name decides, then the first character."""
    fmt = fmt or _guess_format(source or "", text)
    data = _parse_json(text, source) if fmt == "json" else _parse_yaml(text, source)
    problems = []
    data = _plain(data, (), problems)
    if problems:
        raise ConfigError(problems, source)
    return data


def _guess_format(source, text):
    suffix = Path(source).suffix.lower()
    if suffix == ".json":
        return "json"
    if suffix in (".yaml", ".yml"):
        return "yaml"
    first = text.lstrip()[:1]
    return "json" if first in ("{", "[", '"', "/", "") else "yaml"


class _Object(dict):
    """A parsed mapping that remembers keys given twice, reported later with their path."""

    duplicates = ()


def _json_object(pairs):
    obj = _Object()
    dups = []
    for key, value in pairs:
        if key in obj:
            dups.append(key)
        obj[key] = value
    obj.duplicates = tuple(dups)
    return obj


def _plain(value, path, problems):
    """Turn parsed mappings into plain dicts, reporting keys given twice and keys that are not strings."""
    if isinstance(value, dict):
        for key in getattr(value, "duplicates", ()):
            problems.append(Problem(format_path(path + (key,)),
                                    "given twice in one object; only the last would count, so remove one"))
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(Problem(format_path(path + (str(key),)),
                                        f"keys must be strings, got {_describe(key)}"))
                continue
            out[key] = _plain(item, path + (key,), problems)
        return out
    if isinstance(value, list):
        return [_plain(item, path + (index,), problems) for index, item in enumerate(value)]
    return value


def _line_col(text, pos):
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def _parse_json(text, source):
    try:
        return json.loads(text, object_pairs_hook=_json_object)
    except json.JSONDecodeError as error:
        raise ConfigError([Problem("", _explain_json(error, text))], source) from None


def _explain_json(error, text):
    """A JSON syntax error in words, for the slips people make (and the seed's snippets show)."""
    pos = error.pos
    here = text[pos:]
    before = text[:pos].rstrip()
    prev = before[-1:]
    line, col = error.lineno, error.colno
    hint = None
    if not text.strip():
        hint = "the file is empty; a config is one JSON object, {...}"
    elif here.startswith(("//", "/*", "#")):
        hint = ("comments are not allowed in JSON; remove the comment "
                "(or write the config in YAML, where '#' starts a comment)")
    elif prev == "," and here[:1] in ("}", "]"):
        line, col = _line_col(text, len(before) - 1)
        closer = "object" if here[:1] == "}" else "list"
        hint = (f"trailing comma: JSON allows no ',' after the last item of an {closer}" if closer == "object"
                else f"trailing comma: JSON allows no ',' after the last item of a {closer}")
        hint += f"; remove this ',' (before the '{here[:1]}')"
    elif error.msg == "Extra data":
        if here[:1] == ":":
            hint = ("this is not one JSON value: it looks like a list of keys without the braces "
                    "around them; wrap the whole config in '{' and '}'")
        else:
            hint = "unexpected text after the end of the config's object (one '}' too many?)"
    elif here[:1] == ":" and prev in ("]", "}"):
        what = "list" if prev == "]" else "object"
        hint = (f"stray ':' after the {what} that ends with '{prev}': a value is followed by ',' "
                f"(when another key follows) or by '}}'; did you mean ','?")
    elif here[:1] == "'":
        hint = "strings and keys need double quotes (\"), not single quotes"
    elif here.startswith(("True", "False", "None")):
        hint = "JSON spells these true, false and null"
    elif error.msg.startswith("Expecting property name") and (here[:1].isalpha() or here[:1] == "_"):
        hint = "keys need double quotes, e.g. \"type\""
    elif error.msg.startswith("Expecting ',' delimiter") and here[:1] == '"':
        hint = "a ',' is missing before this (between two items)"
    elif not here.strip():
        hint = "the file ends before the config does: a '}' or ']' is missing"
    message = f"line {line}, column {col}: "
    return message + (f"{hint} ({error.msg})" if hint else error.msg)


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader whose mappings remember keys given twice."""


def _yaml_mapping(loader, node):
    pairs = loader.construct_pairs(node, deep=True)
    return _json_object(pairs)


_YamlLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _yaml_mapping)


def _parse_yaml(text, source):
    try:
        return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        what = error.problem or "invalid YAML"
        if error.context:
            what = f"{what} ({error.context})"
        if "\\t" in what or "'\t'" in what:
            what += "; YAML does not allow tabs for indentation, use spaces"
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError([Problem("", f"{where}{what}")], source) from None
    except yaml.YAMLError as error:
        raise ConfigError([Problem("", f"invalid YAML: {error}")], source) from None


# ---------------------------------------------------------------- validating

def validate(data, source=None):
    """Plain data -> Config, or ConfigError listing every problem found."""
    plugins.load()
    problems = []
    if not isinstance(data, dict):
        problems.append(Problem("", f"the config must be an object with a 'type' "
                                    f"(one of {plugins.ENGINES.describe()}), got {_describe(data)}"))
        raise ConfigError(problems, source)
    top = plugins.Slot("engine", tuple(plugins.ENGINES.names()), "the top of the config is an engine")
    model = _walk(data, (), top, plugins.Context(), problems)
    problems = _unique(problems)
    if problems:
        raise ConfigError(problems, source)
    return Config(type=_type_name(data), root=model, data=data, source=source)


def _type_name(data):
    name = data.get("type", data.get("name"))
    return plugins.ENGINES.get(name).NAME


def _unique(problems):
    seen = set()
    out = []
    for problem in problems:
        if problem not in seen:
            seen.add(problem)
            out.append(problem)
    return out


def _walk(value, path, slot, ctx, problems):
    """Check one typed config and everything below it; return its model, or None when anything is wrong."""
    registry = plugins.registry(slot.kind)
    where = format_path(path)
    if not isinstance(value, dict):
        problems.append(Problem(where, f"expected an object describing {_article(slot.kind)} "
                                       f"(with a 'type'), got {_describe(value)}"))
        return None
    type_keys = [key for key in ("type", "name") if key in value]
    if not type_keys:
        problems.append(Problem(where, f"missing 'type': which {slot.kind} this is; "
                                       f"here {_one_of(slot.allowed)}"))
        return None
    name = value[type_keys[0]]
    type_path = format_path(path + (type_keys[0],))
    if not isinstance(name, str):
        problems.append(Problem(type_path, f"expected a type name, got {_describe(name)}"))
        return None
    cls = registry.get(name)
    if cls is None:
        problems.append(Problem(type_path, _unknown_type(name, slot, registry)))
        return None
    if cls.NAME not in slot.allowed:
        problems.append(Problem(type_path, f"{name} cannot be used here ({slot.what}); "
                                           f"use {_one_of(slot.allowed)}"))
        return None
    before = len(problems)
    cfg, spelled = _canonical(value, cls, path, problems)
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
        if child_slot.many:
            items = cfg[key]
            if not isinstance(items, list):
                problems.append(Problem(format_path(child_path),
                                        f"expected a list of {child_slot.kind}s, got {_describe(items)}"))
                continue
            children[key] = tuple(_walk(item, child_path + (index,), child_slot, child_ctx, problems)
                                  for index, item in enumerate(items))
        else:
            children[key] = _walk(cfg[key], child_path, child_slot, child_ctx, problems)
    if len(problems) != before:
        return None
    return cls.build(cfg, site, children, ctx)


def _canonical(value, cls, path, problems):
    """Map the seed's spellings onto one (where the type knows the setting); two spellings at once is a problem."""
    known = cls.SCHEMA.get("properties", {})
    cfg, spelled = {}, {}
    for key, item in value.items():
        canonical = KEY_ALIASES.get(key, key)
        if canonical not in known or key in known:
            canonical = key
        if canonical in spelled:
            problems.append(Problem(format_path(path + (key,)),
                                    f"'{spelled[canonical]}' and '{key}' are two spellings of one setting; "
                                    f"give only one"))
            continue
        cfg[canonical] = item
        spelled[canonical] = key
    return cfg, spelled


_VALIDATORS = {}


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
    """`cfg` without the values the schema refused, or None when the object itself is wrong (a key missing)."""
    if not errors:
        return cfg
    out = {key: (dict(value) if isinstance(value, dict) else value) for key, value in cfg.items()}
    for error in errors:
        parts = list(error.absolute_path)
        if _is_name_error(error):
            parts.append(error.instance)
        elif error.validator == "additionalProperties" and error.validator_value is False:
            known = error.schema.get("properties", {})
            for key in [key for key in error.instance if key not in known]:
                _drop(out, parts + [key])
            continue
        if not parts:
            return None
        _drop(out, parts)
    return out


def _drop(cfg, parts):
    """Remove the refused value: a key of the object or of an object one level down; a list goes whole."""
    if len(parts) >= 2 and isinstance(parts[1], str) and isinstance(cfg.get(parts[0]), dict):
        cfg[parts[0]].pop(parts[1], None)
    else:
        cfg.pop(parts[0], None)


def _is_name_error(error):
    return "propertyNames" in error.relative_schema_path


_TYPE_WORDS = {"string": "a string", "integer": "an integer", "number": "a number",
               "boolean": "true or false", "object": "an object", "array": "a list", "null": "null"}


def _explain_schema(error, base, cls, site):
    """A jsonschema error as problems that say what was expected, in the user's spelling."""
    where = format_path(base)
    schema = error.schema if isinstance(error.schema, dict) else {}
    expected = schema.get("x-expected")
    kind = error.validator
    if kind == "additionalProperties" and error.validator_value is False:
        known = set(schema.get("properties", {}))
        extras = [key for key in error.instance if key not in known]
        typed = not base[len(site.parts):]  # the typed config itself, not an object inside it
        if typed:
            extras = [site.spelled.get(key, key) for key in extras]
        return [Problem(format_path(base + (key,)), _unknown_key(key, known, cls if typed else None))
                for key in extras]
    if kind == "required":
        missing = [key for key in error.validator_value if key not in error.instance]
        out = []
        for key in missing:
            also = [alias for alias, canonical in KEY_ALIASES.items() if canonical == key]
            hint = f" (also spelled '{also[0]}')" if also and not base[len(site.parts):] else ""
            out.append(Problem(where, f"missing required key '{key}'{hint}"))
        return out
    if _is_name_error(error):
        where = format_path(base + (str(error.instance),))
        return [Problem(where, f"not a valid name: expected {expected or 'a valid key'}")]
    if kind == "type":
        wanted = error.validator_value
        words = expected or _one_of([_TYPE_WORDS.get(t, t) for t in
                                     (wanted if isinstance(wanted, list) else [wanted])], quote=False)
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
        return [Problem(where, f"expected at most {error.validator_value} characters, "
                               f"got {len(error.instance)}")]
    if expected:
        return [Problem(where, f"expected {expected}, got {_describe(error.instance)}")]
    return [Problem(where, error.message)]


def _unknown_key(key, known, cls):
    spellings = set(known)
    if cls is not None:
        spellings |= {alias for alias, canonical in KEY_ALIASES.items() if canonical in known}
    owner = f" for {cls.NAME}" if cls is not None else ""
    nearest = _nearest(key, spellings)
    if nearest:
        return f"unknown key{owner}; did you mean '{nearest}'?"
    return f"unknown key{owner}; known keys: {', '.join(sorted(spellings))}"


def _unknown_type(name, slot, registry):
    message = f"unknown {slot.kind} type '{name}'; known {slot.kind} types: {registry.describe()}"
    nearest = _nearest(name, registry.spellings())
    if nearest:
        message += f"; did you mean '{nearest}'?"
    return message


def _nearest(word, candidates):
    """The closest known spelling (case first, then edit similarity), or None."""
    for candidate in sorted(candidates):
        if candidate.lower() == word.lower():
            return candidate
    close = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.6)
    return close[0] if close else None


def nearest(word, candidates):
    """Public for the plugins' own checks (placeholders)."""
    return _nearest(word, candidates)


def _one_of(items, quote=True):
    items = [f"'{item}'" if quote and isinstance(item, str) else str(item) for item in items]
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " or " + items[-1]


def _article(kind):
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _describe(value):
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


def describe(value):
    """Public for the plugins' own checks."""
    return _describe(value)
