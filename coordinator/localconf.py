"""PURE: devstack's local.conf for one node, the `{placeholder}`s a config may use in its values, and what devstack
makes of a localrc (its enabled services).

Devstack sources the `[[local|localrc]]` section with bash (xtrace on), so every value is written in double quotes
with everything but plain `$NAME` / `${NAME}` references escaped, and no key may be one of bash's own variables:
references still expand, nothing else can run.

The meta-sections (`[[post-config|$NOVA_CONF]]` ...) go through worse: devstack's merge_config_group `eval`s the
file's text, and merge_config_file turns each `option = value` into `iniset FILE SECTION OPTION "value"`, reads it
with `read` (no -r: one level of backslashes goes) and `eval`s it, after which iniset runs `echo $value` unquoted
(words split, file patterns expand, a leading `-n` is an option). So files, sections and options are kept to
characters none of these steps change, values are escaped for both `read` and the double quotes (again only plain
`$NAME` / `${NAME}` expand), and a value those unquoted steps would change is refused rather than written.
"""

import difflib
import fnmatch
import json
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

# Where a node finds the coordinator's git mirror (the deploy puts it there); GIT_BASE points devstack at it.
NODE_GIT_MIRROR = "/opt/stack/.lxc-cloud/mirror"
MIRROR_GIT_BASE = f"file://{NODE_GIT_MIRROR}"

# The phases stack.sh merges meta-sections in (merge_config_group); `local` is the localrc section itself.
META_PHASES = ("post-config", "extra", "post-extra", "test-config")
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_FILE = re.compile(rf"(?:\$(?:{_NAME}|\{{{_NAME}\}})|[A-Za-z0-9_./-])+\Z")
_FILE_TOKEN = re.compile(rf"\$(?:{_NAME}|\{{{_NAME}\}})|[A-Za-z0-9_./-]")
_FILE_REFERENCE = re.compile(rf"\$(?:({_NAME})|\{{({_NAME})\}})")
# Sections and options go unquoted through eval and into iniset's sed and grep patterns.
INI_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*\Z")
# iniset's unquoted `echo $value` would replace these with matching file names (in stack.sh's directory).
_GLOB = re.compile(r"[*?[]")
_ECHO_OPTION = re.compile(r"-[neE]+\Z")
_META_SPECIAL = re.compile(r'([\\"`$])')

# Devstack's own list when a localrc does not set ENABLED_SERVICES (stackrc, stable/2026.1).
DEFAULT_SERVICES = (
    "key",
    "n-api",
    "n-cpu",
    "n-cond",
    "n-sch",
    "n-novnc",
    "n-api-meta",
    "placement-api",
    "placement-client",
    "g-api",
    "c-sch",
    "c-api",
    "c-vol",
    "ovn-controller",
    "ovn-northd",
    "ovs-vswitchd",
    "ovsdb-server",
    "q-svc",
    "q-ovn-agent",
    "horizon",
    "rabbit",
    "tempest",
    "mysql",
    "etcd3",
    "dstat",
)

# Bash's own variables, by why a localrc may not set them (devstack sources localrc into its running shell).
_RUNS = "bash expands it and would run what it says (devstack traces with set -o xtrace, which expands PS4)"
_RESERVED = {
    **dict.fromkeys(("PS0", "PS1", "PS2", "PS3", "PS4", "PROMPT_COMMAND"), _RUNS),
    **dict.fromkeys(("BASH_ENV", "ENV"), "bash runs the file it names whenever a script starts"),
    "IFS": "it changes how bash splits every word of devstack's scripts",
    **dict.fromkeys(("SHELLOPTS", "BASHOPTS", "POSIXLY_CORRECT"), "it changes bash's options for devstack's scripts"),
    **dict.fromkeys(
        ("CDPATH", "GLOBIGNORE", "EXECIGNORE"),
        "it changes what cd, file patterns or command lookup find in devstack's scripts",
    ),
    **dict.fromkeys(("FUNCNEST", "TMOUT"), "it is a limit that would abort devstack's scripts"),
    **dict.fromkeys(
        (
            "UID",
            "EUID",
            "PPID",
            "BASHPID",
            "GROUPS",
            "FUNCNAME",
            "PIPESTATUS",
            "DIRSTACK",
            "HISTCMD",
            "OPTIND",
            "OPTARG",
            "OPTERR",
            "SHLVL",
        ),
        "bash sets it itself (most are read-only), so assigning it fails or misleads devstack's scripts",
    ),
    "_": "bash sets it after every command (to the last argument), so the value would be lost at once",
    **dict.fromkeys(
        ("RANDOM", "SRANDOM", "SECONDS", "LINENO", "EPOCHSECONDS", "EPOCHREALTIME"),
        "bash computes it on every use; assigning it changes what devstack's scripts see",
    ),
}
_RESERVED_PREFIXES = (
    (
        "BASH",
        "bash's own variables (BASH_ALIASES and BASH_CMDS change which command a name runs, "
        "BASH_XTRACEFD where traces go)",
    ),
    ("COMP_", "bash's completion variables"),
)


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


