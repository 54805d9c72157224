"""PURE: config text -> plain data (JSON or YAML), with syntax slips explained in words, line and column, and
what no config can hold (keys given twice, NaN, lone surrogates, 5000-digit numbers, alias bombs) found by path.

YAML is read like JSON with comments: a scalar that YAML 1.1 would silently turn into something else (`012` into
10, `ON` into true, `1:30` into 90) comes back as a `Misread`, which `clean` reports with its path.
"""

import json
import math
import re
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from coordinator.errors import CoordinatorError
from coordinator.problems import Problem, describe, format_path

# Longer numbers are refused before Python converts them (it refuses over 4300 digits with a bare ValueError).
MAX_DIGITS = 100
# More values than this (a YAML alias or merge repeating a large part many times) is not a deployment config.
MAX_VALUES = 100_000
_MERGE = "tag:yaml.org,2002:merge"


class SyntaxProblem(CoordinatorError):
    """The text is not a config at all; the message says where and why."""


class Misread:
    """A scalar that would not mean what it says (`012`, `ON`, `NaN`, a 5000-digit number): reported with its path.

    `text` is the scalar as written (used as the key's name when it stands as a key), `where` its line and column.
    """

    def __init__(self, text, message, where=""):
        self.text = text
        self.message = message
        self.where = where

    def __repr__(self):
        return f"Misread({self.text!r})"


class Mapping(dict):
    """A parsed mapping that remembers keys given twice, reported later with their path."""

    duplicates = ()


def mapping(pairs):
    obj = Mapping()
    dups = []
    for key, value in pairs:
        if key in obj:
            dups.append(key)
        obj[key] = value
    obj.duplicates = tuple(dups)
    return obj


def guess_format(source, text):
    """'json' or 'yaml': the file name decides, then the first character."""
    suffix = Path(source).suffix.lower()
    if suffix == ".json":
        return "json"
    if suffix in (".yaml", ".yml"):
        return "yaml"
    first = text.lstrip()[:1]
    return "json" if first in ("{", "[", '"', "/", "") else "yaml"


def parse(text, fmt):
    """Text -> data whose mappings are `Mapping`s and whose slips are `Misread`s; SyntaxProblem otherwise."""
    try:
        return _parse_json(text) if fmt == "json" else _parse_yaml(text)
    except RecursionError:
        raise SyntaxProblem(
            "the config is nested too deeply to read (hundreds of levels of lists or objects)"
        ) from None


# ---------------------------------------------------------------- JSON


def _json_int(text):
    digits = len(text.lstrip("-"))
    if digits > MAX_DIGITS:
        return Misread(text, f"a number with {digits} digits is too large; quote it if it is meant as text")
    return int(text)


def _json_float(text):
    value = float(text)
    if math.isinf(value):
        return Misread(text, f"{_short(text)} is too large for a number (it would be read as infinity)")
    return value


def _json_constant(text):
    return Misread(text, f"{text} is not a JSON number; numbers must be finite")


def _parse_json(text):
    try:
        return json.loads(
            text, object_pairs_hook=mapping, parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant
        )
    except json.JSONDecodeError as error:
        raise SyntaxProblem(_explain_json(error, text)) from None


def _line_col(text, pos):
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


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
        hint = (
            "comments are not allowed in JSON; remove the comment "
            "(or write the config in YAML, where '#' starts a comment)"
        )
    elif prev == "," and here[:1] in ("}", "]"):
        line, col = _line_col(text, len(before) - 1)
        closer = "object" if here[:1] == "}" else "list"
        hint = (
            f"trailing comma: JSON allows no ',' after the last item of an {closer}"
            if closer == "object"
            else f"trailing comma: JSON allows no ',' after the last item of a {closer}"
        )
        hint += f"; remove this ',' (before the '{here[:1]}')"
    elif error.msg == "Extra data":
        if here[:1] == ":":
            hint = (
                "this is not one JSON value: it looks like a list of keys without the braces "
                "around them; wrap the whole config in '{' and '}'"
            )
        else:
            hint = "unexpected text after the end of the config's object (one '}' too many?)"
    elif here[:1] == ":" and prev in ("]", "}"):
        what = "list" if prev == "]" else "object"
        hint = (
            f"stray ':' after the {what} that ends with '{prev}': a value is followed by ',' "
            f"(when another key follows) or by '}}'; did you mean ','?"
        )
    elif here[:1].isdigit() and re.search(r"(?:^|[^\w.])-?0$", before):
        number = re.match(r"[\w.]*", here).group(0)  # type: ignore[union-attr]  # [\w.]* matches always
        line, col = _line_col(text, len(before) - 1)
        hint = f'JSON numbers do not start with 0; write {number.lstrip("0") or "0"}, or quote it ("0{number}")'
    elif here[:1] == "'":
        hint = 'strings and keys need double quotes ("), not single quotes'
    elif here.startswith(("True", "False", "None")):
        hint = "JSON spells these true, false and null"
    elif error.msg.startswith("Expecting property name") and (here[:1].isalpha() or here[:1] == "_"):
        hint = 'keys need double quotes, e.g. "type"'
    elif error.msg.startswith("Expecting ',' delimiter") and here[:1] == '"':
        hint = "a ',' is missing before this (between two items)"
    elif not here.strip():
        hint = "the file ends before the config does: a '}' or ']' is missing"
    message = f"line {line}, column {col}: "
    return message + (f"{hint} ({error.msg})" if hint else error.msg)


