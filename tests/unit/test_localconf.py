"""local.conf rendering, checked the way devstack reads it: the localrc section extracted and sourced by bash."""

import os
import re
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator import localconf


def localrc_section(text):
    """The lines of [[local|localrc]] up to the next [[...|...]] header, as devstack's get_meta_section takes them."""
    lines, inside = [], False
    for line in text.split("\n"):
        if re.match(r"^\[\[.+\|.*\]\]", line):
            inside = line.strip() == "[[local|localrc]]"
            continue
        if inside:
            lines.append(line)
    return "\n".join(lines) + "\n"


def source(text, names, tmp_path, env=None, xtrace=False):
    """Source the localrc section in bash (with an `enable_plugin` that records its arguments) and read back
    each named variable exactly, NUL-separated; return (values, recorded plugin calls). With `xtrace`, source it
    as devstack does, under `set -o xtrace` (which expands PS4 for every traced line)."""
    section = tmp_path / "localrc"
    section.write_text(localrc_section(text))
    script = (
        "PLUGINS=()\n"
        'enable_plugin() { local a; for a in "$@"; do PLUGINS+=("$a"); done; PLUGINS+=("--"); }\n'
        + ("set -o xtrace\n" if xtrace else "")
        + f"source {section}\n"
        + ("set +o xtrace\n" if xtrace else "")
        + "".join(f'printf "%s\\0" "${{{name}}}"\n' for name in names)
        + 'printf "%s\\0" "${PLUGINS[@]}"\n'
    )
    result = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        env={"PATH": os.environ["PATH"], **(env or {})},
        cwd=tmp_path,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr.decode()
    fields = result.stdout.decode().split("\0")[:-1]
    values = dict(zip(names, fields[: len(names)], strict=True))
    calls, current = [], []
    for word in fields[len(names) :]:
        if word == "--":
            calls.append(tuple(current))
            current = []
        elif word:
            current.append(word)
    return values, calls


HOSTILE = [
    ("semicolon", "x; touch pwned-semicolon"),
    ("command-substitution", "$(touch pwned-subst)"),
    ("backquotes", "`touch pwned-backquote`"),
    ("arithmetic", "$((1+2))"),
    ("default-expansion", "${X:-$(touch pwned-default)}"),
    ("double-quote", 'a"; touch pwned-quote; echo "'),
    ("single-quote", "it's"),
    ("backslash-end", "back\\"),
    ("backslash-dollar", "\\$(touch pwned-bs)"),
    ("newline-free-and", "a && touch pwned-and"),
    ("pipe", "a | touch pwned-pipe"),
    ("redirect", "> pwned-redirect"),
    ("glob", "*"),
    ("tilde", "~root"),
    ("bang", "!!"),
    ("special-params", "$1 $@ $$ $? $#"),
    ("unicode", "naïve ☃"),
    ("braces", "{}"),
    ("empty", ""),
]


@pytest.mark.parametrize("value", [value for _, value in HOSTILE], ids=[name for name, _ in HOSTILE])
def test_hostile_value_stays_a_literal_string(value, tmp_path):
    text = localconf.render({"VALUE": value})
    values, _ = source(text, ["VALUE"], tmp_path)
    assert values["VALUE"] == value
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith("pwned")]


REFERENCES = [
    ("dollar-name", "$DEST/logs/screen", "/opt/stack/logs/screen"),
    ("dollar-braces", "${DEST}/logs", "/opt/stack/logs"),
    ("two-references", "$DEST:$HOST", "/opt/stack:h1"),
    ("unset-variable", "$UNSET_ONE/x", "/x"),
    ("reference-then-text", "${DEST}x$", "/opt/stackx$"),
]


@pytest.mark.parametrize("value,expected", [(v, e) for _, v, e in REFERENCES], ids=[n for n, _, _ in REFERENCES])
def test_references_expand_like_devstack_expects(value, expected, tmp_path):
    values, _ = source(localconf.render({"DEST": "/opt/stack", "HOST": "h1", "VALUE": value}), ["VALUE"], tmp_path)
    assert values["VALUE"] == expected


def test_plus_key_appends(tmp_path):
    text = localconf.render({"ENABLED_SERVICES": "n-api,n-cpu", "ENABLED_SERVICES+": ",-n-cpu"})
    assert 'ENABLED_SERVICES+=",-n-cpu"' in text.splitlines()
    values, _ = source(text, ["ENABLED_SERVICES"], tmp_path)
    assert values["ENABLED_SERVICES"] == "n-api,n-cpu,-n-cpu"


