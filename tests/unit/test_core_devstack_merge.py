"""Meta-sections through devstack's own merge: the real inc/ini-config and inc/meta-config functions of the
devstack tree in $DEVSTACK_TREE (default /tmp/os/devstack) merge a rendered local.conf into ini files in a
temporary folder. What they write must be exactly what the config said, and no value, however hostile, may run
anything; what they cannot write as given is refused by the config's checks instead."""

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from coordinator import localconf, topology
from coordinator.config import ConfigError, validate

BUNDLE = Path(__file__).resolve().parents[3] / "shared" / "openstack" / "devstack.bundle"


def devstack_tree():
    """$DEVSTACK_TREE, else a checkout of ../shared/openstack/devstack.bundle (made once per bundle, in /tmp),
    else /tmp/os/devstack."""
    if os.environ.get("DEVSTACK_TREE"):
        return Path(os.environ["DEVSTACK_TREE"])
    if not BUNDLE.is_file():
        return Path("/tmp/os/devstack")
    stat = BUNDLE.stat()
    target = Path(tempfile.gettempdir()) / f"lxc-cloud-devstack-{stat.st_size}-{int(stat.st_mtime)}"
    if not (target / "inc" / "meta-config").is_file():
        scratch = Path(tempfile.mkdtemp(prefix="lxc-cloud-devstack-"))
        subprocess.run(["git", "clone", "-q", str(BUNDLE), str(scratch / "devstack")], check=True)
        with contextlib.suppress(OSError):  # another run made it meanwhile
            os.rename(scratch / "devstack", target)
        shutil.rmtree(scratch, ignore_errors=True)
    return target


TREE = devstack_tree()

pytestmark = pytest.mark.skipif(
    not (TREE / "inc" / "meta-config").is_file() or not (TREE / "inc" / "ini-config").is_file(),
    reason=f"no devstack tree at {TREE} (set DEVSTACK_TREE to a devstack checkout with inc/meta-config)",
)


# mawk (Debian's default awk) reads `! (section, attr) in cfg_attr_count` in merge_config_file as `(!(section, attr))
# in ...` and drops every option; devstack installs gawk (files/debs/general), which reads it as `!(... in ...)`.
_GAWK_READING = ("! (section, attr) in cfg_attr_count", "!((section, attr) in cfg_attr_count)")


def awk_command(folder):
    """gawk, as on a devstack node; else mawk behind a shim that writes that one expression as gawk reads it."""
    if shutil.which("gawk"):
        return shutil.which("gawk")
    if not shutil.which("mawk"):
        pytest.skip("neither gawk nor mawk is installed: devstack's merge_config_file needs gawk")
    shim = folder / "awk-as-gawk"
    shim.write_text(
        "#!/bin/bash\nargs=()\nfor a in \"$@\"; do args+=(\"${{a//'{}'/'{}'}}\"); done\n"
        'exec mawk "${{args[@]}}"\n'.format(*_GAWK_READING)
    )
    shim.chmod(0o755)
    return str(shim)


def merge(tmp_path, text, phases=("post-config",), variables=None, existing=None):
    """Write `text` as local.conf, then run devstack's merge_config_group for each phase the way stack.sh does
    (xtrace and errexit on, in a folder of its own, NOVA_CONF and friends pointing into tmp_path). `existing`:
    {path: text} written first, so iniset replaces options instead of adding them. Returns {path: ini dict}."""
    work = tmp_path / "work"
    etc = tmp_path / "etc"
    work.mkdir(exist_ok=True)
    files = {
        "NOVA_CONF": etc / "nova" / "nova.conf",
        "OTHER_CONF": etc / "other" / "other.conf",
        # Like Q_PLUGIN_CONF_FILE, relative, used as /$REL_CONF: here it lands in tmp_path too.
        "REL_CONF": Path(str(tmp_path / "rel" / "ml2.ini").lstrip("/")),
    }
    for path in files.values():
        (Path("/") / path).parent.mkdir(parents=True, exist_ok=True)
    for path, content in (existing or {}).items():
        Path(path).write_text(content)
    (work / "local.conf").write_text(text)
    values = {
        **{name: str(path) for name, path in files.items()},
        "DEST": "/opt/stack",
        "STACK_USER": "stack",
        **(variables or {}),
    }
    script = (
        "set -o errexit\n"
        f"CONFIG_AWK_CMD={awk_command(tmp_path)}\n"
        f"source {TREE}/inc/ini-config\n"
        f"source {TREE}/inc/meta-config\n"
        'warn() { echo "warn: $*" >&2; }\n'
        'die() { echo "die: $*" >&2; exit 1; }\n'
        + "".join(f"{name}={json.dumps(value)}\n" for name, value in values.items())
        + "set -o xtrace\n"
        + "".join(f"merge_config_group {work}/local.conf {phase}\n" for phase in phases)
    )
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, cwd=work, timeout=60, env={"PATH": os.environ["PATH"]}
    )
    assert result.returncode == 0, result.stderr.decode()
    return result