# ---------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps what YAML 1.1 would change (see `Misread`), supports '<<' merges and spots keys
    given twice."""


def _where(node):
    mark = node.start_mark
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _misread(node, message):
    return Misread(node.value, message, _where(node))


_PLAIN_INT = re.compile(r"^(?:0|-?[1-9][0-9]*)\Z")


def _yaml_int(loader, node):
    text = node.value
    if _PLAIN_INT.match(text):
        if len(text.lstrip("-")) > MAX_DIGITS:
            return _misread(
                node, f"a number with {len(text.lstrip('-'))} digits is too large; quote it if it is meant as text"
            )
        return int(text)
    if len(text) > MAX_DIGITS:
        return _misread(node, "this number is too long; quote it if it is meant as text")
    value = yaml.SafeLoader.construct_yaml_int(loader, node)
    return _misread(
        node, f'YAML reads {text} as the number {value}: quote it ("{text}") to keep it as written, or write {value}'
    )


def _yaml_float(loader, node):
    text = node.value
    if len(text) > MAX_DIGITS:
        return _misread(node, "this number is too long; quote it if it is meant as text")
    value = yaml.SafeLoader.construct_yaml_float(loader, node)
    if "_" in text or ":" in text or text.startswith("+"):
        return _misread(
            node,
            f'YAML reads {text} as the number {value}: quote it ("{text}") to keep it as written, or write {value}',
        )
    if math.isnan(value) or math.isinf(value):
        return _misread(node, f"{text} is not a number a config can use; numbers must be finite")
    return value


def _yaml_bool(loader, node):
    value = yaml.SafeLoader.construct_yaml_bool(loader, node)
    if node.value.lower() in ("true", "false"):
        return value
    word = "true" if value else "false"
    return _misread(
        node, f'YAML reads {node.value} as {word}: quote it ("{node.value}") to keep it as written, or write {word}'
    )


def _yaml_as_written(loader, node):
    """A timestamp stays the text it is (devstack reads text)."""
    return node.value


def _yaml_unsupported(loader, node):
    tag = node.tag.rsplit(":", 1)[-1]
    return Misread(str(node.tag), f"the YAML type !!{tag} has no meaning in a config", _where(node))


def _flat_pairs(node, budget, inside=()):
    """A mapping's (key node, value node) pairs in the order that makes later ones win: merged mappings ('<<')
    first, the last listed first (YAML gives earlier ones precedence), then the mapping's own keys."""
    budget[0] -= len(node.value)
    if budget[0] < 0:
        raise yaml.constructor.ConstructorError(
            None, None, f"merge keys ('<<') here expand to more than {MAX_VALUES} keys", node.start_mark
        )
    merged, own = [], []
    for key_node, value_node in node.value:
        if key_node.tag != _MERGE:
            own.append((key_node, value_node))
            continue
        sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
        for source in reversed(sources):
            if source is node or source in inside:
                raise yaml.constructor.ConstructorError(
                    None, None, "a merge key '<<' refers to a mapping that contains it", key_node.start_mark
                )
            if not isinstance(source, MappingNode):
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    "a merge key '<<' takes a mapping or a list of mappings (an alias such as *defaults)",
                    source.start_mark,
                )
            before, mine = _flat_pairs(source, budget, inside + (node,))
            merged.extend(before + mine)
    return merged, own