def with_defaults(items, defaults=()):
    """The default passwords, then `defaults` (the planner's, for keys the config leaves out, so a configured
    value may refer to them), then the configured items (a configured key replaces its default in place)."""
    merged = dict(DEFAULT_PASSWORDS)
    merged.update(defaults)
    for key, value in items:
        merged[key] = value
    return merged


def quote(value):
    """`value` as one bash word in double quotes: `$NAME` and `${NAME}` expand, nothing else does."""
    out = []
    pos = 0
    for match in _REFERENCE.finditer(value):
        out.append(_SPECIAL.sub(r"\\\1", value[pos : match.start()]))
        out.append(match.group(0))
        pos = match.end()
    out.append(_SPECIAL.sub(r"\\\1", value[pos:]))
    return '"' + "".join(out) + '"'


def _literal(word):
    """A word that must not expand at all (plugin names, URLs), in single quotes."""
    return "'" + word.replace("'", "'\\''") + "'"


def render(localrc, plugins=(), meta_sections=None):
    """The text of local.conf: `KEY="value"` (`KEY+=` for a key ending in '+'), then `enable_plugin` lines, then
    each meta-section (`{"PHASE|FILE": {section: {option: value}}}`) as devstack reads it. ValueError for anything
    that could not be written safely (the config's checks say the same with the config's path)."""
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
    for header, sections in (meta_sections or {}).items():
        why = meta_header_problems(header)
        if why:
            raise ValueError(f"[[{header}]]: {why[0]}")
        lines += ["", f"[[{header}]]"]
        for section, options in sections.items():
            why = ini_name_problem(section, "section")
            if why:
                raise ValueError(f"[[{header}]] [{section}]: {why}")
            lines.append(f"[{section}]")
            for option, value in options.items():
                text = as_text(value)
                why = ini_name_problem(option, "option") or next(iter(meta_value_problems(text)), None)
                if why:
                    raise ValueError(f"[[{header}]] [{section}] {option}: {why}")
                lines.append(f"{option} = {quote_meta(text)}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- meta-sections


def meta_header_problems(header):
    """What is wrong with a meta-section header `PHASE|FILE` (without the brackets), each saying what to do."""
    phase, bar, file = header.partition("|")
    if not bar:
        return [
            'expected "PHASE|FILE" (devstack\'s [[PHASE|FILE]] header without the brackets), e.g. '
            '"post-config|$NOVA_CONF"'
        ]
    if phase == "local":
        return ["the [[local|localrc]] section is written from 'localrc' (or 'local_conf'); put these settings there"]
    problems = []
    if phase not in META_PHASES:
        guess = difflib.get_close_matches(phase, META_PHASES, n=1, cutoff=0.6)
        hint = f"; did you mean '{guess[0]}'?" if guess else ""
        problems.append(
            f"unknown phase {phase!r}: stack.sh merges meta-sections in the phases {', '.join(META_PHASES)}{hint}"
        )
    problems += _file_problems(phase, file)
    return problems


def _file_problems(phase, file):
    if not file:
        return ["no file after '|': give a devstack variable such as $NOVA_CONF, or an absolute path"]
    if not _FILE.match(file):
        rest = _FILE_TOKEN.sub("", file)
        char = rest[0]
        what = (
            "'$' only as $NAME or ${NAME}"
            if char == "$"
            else f"{char!r}"
            if char.isprintable()
            else f"the character {char!a}"
        )
        return [
            f"the file {file!r} may hold only devstack variables ($NAME or ${{NAME}}) and the characters "
            f"A-Z a-z 0-9 _ . / - (found {what}): devstack runs this text through eval and splits it on "
            f"spaces; write e.g. $NOVA_CONF, ${{NOVA_CONF}}, /$Q_PLUGIN_CONF_FILE or /etc/nova/nova.conf"
        ]
    if not file.startswith(("$", "/")):
        return [
            f"the file {file!r} is a relative path, which devstack would take from the folder stack.sh runs "
            f"in: start it with a devstack variable ($NOVA_CONF) or '/'"
        ]
    if ".." in file.split("/"):
        return [f"the file {file!r} climbs out of a folder with '..': give the file's own path"]
    if phase == "post-config" and file == "${NOVA_CPU_CONF}":
        return [
            "write it as '$NOVA_CPU_CONF': lib/nova copies nova.conf over nova-cpu.conf when it starts "
            "nova-compute and merges back only the section headed exactly [[post-config|$NOVA_CPU_CONF]]"
        ]
    return []


def meta_file(file):
    """One spelling per file for comparisons: `$NOVA_CONF` and `${NOVA_CONF}` are the same file."""
    return _FILE_REFERENCE.sub(lambda m: "${" + (m.group(1) or m.group(2)) + "}", file)


def ini_name_problem(name, what):
    """Why `name` cannot be a section or option name in a meta-section (`what` says which), or None."""
    if INI_NAME.match(name):
        return None
    shown = json.dumps(name)
    return (
        f"{what} names may hold only letters, digits and _ . : - and start with a letter, digit or '_' "
        f"(got {shown}): devstack passes them unquoted through eval and into sed patterns; name it as the "
        f"service's config file does, e.g. DEFAULT, keystone_authtoken, filter:authtoken"
    )


def meta_value_problems(text):
    """Why a meta-section value would not reach the ini file exactly as given, each saying what to do."""
    if has_control(text) or "\t" in text:
        return [
            "a value must be one line, without tabs or control characters (iniset writes one line, and "
            "turns tabs into spaces)"
        ]
    if not encodable(text):
        return ["a value must be UTF-8 text (it holds a lone surrogate)"]
    problems = []
    if text != text.strip(" "):
        problems.append(
            "starts or ends with a space, which devstack drops when it reads the section: remove it "
            "(local.conf cannot carry spaces at the ends of a value)"
        )
    if "  " in text:
        problems.append(
            "holds two spaces in a row, which iniset's unquoted `echo $value` joins into one: write single spaces"
        )
    words = text.split(" ")
    if _ECHO_OPTION.match(words[0]):
        problems.append(
            f"starts with the word '{words[0]}', which iniset's unquoted `echo $value` takes as "
            f"its own option (the value would be lost): local.conf cannot set this value"
        )
    for word in words:
        if _GLOB.search(word) and "://" not in word:
            problems.append(
                f"the word {json.dumps(word)} holds '*', '?' or '[', which iniset's unquoted "
                f"`echo $value` replaces with the names of matching files: local.conf cannot set "
                f"this value (a URL, with '://', is fine)"
            )
            break
    return problems


def quote_meta(value):
    """A meta-section value as written after `option = `: `$NAME` and `${NAME}` expand when devstack evals
    the iniset line; every other `\\`, `$`, `"` and backquote gets three backslashes (one for `read`, which
    merge_config_file uses without -r, one to escape the next for the double quotes of the eval)."""
    out = []
    pos = 0
    for match in _REFERENCE.finditer(value):
        out.append(_META_SPECIAL.sub(lambda m: "\\\\\\" + m.group(1), value[pos : match.start()]))
        out.append(match.group(0))
        pos = match.end()
    out.append(_META_SPECIAL.sub(lambda m: "\\\\\\" + m.group(1), value[pos:]))
    return "".join(out)


# ---------------------------------------------------------------- what devstack makes of a localrc

_SELF_REFERENCE = re.compile(r"\$(?:ENABLED_SERVICES(?![A-Za-z0-9_])|\{ENABLED_SERVICES\})")


def enabled_services(localrc):
    """The services devstack enables for a resolved localrc (a dict in order), as stackrc and stack.sh compute
    them: the default list unless `ENABLED_SERVICES` replaces it, `ENABLED_SERVICES+` appended as text, then
    every `-name` entry removed (disable_negated_services). Each name once, in order."""
    current = ",".join(DEFAULT_SERVICES)
    for key, value in localrc.items():
        if key.rstrip("+") != "ENABLED_SERVICES":
            continue
        value = _SELF_REFERENCE.sub(current.replace("\\", "\\\\"), value)
        current = current + value if key.endswith("+") else value
    return negated(current)


def negated(services):
    """A comma-separated service list after devstack's disable_negated_services (`-name` removes `name`)."""
    words = [word for word in re.split(r"[,\s]+", services) if word]
    removed = [word[1:] for word in words if word.startswith("-")]
    out = []
    for word in words:
        # devstack tests `[[ $remove == $service ]]`: the enabled name is the pattern.
        if word.startswith("-") or word in out or any(fnmatch.fnmatchcase(gone, word) for gone in removed):
            continue
        out.append(word)
    return tuple(out)
