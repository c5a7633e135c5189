"""config.py: every kind of mistake names the file, the line, what is wrong and the fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_config import CLUSTER, make_paths

from mirrorcore.config import ConfigError, load_cluster, load_module

BASE = """<safe>
  <macro name="SERVICES" value="postgresql"/>
  <service mode="mirror">
    <heart pulse="700ms" timeout="30s">
      <heartbeat name="default"/>
    </heart>
    @BODY@
  </service>
</safe>
"""


def error_for(tmp_path: Path, body: str, base: str = BASE) -> tuple[ConfigError, int]:
    """Loads a config with `body` inserted; returns the error and the line `body` starts on."""
    xml = base.replace("@BODY@", body)
    line = next(i for i, text in enumerate(xml.splitlines(), 1) if body.splitlines()[0] in text)
    with pytest.raises(ConfigError) as info:
        load_module(make_paths(tmp_path, xml), "AM", node="node1")
    return info.value, line


@pytest.mark.parametrize(
    ("body", "what", "fix"),
    [
        ("<bogus/>", r"unknown tag <bogus> inside <service>", r"<heart>, <vip>"),
        ('<user nicestoptimeot="3"/>', r'unknown attribute "nicestoptimeot"', r"nicestoptimeout"),
        ('<user nicestoptimeout="soon"/>', r"is not a duration", r"d h m s ms us"),
        ('<user><var name="X" value="%NOPE%"/></user>', r"%NOPE% names no macro \(macros: SERVICES\)", r"<macro"),
        ('<rfs><replicated dir="srv/data"/></rfs>', r"not an absolute path", r"/srv/data"),
        (
            '<rfs><replicated dir="/srv/data"/><replicated dir="/srv/data/sub"/></rfs>',
            r'"/srv/data/sub"> overlaps <replicated dir="/srv/data">',
            r"not nested",
        ),
        ('<rfs async="maybe"><replicated dir="/d"/></rfs>', r'<rfs async="maybe"> is not valid', r"second, none"),
        ('<rfs ackeach="sometimes"><replicated dir="/d"/></rfs>', r"is not on or off", r'ackeach="on"'),
        ('<rfs ruzone_blocksize="1000"><replicated dir="/d"/></rfs>', r"not a power of two", r"128K"),
        (
            '<rfs><replicated dir="/d"><notreplicated path="/abs"/></replicated></rfs>',
            r"relative to the replicated dir",
            r'without a leading "/"',
        ),
        (
            '<rfs><replicated dir="/d"><notreplicated regexpath="(unclosed"/></replicated></rfs>',
            r"not a valid regular expression",
            r"correct the expression",
        ),
        ('<rfs><replicated dir="/d" mode="rw"/></rfs>', r'mode="rw"> is not valid', r"read_only"),
        (
            '<vip><interface_list><interface><real_interface><virtual_addr addr="10.0.0.300"/>'
            "</real_interface></interface></interface_list></vip>",
            r"is not an IPv4 or IPv6 address",
            r"10\.0\.0\.100",
        ),
        (
            '<vip><interface_list><interface><real_interface><virtual_addr addr="10.0.0.9" where="both"/>'
            "</real_interface></interface></interface_list></vip>",
            r'where="both"> is not valid',
            r"one_side_alias, one_side",
        ),
        ('<errd><proc name="p" atleast="3" atmax="1"/></errd>', r"atmax \(1\) is less than atleast", r"atmax >="),
        ('<errd><proc name="p" action="explode"/></errd>', r'action="explode"> is not valid', r"stopstart, .*noaction"),
        ('<errd><proc name="p" argregex="(unclosed"/></errd>', r'argregex="\(unclosed"> is not a regular', r"fix the"),
        ('<errd><proc name="p" nameregex="a" argregex="b"/></errd>', r"both nameregex and argregex", r"keep one"),
        (
            '<check><tcp ident="db"><to addr="h" port="1"/></tcp><tcp ident="db"><to addr="h" port="2"/></tcp></check>',
            r'two <tcp> checkers have the ident "db"',
            r"different ident",
        ),
        ('<check><tcp ident="db"><to addr="h" port="70000"/></tcp></check>', r"out of range", r"1 to 65535"),
        ('<check><ping ident="gw"/></check>', r"has no <to>", r"<to addr"),
        ('<check><module name="AM"/></check>', r"this module itself", r"another module"),
        (
            "<failover>r: if (tcp.nope == down) then restart();</failover>",
            r'rule "r" uses tcp\.nope, which no checker provides',
            r"correct the name",
        ),
        (
            "<failover>r: if (disk.x == down) then restart();</failover>",
            r"'disk' is not a resource class",
            r"heartbeat",
        ),
        ("<failover>  text  </failover><user>junk</user>", r"<user> contains stray text 'junk'", r"remove it"),
    ],
)
def test_userconfig_error_names_line_and_fix(tmp_path: Path, body: str, what: str, fix: str) -> None:
    err, line = error_for(tmp_path, body)
    assert err.file == tmp_path / "etc/modules/AM/conf/userconfig.xml"
    assert err.line == line
    assert str(err).startswith(f"{err.file}:{line}")
    assert re.search(what, err.what), err.what
    assert re.search(fix, err.fix), err.fix


def test_heartbeat_on_unknown_lan_lists_the_lans(tmp_path: Path) -> None:
    xml = BASE.replace('<heartbeat name="default"/>', '<heartbeat name="privat"/>').replace("@BODY@", "")
    with pytest.raises(ConfigError) as info:
        load_module(make_paths(tmp_path, xml), "AM", node="node1")
    assert str(info.value) == (
        f'{info.value.file}:5: <heartbeat name="privat"> names no LAN of cluster.xml (LANs: default, private). '
        f"Fix: use one of those names or add the LAN to {tmp_path / 'etc/cluster.xml'}"
    )


def test_heart_without_heartbeat_and_duplicate_ident(tmp_path: Path) -> None:
    xml = BASE.replace('<heartbeat name="default"/>', "").replace("@BODY@", "")
    with pytest.raises(ConfigError, match=r":4: <heart> has no <heartbeat>\. Fix: add <heartbeat"):
        load_module(make_paths(tmp_path, xml), "AM", node="node1")
    xml = BASE.replace(
        '<heartbeat name="default"/>', '<heartbeat name="default"/><heartbeat name="private" ident="default"/>'
    )
    with pytest.raises(ConfigError, match=r'two <heartbeat>s have the ident "default"'):
        load_module(make_paths(tmp_path, xml.replace("@BODY@", "")), "AM", node="node1")


def test_xml_syntax_error_names_the_line(tmp_path: Path) -> None:
    xml = BASE.replace("@BODY@", "<user>\n</usr>")
    with pytest.raises(ConfigError, match=r"userconfig\.xml:8: XML syntax error: .*Fix: correct the XML"):
        load_module(make_paths(tmp_path, xml), "AM", node="node1")


def test_missing_userconfig_and_bad_service_values(tmp_path: Path) -> None:
    paths = make_paths(tmp_path, BASE.replace("@BODY@", ""))
    with pytest.raises(ConfigError, match=r"modules/XY/conf/userconfig\.xml: the file does not exist"):
        load_module(paths, "XY", node="node1")
    for attr, msg in [
        ('mode="farm"', r'mode="farm"> is not supported'),
        ('defaultprim="node9"', r'defaultprim="node9"> is neither "alone" nor a node.*Fix: use alone or one of: node1'),
        ('maxloop="-1"', r'maxloop="-1"> is out of range'),
        ('boot="maybe"', r'boot="maybe"> is not on or off'),
        ('port="65535"', r'port="65535"> is out of range'),
    ]:
        xml = BASE.replace('<service mode="mirror">', f"<service {attr}>").replace("@BODY@", "")
        with pytest.raises(ConfigError, match=r"userconfig\.xml:3: <service " + msg):
            load_module(make_paths(tmp_path, xml), "AM", node="node1")


def test_rule_syntax_error_points_at_file_line_and_column(tmp_path: Path) -> None:
    body = (
        "<failover><![CDATA[\n  r1: if (heartbeat.default == down) then stop();\n"
        "  r2: if (heartbeat.default = up) then stop();\n]]></failover>"
    )
    err, line = error_for(tmp_path, body)
    assert (err.line, err.column) == (line + 2, len("  r2: if (heartbeat.default ") + 1)
    assert "expected == or != but found '='" in err.what


@pytest.mark.parametrize(
    ("cluster", "what"),
    [
        (CLUSTER.replace('<node name="node2" addr="10.0.0.2"/>', ""), r'LAN "default" lists 1 node'),
        (CLUSTER.replace('name="node2" addr="192.168.5.2"', 'name="node3" addr="192.168.5.3"'), r"same two nodes"),
        (CLUSTER.replace("192.168.5.2", "10.0.0.2"), r"address 10\.0\.0\.2 is already used"),
        (CLUSTER.replace('name="private"', 'name="default"'), r'LAN "default" is defined twice'),
        (CLUSTER.replace("10.0.0.1", "ten"), r"not an IPv4 or IPv6 address"),
        (CLUSTER.replace("<lans>", "<lans><wan/>"), r"unknown tag <wan> inside <lans>"),
        ("<cluster/>", r"<cluster> has no <lans>"),
        ("<clustr/>", r"document element is <clustr>"),
    ],
)
def test_cluster_errors(tmp_path: Path, cluster: str, what: str) -> None:
    (tmp_path / "cluster.xml").write_text(cluster)
    with pytest.raises(ConfigError, match=r"cluster\.xml:\d+: .*\. Fix: ") as info:
        load_cluster(tmp_path / "cluster.xml")
    assert re.search(what, str(info.value))


def test_a_proc_handler_must_be_an_executable_file_named_by_its_absolute_path(tmp_path: Path) -> None:
    handlers = tmp_path / "handlers"
    handlers.mkdir()
    plain = handlers / "plain"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    cases = [
        (
            f"{handlers}/nope",
            "the handler .*/nope does not exist",
            r"create it and chmod \+x it, or use one of: .*noaction",
        ),
        (str(plain), "the handler .*/plain is not executable", f"chmod \\+x {plain}"),
        (str(handlers), "the handler .*/handlers is not a file", "name the handler program itself"),
        ("on_down", 'action="on_down"> is not valid \\(a handler program is named by its absolute path\\)', "absolute"),
    ]
    for i, (action, what, fix) in enumerate(cases):
        err, line = error_for(tmp_path / str(i), f'<errd>\n<proc name="app" action="{action}"/></errd>')
        assert (err.line, str(err).split(":")[1]) == (line + 1, str(line + 1))
        assert re.search(what, err.what), err.what
        assert re.search(fix, err.fix), err.fix
    err, _ = error_for(tmp_path / "t", '<errd><proc name="app" action="restart" handler_timeout="5s"/></errd>')
    assert "handler_timeout> applies to a handler program" in err.what
    assert "remove handler_timeout" in err.fix