def _yaml_mapping(loader, node):
    merged, own = _flat_pairs(node, [MAX_VALUES])
    obj = Mapping()
    dups = []
    own_keys = set()
    for index, (key_node, value_node) in enumerate(merged + own):
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            text = key_node.value if isinstance(key_node, ScalarNode) else "?"
            what = "a list or an object" if not isinstance(key_node, ScalarNode) else "not read as text by YAML"
            key = Misread(
                text,
                f"a key must be text, and this one is {what}"
                + (f': quote it ("{text}")' if isinstance(key_node, ScalarNode) else ""),
                _where(key_node),
            )
        if index >= len(merged):
            if key in own_keys:
                dups.append(key)
            own_keys.add(key)
        obj[key] = loader.construct_object(value_node, deep=True)
    obj.duplicates = tuple(dups)
    return obj


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _yaml_mapping)
_Loader.add_constructor("tag:yaml.org,2002:int", _yaml_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _yaml_float)
_Loader.add_constructor("tag:yaml.org,2002:bool", _yaml_bool)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _yaml_as_written)
for _tag in ("binary", "set", "omap", "pairs"):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _yaml_unsupported)


def _parse_yaml(text):
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        what = error.problem or "invalid YAML"
        if error.context:
            what = f"{what} ({error.context})"
        if "\\t" in what or "'\t'" in what:
            what += "; YAML does not allow tabs for indentation, use spaces"
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SyntaxProblem(f"{where}{what}") from None
    except yaml.YAMLError as error:
        raise SyntaxProblem(f"invalid YAML: {error}") from None


def _short(text):
    return text if len(text) <= 20 else text[:17] + "..."


# ---------------------------------------------------------------- what no config can hold

# The deepest a config goes is about six levels (nodes[0].engine.localrc.X); anything far deeper is a mistake.
MAX_DEPTH = 32
_TOO_LARGE = 10**MAX_DIGITS


class TooBig(CoordinatorError):
    """More values than any config holds (a YAML alias or merge repeating a large part)."""


def clean(data, problems, blocked):
    """Parsed data -> plain dicts and lists, adding a Problem for what no config can hold: keys given twice or not
    text, `Misread`s, text UTF-8 cannot encode, numbers that are not finite or far too large, nesting too deep.
    `blocked` gets the paths whose value is unusable (any other problem there is moot). TooBig past MAX_VALUES."""
    return _clean(data, (), problems, blocked, [MAX_VALUES])


def _clean(value, path, problems, blocked, budget):
    budget[0] -= 1
    if budget[0] < 0:
        raise TooBig(
            f"the config holds more than {MAX_VALUES} values; a deployment config is far smaller "
            f"(does a YAML alias repeat a large part?)"
        )
    why = _unusable(value)
    if why:
        where = format_path(path)
        problems.append(Problem(where, why))
        blocked.append(where)
        # What stays is no JSON type, so every schema refuses it and no check ever sees it.
        return value if isinstance(value, Misread) else Misread("", why)
    if isinstance(value, (dict, list)) and len(path) >= MAX_DEPTH:
        where = format_path(path)
        problems.append(Problem(where, f"nested more than {MAX_DEPTH} levels deep; a config is a few levels deep"))
        blocked.append(where)
        return None
    if isinstance(value, list):
        return [_clean(item, path + (index,), problems, blocked, budget) for index, item in enumerate(value)]
    if not isinstance(value, dict):
        return value
    for key in getattr(value, "duplicates", ()):
        problems.append(
            Problem(format_path(path + (key,)), "given twice in one object; only the last would count, so remove one")
        )
    out = {}
    for key, item in value.items():
        if isinstance(key, Misread):
            problems.append(Problem(format_path(path + (key.text,)), _said(key)))
            continue
        if not isinstance(key, str):
            problems.append(
                Problem(format_path(path + (str(key),)), f"keys must be text, got {describe(key)}; quote it")
            )
            continue
        why = _unencodable(key)
        if why:
            problems.append(Problem(format_path(path + (key,)), f"this key {why}"))
            continue
        out[key] = _clean(item, path + (key,), problems, blocked, budget)
    return out


def _said(misread):
    return f"{misread.where}: {misread.message}" if misread.where else misread.message


def _unusable(value):
    """Why a scalar cannot be used at all, or None."""
    if isinstance(value, Misread):
        return _said(value)
    if isinstance(value, str):
        return _unencodable(value)
    if isinstance(value, float) and not math.isfinite(value):
        return f"expected a finite number, got {value}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _TOO_LARGE:
        return f"a number with more than {MAX_DIGITS} digits is too large; quote it if it is meant as text"
    return None


def _unencodable(text):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        char = text[error.start]
        return (
            f"holds a lone surrogate ('\\u{ord(char):04x}' at character {error.start + 1}), which is not "
            f"text and cannot be written as UTF-8; remove it"
        )
    return None