def read_ini(path):
    """{section: {option: value}} as iniset wrote it; an option twice in a section is an error here."""
    out, section = {}, None
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        header = re.fullmatch(r"\[(.+)\]", line)
        if header:
            section = out.setdefault(header.group(1), {})
            continue
        option, value = re.fullmatch(r"([^=\s]+)[ \t]*=[ \t]?(.*)", line).groups()
        assert option not in section, f"{option} twice in {path}"
        section[option] = value
    return out


def pwned(folder):
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------- values

BENIGN = [
    ("integer", 10, "10"),
    ("negative", -1, "-1"),
    ("true", True, "True"),
    ("false", False, "False"),
    ("words", "a b c", "a b c"),
    ("empty", "", ""),
    ("equals", "a=b = c", "a=b = c"),
    (
        "url-with-query",
        "mysql+pymysql://root:pw@127.0.0.1/nova?charset=utf8",
        "mysql+pymysql://root:pw@127.0.0.1/nova?charset=utf8",
    ),
    ("url-with-star", "http://example.com/*", "http://example.com/*"),
    ("unicode", "naïve ☃", "naïve ☃"),
    ("hash", "#not-a-comment", "#not-a-comment"),
    ("semicolon", "a;b", "a;b"),
    ("percent", "50% %s", "50% %s"),
    ("braces", "{a,b} {}", "{a,b} {}"),
    ("tilde", "~root", "~root"),
    ("bang", "!! !$", "!! !$"),
    ("dash-word", "-x -n", "-x -n"),
    ("reference", "$DEST/data", "/opt/stack/data"),
    ("braced-reference", "${DEST}x", "/opt/stackx"),
]

# Each must reach the ini file exactly as written, and run nothing. PWN stands for a folder in tmp_path.
HOSTILE = [
    ("command-substitution", "$(touch PWN/subst)"),
    ("backquotes", "`touch PWN/backquote`"),
    ("break-out-of-quotes", '"; touch PWN/quote; "'),
    ("single-quotes", "' ; touch PWN/single ; '"),
    ("backslash", "back\\slash"),
    ("backslash-dollar", "\\$(touch PWN/bs)"),
    ("backslash-quote", '\\"; touch PWN/bsq; \\"'),
    ("backslash-backquote", "\\`touch PWN/bsb\\`"),
    ("trailing-backslash", "end\\"),
    ("double-backslash", "\\\\two"),
    ("default-expansion", "${X:-$(touch PWN/default)}"),
    ("arithmetic", "$((1+2))"),
    ("special-parameters", "$$ $# $@ $1 $"),
    ("lone-dollar-brace", "${"),
    ("escapes-stay-text", "\\n\\t\\x41"),
    ("sed-specials", "a&b \\1 /x/y/ |c"),
    ("and-and", "a && touch PWN/and"),
    ("redirect", "> PWN/redirect"),
    ("pipe", "a | touch PWN/pipe"),
]


def hostile(tmp_path):
    folder = tmp_path / "pwn"
    return folder, [(name, value.replace("PWN", str(folder))) for name, value in HOSTILE]


def meta_for(values):
    """Every value in two files and two sections, so both of iniset's ways of writing meet each one."""
    options = {f"o{index}": value for index, value in enumerate(values)}
    return {
        "post-config|$NOVA_CONF": {"DEFAULT": dict(options), "filter:authtoken": dict(options)},
        "post-config|${OTHER_CONF}": {"section_2": dict(options)},
        "post-config|/$REL_CONF": {"ml2": dict(options)},
    }