def test_enable_plugin_lines_reach_the_function_literally(tmp_path):
    plugins = (("heat", "https://opendev.org/openstack/heat"), ("odd", "$(touch pwned-plugin)", "stable/2024.1"))
    text = localconf.render({"A": "1"}, plugins)
    assert text.splitlines()[-2].startswith("enable_plugin 'heat' ")
    _, calls = source(text, ["A"], tmp_path)
    assert calls == list(plugins)
    assert not (tmp_path / "pwned-plugin").exists()


def test_rendered_file_starts_with_the_localrc_section():
    text = localconf.render({"VIRT_DRIVER": "fake"})
    assert text == '[[local|localrc]]\nVIRT_DRIVER="fake"\n'


@pytest.mark.parametrize("key", ["BAD KEY", "1X", "A;B", "A-B", "A++", "", "reboot\n", "A\nB"], ids=repr)
def test_render_refuses_keys_that_are_not_shell_names(key):
    with pytest.raises(ValueError):
        localconf.render({key: "x"})


@pytest.mark.parametrize(
    "value",
    ["a\nb", "a\rb", "a\x00b", "a\x85b", "a\u2028b", "a\x1bb", "a\ud800b"],
    ids=["newline", "return", "nul", "next-line", "line-separator", "escape", "surrogate"],
)
def test_render_refuses_values_that_break_lines(value):
    with pytest.raises(ValueError):
        localconf.render({"A": value})


def test_default_passwords_come_first_and_can_be_overridden():
    merged = localconf.with_defaults([("VIRT_DRIVER", "fake"), ("ADMIN_PASSWORD", "s3cret")])
    assert list(merged)[:5] == [key for key, _ in localconf.DEFAULT_PASSWORDS]
    assert merged["ADMIN_PASSWORD"] == "s3cret"
    assert merged["DATABASE_PASSWORD"] == "rally"
    assert list(merged)[-1] == "VIRT_DRIVER"


PLACEHOLDER_CASES = [
    ("controller-ip", "{controller_ip}:9292", ["controller_ip"], "10.0.0.2:9292"),
    ("shell-braces-untouched", "${VAR}/{controller_ip}", ["controller_ip"], "${VAR}/10.0.0.2"),
    ("dollar-name-untouched", "$DEST/logs/screen", [], "$DEST/logs/screen"),
    ("unknown-left-as-written", "{other}", ["other"], "{other}"),
    ("not-a-name", "{1x} {} {a-b}", [], "{1x} {} {a-b}"),
]


@pytest.mark.parametrize(
    "text,names,resolved", [(t, n, r) for _, t, n, r in PLACEHOLDER_CASES], ids=[case[0] for case in PLACEHOLDER_CASES]
)
def test_placeholders_found_and_resolved(text, names, resolved):
    assert localconf.placeholders(text) == names
    assert localconf.resolve(text, {"controller_ip": "10.0.0.2"}) == resolved


@pytest.mark.parametrize(
    "value,text",
    [(True, "True"), (False, "False"), (1, "1"), (2.5, "2.5"), ("x", "x")],
    ids=["true", "false", "int", "float", "str"],
)
def test_json_scalars_as_devstack_text(value, text):
    assert localconf.as_text(value) == text


# Lone surrogates (category Cs) included: render must refuse them, never write text it cannot encode.
ONE_LINE = st.text(
    st.characters(blacklist_categories=("Cc", "Zl", "Zp")) | st.sampled_from(["\t", "\ud800", "\udfff"]), max_size=40
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=ONE_LINE)
def test_any_one_line_value_without_references_round_trips(value, tmp_path):
    # `$` followed by a name or `{` is a reference on purpose; everything else must come back exactly.
    value = re.sub(r"\$(?=[A-Za-z_{])", "$-", value)
    if any("\ud800" <= char <= "\udfff" for char in value):
        with pytest.raises(ValueError):
            localconf.render({"VALUE": value})
        return
    values, _ = source(localconf.render({"VALUE": value}), ["VALUE"], tmp_path)
    assert values["VALUE"] == value


# ---------------------------------------------------------------- sourced as devstack does: under set -o xtrace


def pwned(tmp_path):
    return [path.name for path in tmp_path.iterdir() if path.name.startswith("pwned")]


