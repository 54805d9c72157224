"""PURE: devstack's local.conf for one node, and the `{placeholder}`s a config may use in its values.

Devstack sources the `[[local|localrc]]` section with bash (xtrace on), so every value is written in double quotes
with everything but plain `$NAME` / `${NAME}` references escaped, and no key may be one of bash's own variables:
references still expand, nothing else can run.
"""

import re

# What a value may say that the plan fills in: name -> what it stands for.
PLACEHOLDERS = {"controller_ip": "the controller's planned address"}

# `{name}`, but not the shell's own `${name}`.
_PLACEHOLDER = re.compile(r"(?<!\$)\{([A-Za-z_][A-Za-z0-9_]*)\}")
# The only shell expansions left active: `$NAME` and `${NAME}` (no `$(...)`, no `${X:-...}`, no backquotes).
_REFERENCE = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\})")
_SPECIAL = re.compile(r'([\\"`$])')
KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\+?\Z")
# Control characters and Unicode line separators would end a line for some reader of local.conf (devstack reads
# it line by line) or confuse the shell; a tab is fine.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")

# Devstack stops to ask for these when they are missing; any of them can be set in the config instead.
DEFAULT_PASSWORDS = (
    ("ADMIN_PASSWORD", "admin"),
    ("DATABASE_PASSWORD", "rally"),
    ("RABBIT_PASSWORD", "rally"),
    ("SERVICE_PASSWORD", "rally"),
    ("SERVICE_TOKEN", "rally"),
)

SECTION = "[[local|localrc]]"

# Bash's own variables, by why a localrc may not set them (devstack sources localrc into its running shell).
_RUNS = "bash expands it and would run what it says (devstack traces with set -o xtrace, which expands PS4)"
_RESERVED = {
    **dict.fromkeys(("PS0", "PS1", "PS2", "PS3", "PS4", "PROMPT_COMMAND"), _RUNS),
    **dict.fromkeys(("BASH_ENV", "ENV"), "bash runs the file it names whenever a script starts"),
    "IFS": "it changes how bash splits every word of devstack's scripts",
    **dict.fromkeys(("SHELLOPTS", "BASHOPTS", "POSIXLY_CORRECT"), "it changes bash's options for devstack's scripts"),
    **dict.fromkeys(("CDPATH", "GLOBIGNORE", "EXECIGNORE"),
                    "it changes what cd, file patterns or command lookup find in devstack's scripts"),
    **dict.fromkeys(("FUNCNEST", "TMOUT"), "it is a limit that would abort devstack's scripts"),
    **dict.fromkeys(("UID", "EUID", "PPID", "BASHPID", "GROUPS", "FUNCNAME", "PIPESTATUS", "DIRSTACK", "HISTCMD",
                     "OPTIND", "OPTARG", "OPTERR", "SHLVL"),
                    "bash sets it itself (most are read-only), so assigning it fails or misleads devstack's scripts"),
    "_": "bash sets it after every command (to the last argument), so the value would be lost at once",
    **dict.fromkeys(("RANDOM", "SRANDOM", "SECONDS", "LINENO", "EPOCHSECONDS", "EPOCHREALTIME"),
                    "bash computes it on every use; assigning it changes what devstack's scripts see"),
}
_RESERVED_PREFIXES = (("BASH", "bash's own variables (BASH_ALIASES and BASH_CMDS change which command a name runs, "
                                "BASH_XTRACEFD where traces go)"),
                      ("COMP_", "bash's completion variables"))


def placeholders(text):
    """The placeholder names used in a value, in order."""
    return [match.group(1) for match in _PLACEHOLDER.finditer(text)]


def resolve(text, values):
    """Fill in known placeholders; anything else (`$DEST/logs`, `${VAR}`) stays as written."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def has_control(text):
    return _CONTROL.search(text) is not None


def reserved(key):
    """Why `key` (a localrc key, maybe ending in '+') may not be set, or None: it is one of bash's own variables."""
    name = key.rstrip("+")
    if name in _RESERVED:
        return _RESERVED[name]
    for prefix, why in _RESERVED_PREFIXES:
        if name.startswith(prefix) and (prefix.endswith("_") or name == prefix or name.startswith(prefix + "_")):
            return why
    return None


def encodable(text):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def as_text(value):
    """A config value as devstack sees it: JSON true/false become True/False, as devstack writes them."""
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def with_defaults(items):
    """The default passwords, then the configured items (a configured key replaces its default in place)."""
    merged = dict(DEFAULT_PASSWORDS)
    for key, value in items:
        merged[key] = value
    return merged


def quote(value):
    """`value` as one bash word in double quotes: `$NAME` and `${NAME}` expand, nothing else does."""
    out = []
    pos = 0
    for match in _REFERENCE.finditer(value):
        out.append(_SPECIAL.sub(r"\\\1", value[pos:match.start()]))
        out.append(match.group(0))
        pos = match.end()
    out.append(_SPECIAL.sub(r"\\\1", value[pos:]))
    return '"' + "".join(out) + '"'


def _literal(word):
    """A word that must not expand at all (plugin names, URLs), in single quotes."""
    return "'" + word.replace("'", "'\\''") + "'"


def render(localrc, plugins=()):
    """The text of local.conf: `KEY="value"` (`KEY+=` for a key ending in '+'), then `enable_plugin` lines."""
    lines = [SECTION]
    for key, value in localrc.items():
        if not KEY.match(key):
            raise ValueError(f"not a shell variable name: {key!r}")
        if reserved(key):
            raise ValueError(f"{key}: {reserved(key)}")
        if has_control(value) or not encodable(value):
            raise ValueError(f"{key}: a value must be one line of UTF-8 text without control characters")
        if key.endswith("+"):
            lines.append(f"{key[:-1]}+={quote(value)}")
        else:
            lines.append(f"{key}={quote(value)}")
    for words in plugins:
        if any(has_control(word) or not encodable(word) for word in words):
            raise ValueError(f"enable_plugin {words!r}: control characters or text that is not UTF-8")
        lines.append("enable_plugin " + " ".join(_literal(word) for word in words))
    return "\n".join(lines) + "\n"