@pytest.mark.parametrize("existing", [False, True], ids=["new-options", "replacing-options"])
def test_devstack_writes_every_value_exactly_and_runs_nothing(tmp_path, existing):
    folder, bad = hostile(tmp_path)
    given = [(name, value) for name, value, _ in BENIGN] + bad
    expected = [text for _, _, text in BENIGN] + [value for _, value in bad]
    meta = meta_for([value for _, value in given])
    for _, value in given:
        assert localconf.meta_value_problems(localconf.as_text(value)) == [], value
    before = {}
    if existing:
        # Every option there already, with another value: iniset then rewrites the line (sed s) instead of
        # adding one (sed a).
        stale = "".join(f"o{index} = stale\n" for index in range(len(given)))
        before = {
            tmp_path / "etc" / "nova" / "nova.conf": f"[DEFAULT]\n{stale}[filter:authtoken]\n{stale}",
            tmp_path / "etc" / "other" / "other.conf": f"[section_2]\n{stale}",
            tmp_path / "rel" / "ml2.ini": f"[ml2]\n{stale}",
        }
    merge(tmp_path, localconf.render({"A": "1"}, (), meta), existing=before)
    want = {f"o{index}": text for index, text in enumerate(expected)}
    assert read_ini(tmp_path / "etc" / "nova" / "nova.conf") == {"DEFAULT": want, "filter:authtoken": want}
    assert read_ini(tmp_path / "etc" / "other" / "other.conf") == {"section_2": want}
    assert read_ini(tmp_path / "rel" / "ml2.ini") == {"ml2": want}
    assert pwned(folder) == [] and pwned(tmp_path / "work") == ["local.conf"]


def test_the_harness_would_catch_a_command_in_a_value(tmp_path):
    # The danger the escaping guards against: a value written as is runs its command inside merge_config_file.
    folder = tmp_path / "pwn"
    folder.mkdir()
    merge(tmp_path, f"[[local|localrc]]\nA=1\n[[post-config|$NOVA_CONF]]\n[DEFAULT]\nx = $(touch {folder}/raw)\n")
    assert pwned(folder) == ["raw"]


# What devstack does to the values the config's checks refuse: none would arrive as written.
NOT_AS_WRITTEN = [
    ("glob", "*", lambda got: got != "*"),
    ("two-spaces", "a  b", lambda got: got == "a b"),
    ("echo-option", "-n", lambda got: got == ""),
    ("echo-escapes", "-e a\\tb", lambda got: got != "-e a\\tb"),
    ("leading-space", " a", lambda got: got == "a"),
]


@pytest.mark.parametrize("value,changed", [case[1:] for case in NOT_AS_WRITTEN], ids=[c[0] for c in NOT_AS_WRITTEN])
def test_values_devstack_would_change_are_refused(tmp_path, value, changed):
    assert localconf.meta_value_problems(value)
    with pytest.raises(ValueError):
        localconf.render({}, (), {"post-config|$NOVA_CONF": {"DEFAULT": {"x": value}}})
    # Written by hand (escaped for read and eval, as the renderer would), devstack changes it.
    escaped = localconf.quote_meta(value)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "decoy-file").write_text("")
    merge(tmp_path, f"[[local|localrc]]\nA=1\n[[post-config|$NOVA_CONF]]\n[DEFAULT]\nx = {escaped}\n")
    assert changed(read_ini(tmp_path / "etc" / "nova" / "nova.conf")["DEFAULT"]["x"])


# ---------------------------------------------------------------- files, sections, options

HOSTILE_NAMES = [
    ("file-command", "post-config|$(touch PWN/file)", None, None),
    ("file-backquote", "post-config|`touch PWN/fileb`", None, None),
    ("file-default-expansion", "post-config|${NOVA_CONF:-$(touch PWN/filed)}", None, None),
    ("file-space", "post-config|/tmp/a b", None, None),
    ("file-semicolon", "post-config|$NOVA_CONF;touch", None, None),
    ("file-dotdot", "post-config|$NOVA_CONF/../../x", None, None),
    ("file-relative", "post-config|nova.conf", None, None),
    ("file-glob", "post-config|/etc/*", None, None),
    ("phase-unknown", "post-conf|$NOVA_CONF", None, None),
    ("section-bracket", "post-config|$NOVA_CONF", "DEFAULT]x", None),
    ("section-command", "post-config|$NOVA_CONF", "$(touch PWN/section)", None),
    ("section-space", "post-config|$NOVA_CONF", "a b", None),
    ("section-slash", "post-config|$NOVA_CONF", "a/b", None),
    ("section-glob", "post-config|$NOVA_CONF", "*", None),
    ("option-equals", "post-config|$NOVA_CONF", "DEFAULT", "a=b"),
    ("option-command", "post-config|$NOVA_CONF", "DEFAULT", "`touch PWN/option`"),
    ("option-quote", "post-config|$NOVA_CONF", "DEFAULT", 'a"b'),
    ("option-comment", "post-config|$NOVA_CONF", "DEFAULT", "#a"),
    ("option-section", "post-config|$NOVA_CONF", "DEFAULT", "[a]"),
    ("option-backslash", "post-config|$NOVA_CONF", "DEFAULT", "a\\b"),
    ("option-dollar", "post-config|$NOVA_CONF", "DEFAULT", "$X"),
]


