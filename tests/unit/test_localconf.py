"""local.conf rendering, checked the way devstack reads it: the localrc section extracted and sourced by bash."""

import os
import re
import subprocess

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


def source(text, names, tmp_path, env=None):
    """Source the localrc section in bash (with an `enable_plugin` that records its arguments) and read back
    each named variable exactly, NUL-separated; return (values, recorded plugin calls)."""
    section = tmp_path / "localrc"
    section.write_text(localrc_section(text))
    script = (
        'PLUGINS=()\n'
        'enable_plugin() { local a; for a in "$@"; do PLUGINS+=("$a"); done; PLUGINS+=("--"); }\n'
        f'source {section}\n'
        + "".join(f'printf "%s\\0" "${{{name}}}"\n' for name in names)
        + 'printf "%s\\0" "${PLUGINS[@]}"\n')
    result = subprocess.run(["bash", "-c", script], capture_output=True, env={"PATH": os.environ["PATH"],
                                                                              **(env or {})},
                            cwd=tmp_path, timeout=30)
    assert result.returncode == 0, result.stderr.decode()
    fields = result.stdout.decode().split("\0")[:-1]
    values = dict(zip(names, fields[:len(names)]))
    calls, current = [], []
    for word in fields[len(names):]:
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
    values, _ = source(localconf.render({"DEST": "/opt/stack", "HOST": "h1", "VALUE": value}), ["VALUE"],
                       tmp_path)
    assert values["VALUE"] == expected


def test_plus_key_appends(tmp_path):
    text = localconf.render({"ENABLED_SERVICES": "n-api,n-cpu", "ENABLED_SERVICES+": ",-n-cpu"})
    assert "ENABLED_SERVICES+=\",-n-cpu\"" in text.splitlines()
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


@pytest.mark.parametrize("key", ["BAD KEY", "1X", "A;B", "A-B", "A++", ""], ids=str)
def test_render_refuses_keys_that_are_not_shell_names(key):
    with pytest.raises(ValueError):
        localconf.render({key: "x"})


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\x00b", "a\x85b", "a\u2028b", "a\x1bb"],
                         ids=["newline", "return", "nul", "next-line", "line-separator", "escape"])
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


@pytest.mark.parametrize("text,names,resolved", [(t, n, r) for _, t, n, r in PLACEHOLDER_CASES],
                         ids=[case[0] for case in PLACEHOLDER_CASES])
def test_placeholders_found_and_resolved(text, names, resolved):
    assert localconf.placeholders(text) == names
    assert localconf.resolve(text, {"controller_ip": "10.0.0.2"}) == resolved


@pytest.mark.parametrize("value,text", [(True, "True"), (False, "False"), (1, "1"), (2.5, "2.5"), ("x", "x")],
                         ids=["true", "false", "int", "float", "str"])
def test_json_scalars_as_devstack_text(value, text):
    assert localconf.as_text(value) == text


ONE_LINE = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")) | st.just("\t"), max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=ONE_LINE)
def test_any_one_line_value_without_references_round_trips(value, tmp_path):
    # `$` followed by a name or `{` is a reference on purpose; everything else must come back exactly.
    value = re.sub(r"\$(?=[A-Za-z_{])", "$-", value)
    values, _ = source(localconf.render({"VALUE": value}), ["VALUE"], tmp_path)
    assert values["VALUE"] == value