def test_xtrace_harness_would_catch_a_command_in_ps4(tmp_path):
    # The danger the key check guards against: PS4 written by hand runs its command on the next traced line.
    text = '[[local|localrc]]\nPS4="\\$(touch pwned-ps4)"\nA="1"\n'
    source(text, ["A"], tmp_path, xtrace=True)
    assert pwned(tmp_path) == ["pwned-ps4"]


@pytest.mark.parametrize("value", [value for _, value in HOSTILE], ids=[name for name, _ in HOSTILE])
def test_hostile_value_stays_a_literal_string_under_xtrace(value, tmp_path):
    plugins = (("p", value or "x"),)
    values, calls = source(
        localconf.render({"VALUE": value, "ps4": value, "After": "1"}, plugins),
        ["VALUE", "ps4", "After"],
        tmp_path,
        xtrace=True,
    )
    assert values == {"VALUE": value, "ps4": value, "After": "1"}
    assert calls == list(plugins)
    assert not pwned(tmp_path)


BASH_OWN = [
    "PS0",
    "PS1",
    "PS2",
    "PS3",
    "PS4",
    "PS4+",
    "PROMPT_COMMAND",
    "BASH_ENV",
    "ENV",
    "IFS",
    "SHELLOPTS",
    "BASHOPTS",
    "BASH",
    "BASH_XTRACEFD",
    "BASH_CMDS",
    "BASH_ALIASES",
    "CDPATH",
    "GLOBIGNORE",
    "EXECIGNORE",
    "UID",
    "EUID",
    "PPID",
    "BASHPID",
    "GROUPS",
    "RANDOM",
    "SECONDS",
    "LINENO",
    "COMP_WORDS",
    "_",
]


@pytest.mark.parametrize("key", BASH_OWN, ids=BASH_OWN)
def test_render_refuses_bash_own_variables(key):
    assert localconf.reserved(key)
    with pytest.raises(ValueError):
        localconf.render({key: "$(touch pwned)"})


@pytest.mark.parametrize("key", ["ps4", "BASHFUL", "MY_IFS", "ENVIRONMENT", "PS5", "UIDS", "_X"], ids=str)
def test_names_that_only_look_like_bash_own_are_rendered(key, tmp_path):
    assert localconf.reserved(key) is None
    values, _ = source(localconf.render({key: "$(touch pwned)"}), [key], tmp_path, xtrace=True)
    assert values[key] == "$(touch pwned)" and not pwned(tmp_path)


@pytest.mark.parametrize("word", ["a\x00b", "a\x1bb", "a\nb", "a\ud800"], ids=["nul", "escape", "newline", "surrogate"])
def test_render_refuses_plugin_words_that_break_lines(word):
    with pytest.raises(ValueError):
        localconf.render({}, (("p", word),))


# ---------------------------------------------------------------- meta-sections
# (through devstack's own merge: test_core_devstack_merge.py)


def test_meta_sections_follow_the_localrc_section_and_plugins():
    text = localconf.render(
        {"A": "1"},
        (("heat", "https://h/heat"),),
        {
            "post-config|$NOVA_CONF": {"DEFAULT": {"report_interval": "10"}, "quota": {"instances": "-1"}},
            "extra|/etc/x.conf": {"s": {"o": True}},
        },
    )
    assert text == (
        "[[local|localrc]]\nA=\"1\"\nenable_plugin 'heat' 'https://h/heat'\n\n"
        "[[post-config|$NOVA_CONF]]\n[DEFAULT]\nreport_interval = 10\n[quota]\ninstances = -1\n\n"
        "[[extra|/etc/x.conf]]\n[s]\no = True\n"
    )
    assert localrc_section(text) == "A=\"1\"\nenable_plugin 'heat' 'https://h/heat'\n\n"


QUOTED = [
    ("plain", "a b", "a b"),
    ("reference", "$DEST/x ${A}", "$DEST/x ${A}"),
    ("command", "$(x)", "\\\\\\$(x)"),
    ("quote", 'a"b', 'a\\\\\\"b'),
    ("backquote", "`x`", "\\\\\\`x\\\\\\`"),
    ("backslash", "a\\b", "a\\\\\\\\b"),
    ("default-expansion", "${X:-y}", "\\\\\\${X:-y}"),
    ("reference-then-dollar", "$A$", "$A\\\\\\$"),
]