@pytest.mark.parametrize(
    "header,section,option", [case[1:] for case in HOSTILE_NAMES], ids=[case[0] for case in HOSTILE_NAMES]
)
def test_hostile_files_sections_and_options_are_refused_with_their_path(tmp_path, header, section, option):
    header = header.replace("PWN", str(tmp_path))
    section = (section or "DEFAULT").replace("PWN", str(tmp_path))
    option = (option or "x").replace("PWN", str(tmp_path))
    meta = {header: {section: {option: "1"}}}
    with pytest.raises(ValueError):
        localconf.render({}, (), meta)
    data = {
        "type": "DevstackEngine",
        "meta_sections": meta,
        "provider": {"type": "ExistingServers", "credentials": [{"host": "h"}]},
    }
    with pytest.raises(ConfigError) as caught:
        validate(data)
    paths = {problem.path for problem in caught.value.problems}
    assert paths & {
        f"meta_sections[{json.dumps(header)}]" + tail
        for tail in (
            "",
            f"[{json.dumps(section)}]",
            f".{section}",
            f".{section}.{option}",
            f".{section}[{json.dumps(option)}]",
            f"[{json.dumps(section)}].{option}",
            f"[{json.dumps(section)}][{json.dumps(option)}]",
        )
    }, caught.value.problems


def test_phases_are_merged_only_in_their_own_phase(tmp_path):
    meta = {
        "post-config|$NOVA_CONF": {"DEFAULT": {"a": "1"}},
        "extra|$OTHER_CONF": {"s": {"b": "2"}},
        "test-config|$OTHER_CONF": {"t": {"c": "3"}},
    }
    merge(tmp_path, localconf.render({}, (), meta))
    assert read_ini(tmp_path / "etc" / "nova" / "nova.conf") == {"DEFAULT": {"a": "1"}}
    assert not (tmp_path / "etc" / "other" / "other.conf").exists()
    merge(tmp_path, localconf.render({}, (), meta), phases=("extra", "post-extra"))
    assert read_ini(tmp_path / "etc" / "other" / "other.conf") == {"s": {"b": "2"}}


def test_the_localrc_section_devstack_extracts_holds_no_meta_section(tmp_path):
    text = localconf.render(
        {"VIRT_DRIVER": "fake"}, (("heat", "https://h/heat"),), {"post-config|$NOVA_CONF": {"DEFAULT": {"x": "1"}}}
    )
    (tmp_path / "local.conf").write_text(text)
    script = (
        f"CONFIG_AWK_CMD={awk_command(tmp_path)}\n"
        f"source {TREE}/inc/meta-config\n"
        f"extract_localrc_section {tmp_path}/local.conf {tmp_path}/localrc {tmp_path}/.localrc.auto\n"
    )
    result = subprocess.run(["bash", "-c", script], capture_output=True, timeout=60, env={"PATH": os.environ["PATH"]})
    assert result.returncode == 0, result.stderr.decode()
    lines = [line for line in (tmp_path / ".localrc.auto").read_text().splitlines() if line.strip()]
    assert lines == ["# Generated file, do not edit", 'VIRT_DRIVER="fake"', "enable_plugin 'heat' 'https://h/heat'"]


# ---------------------------------------------------------------- the whole way: config, plan, devstack


def test_a_planned_compute_gets_its_settings_and_the_defaults_into_nova_conf(tmp_path):
    folder = tmp_path / "pwn"
    config = {
        "type": "MultihostEngine",
        "controller": {
            "type": "DevstackEngine",
            "localrc": {"ENABLED_SERVICES+": ",-n-cpu"},
            "provider": {
                "type": "LxcProvider",
                "host_provider": {"type": "ExistingServers", "credentials": [{"host": "localhost"}]},
            },
        },
        "nodes": [
            {
                "type": "LxcEngine",
                "provider": {"type": "ExistingServers", "credentials": [{"host": "localhost"}]},
                "engine": {
                    "type": "DevstackEngine",
                    "localrc": {"VIRT_DRIVER": "fake"},
                    "meta_sections": {
                        "post-config|${NOVA_CONF}": {
                            "DEFAULT": {"my_ip": "{controller_ip}", "evil": f"$(touch {folder}/evil)"},
                            "quota": {"instances": -1, "enabled": True},
                        }
                    },
                },
            }
        ],
    }
    node = topology.plan(validate(config)).nodes[1]
    merge(tmp_path, node.local_conf)
    assert read_ini(tmp_path / "etc" / "nova" / "nova.conf") == {
        "DEFAULT": {
            "my_ip": "10.100.1.2",
            "evil": f"$(touch {folder}/evil)",
            "report_interval": "10",
            "service_down_time": "60",
        },
        "quota": {"instances": "-1", "enabled": "True"},
    }
    assert pwned(folder) == []