@pytest.mark.parametrize("value,text", [case[1:] for case in QUOTED], ids=[case[0] for case in QUOTED])
def test_meta_values_are_escaped_for_read_and_eval(value, text):
    assert localconf.quote_meta(value) == text


@pytest.mark.parametrize(
    "header",
    [
        "post-config|$NOVA_CONF",
        "post-config|${NOVA_CONF}",
        "extra|/etc/a-b/c_d.conf",
        "post-extra|$A/$B",
        "test-config|$TEMPEST_CONFIG",
        "post-config|/$Q_PLUGIN_CONF_FILE",
        "post-config|$NOVA_CPU_CONF",
        "extra|${NOVA_CPU_CONF}",
        "post-config|$NEUTRON_UWSGI_CONF",
    ],
    ids=str,
)
def test_meta_headers_devstack_can_take(header):
    assert localconf.meta_header_problems(header) == []


def test_two_spellings_of_one_file_are_one_file():
    assert localconf.meta_file("$NOVA_CONF") == localconf.meta_file("${NOVA_CONF}") == "${NOVA_CONF}"
    assert localconf.meta_file("/$A/b") != localconf.meta_file("$A/b")


@pytest.mark.parametrize(
    "name", ["DEFAULT", "keystone_authtoken", "filter:authtoken", "oslo.messaging", "a-b", "0x"], ids=str
)
def test_ini_names_devstack_can_take(name):
    assert localconf.ini_name_problem(name, "section") is None


# ---------------------------------------------------------------- the services devstack enables

SERVICES = [
    ("default", {}, localconf.DEFAULT_SERVICES),
    ("replaced", {"ENABLED_SERVICES": "n-cpu,n-net"}, ("n-cpu", "n-net")),
    (
        "negated",
        {"ENABLED_SERVICES+": ",-n-cpu,-c-vol"},
        tuple(s for s in localconf.DEFAULT_SERVICES if s not in ("n-cpu", "c-vol")),
    ),
    ("replaced-then-appended", {"ENABLED_SERVICES": "key", "ENABLED_SERVICES+": ",n-api"}, ("key", "n-api")),
    ("appended-then-replaced", {"ENABLED_SERVICES+": ",n-api", "ENABLED_SERVICES": "key"}, ("key",)),
    ("appended-without-comma", {"ENABLED_SERVICES": "key", "ENABLED_SERVICES+": "x"}, ("keyx",)),
    (
        "self-reference",
        {"ENABLED_SERVICES": "$ENABLED_SERVICES,-key"},
        tuple(s for s in localconf.DEFAULT_SERVICES if s != "key"),
    ),
    ("negation-before-name", {"ENABLED_SERVICES": "-a,a,b"}, ("b",)),
    ("twice-and-empty", {"ENABLED_SERVICES": "a,,a, b,"}, ("a", "b")),
    ("empty", {"ENABLED_SERVICES": ""}, ()),
]


@pytest.mark.parametrize("localrc,services", [case[1:] for case in SERVICES], ids=[case[0] for case in SERVICES])
def test_enabled_services_as_devstack_computes_them(localrc, services):
    assert localconf.enabled_services(localrc) == services


def test_enabled_services_agree_with_devstack_itself(tmp_path):
    # stackrc's default list and functions-common's disable_negated_services, when the devstack tree is there.
    tree = Path(os.environ.get("DEVSTACK_TREE", "/tmp/os/devstack"))
    if not (tree / "functions-common").is_file():
        pytest.skip(f"no devstack tree at {tree} (set DEVSTACK_TREE)")
    stackrc = (tree / "stackrc").read_text()
    block = stackrc[stackrc.index("if ! isset ENABLED_SERVICES") :]
    block = block[: block.index("\nfi\n") + 4]
    localrc = {"ENABLED_SERVICES+": ",-n-cpu,-c-vol,extra,-extra", "X": "1"}
    script = (
        f'isset() {{ [[ -v "$1" ]]; }}\n{block}'
        f"source <(sed -n '/^function _cleanup_service_list/,/^}}/p;/^function remove_disabled_services/,/^}}/p;"
        f"/^function disable_negated_services/,/^}}/p' {tree}/functions-common)\n"
        + localconf.render(localrc).split("\n", 1)[1]
        + "disable_negated_services\nprintf '%s' \"$ENABLED_SERVICES\"\n"
    )
    result = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"]},
    )
    assert result.returncode == 0, result.stderr
    assert tuple(result.stdout.split(",")) == localconf.enabled_services(localrc)
