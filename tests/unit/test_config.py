"""config.py: a full userconfig parses to the values a user wrote; durations and macros."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mirrorcore import rules
from mirrorcore.config import (
    ConfigError,
    Exclusion,
    Heartbeat,
    VirtualAddr,
    format_duration,
    load_cluster,
    load_module,
    parse_duration,
    parse_size,
)
from mirrorcore.paths import Paths

CLUSTER = """<cluster>
  <lans>
    <lan name="default"><node name="node1" addr="10.0.0.1"/><node name="node2" addr="10.0.0.2"/></lan>
    <lan name="private"><node name="node1" addr="192.168.5.1"/><node name="node2" addr="192.168.5.2"/></lan>
  </lans>
</cluster>
"""

FULL = """<safe>
  <macro name="SERVICES" value="postgresql"/>
  <macro name="DATA" value="/srv/data"/>
  <service mode="mirror" boot="on" failover="off" defaultprim="node1" maxloop="5" loop_interval="2">
    <heart pulse="500" timeout="20s">
      <heartbeat name="default"/>
      <heartbeat name="private" ident="flow"/>
    </heart>
    <vip>
      <interface_list>
        <interface check="on">
          <real_interface>
            <virtual_addr addr="10.0.0.100" where="one_side_alias" check="on"/>
            <virtual_addr addr="fd00::0064" where="one_side" check="off"/>
          </real_interface>
        </interface>
      </interface_list>
    </vip>
    <rfs async="none" ruzone_blocksize="256K" reiallowedbw="50M/s" syncdelta="2" ackeach="on" sendtimeout="1m">
      <replicated dir="%DATA%" mode="read_only">
        <notreplicated path="tmp"/>
        <notreplicated regexpath=".*\\.bak$"/>
        <tocheck path="base/PG_VERSION"/>
      </replicated>
      <replicated dir="/srv/logs">
        <notreplicated regexpath="!\\.log$"/>
      </replicated>
    </rfs>
    <user nicestoptimeout="60" forcestoptimeout="2m">
      <var name="SERVICES" value="%SERVICES% nginx"/>
      <var name="PCT" value="100%%"/>
    </user>
    <errd polltimer="5">
      <proc name="postgres" atleast="1" atmax="20" action="restart" class="prim"/>
      <proc name="app" argregex="python3? -m app( |$)" action="noaction"/>
      <proc name="web" nameregex="nginx|apache2" class="both"/>
    </errd>
    <check>
      <tcp ident="db" when="prim"><to addr="127.0.0.1" port="5432" interval="10" timeout="500ms"/></tcp>
      <ping ident="gw" when="pre"><to addr="10.0.0.254"/><to addr="10.0.0.253"/></ping>
      <custom ident="app" when="both" exec="/path/check" arg="-v 'a b'" action="stopstart"/>
      <splitbrain ident="witness" exec="ping" arg="10.0.0.254"/>
      <module name="other"/>
    </check>
    <failover handle_time="15">
      <![CDATA[
        db_down: if (tcp.db == down) then restart();
        lost: if (heartbeat.* == down && !(ping.gw == up)) then wait();
      ]]>
    </failover>
  </service>
</safe>
"""


def make_paths(tmp_path: Path, userconfig: str, cluster: str = CLUSTER, module: str = "AM") -> Paths:
    paths = Paths(etc=tmp_path / "etc", lib=tmp_path / "lib", log=tmp_path / "log", run=tmp_path / "run")
    paths.etc.mkdir(parents=True, exist_ok=True)
    paths.cluster_xml.write_text(cluster)
    conf = paths.userconfig(module)
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(userconfig)
    return paths


def test_full_config_parses_to_the_values_written(tmp_path: Path) -> None:
    cfg = load_module(make_paths(tmp_path, FULL), "AM", node="node2")

    assert (cfg.name, cfg.node, cfg.peer, cfg.mode) == ("AM", "node2", "node1", "mirror")
    assert cfg.boot is True
    assert cfg.failover is False
    assert cfg.defaultprim == "node1"
    assert (cfg.maxloop, cfg.loop_interval, cfg.port) == (5, 2 * 3600.0, 9010)
    assert cfg.heart.pulse == 0.5  # bare numbers are milliseconds, as in the product
    assert cfg.heart.timeout == 20.0
    assert cfg.heart.heartbeats == (Heartbeat("default", "default"), Heartbeat("private", "flow"))
    assert cfg.heart.flow_lan == "private"
    assert cfg.lan_addrs("private") == ("192.168.5.2", "192.168.5.1")
    assert cfg.vips[0].check is True
    assert cfg.vips[0].addrs == (
        VirtualAddr("10.0.0.100", "one_side_alias", True),
        VirtualAddr("fd00::64", "one_side", False),
    )
    rfs = cfg.rfs
    assert rfs is not None
    assert (rfs.async_mode, rfs.ruzone_blocksize, rfs.reiallowedbw) == ("none", 256 * 1024, 50 * 1024 * 1024)
    assert (rfs.syncdelta, rfs.ackeach, rfs.sendtimeout) == (120.0, True, 60.0)
    data, logs = rfs.dirs
    assert (data.dir, data.read_only, data.tocheck) == ("/srv/data", True, ("base/PG_VERSION",))
    assert data.exclusions == (Exclusion("path", "tmp"), Exclusion("regex", r".*\.bak$"))
    assert (logs.read_only, logs.exclusions) == (False, (Exclusion("regex", r"\.log$", only=True),))
    assert (cfg.user.nicestoptimeout, cfg.user.forcestoptimeout) == (60.0, 120.0)
    assert cfg.user.vars == (("SERVICES", "postgresql nginx"), ("PCT", "100%"))
    assert cfg.errd is not None
    assert cfg.errd.polltimer == 5.0
    proc = cfg.errd.procs[0]
    assert (proc.name, proc.atleast, proc.atmax, proc.action, proc.cls) == ("postgres", 1, 20, "restart", "prim")
    assert (proc.nameregex, proc.argregex) == (None, None)
    app, web = cfg.errd.procs[1:]
    assert (app.argregex, app.nameregex, app.action, app.cls) == ("python3? -m app( |$)", None, "noaction", "prim")
    assert (web.nameregex, web.argregex, web.action, web.cls) == ("nginx|apache2", None, "stopstart", "both")
    tcp = cfg.checks.tcp[0]
    assert (tcp.ident, tcp.addr, tcp.port, tcp.interval, tcp.timeout, tcp.action) == (
        "db",
        "127.0.0.1",
        5432,
        10.0,
        0.5,
        "restart",
    )
    assert cfg.checks.ping[0].addrs == ("10.0.0.254", "10.0.0.253")
    assert cfg.checks.ping[0].action == "wait"
    assert cfg.checks.custom[0].args == ("-v", "a b")
    assert cfg.checks.splitbrain is not None
    assert cfg.checks.splitbrain.args == ("10.0.0.254",)
    assert (cfg.checks.modules[0].name, cfg.checks.modules[0].ident, cfg.checks.modules[0].action) == (
        "other",
        "other",
        "wait",
    )
    db_line = next(i for i, text in enumerate(FULL.splitlines(), 1) if "db_down:" in text)
    assert [(r.label, r.action, r.line) for r in cfg.failover_rules] == [
        ("db_down", "restart", db_line),
        ("lost", "wait", db_line + 1),
    ]
    assert cfg.handle_time == 15.0


def test_minimal_config_gets_the_documented_defaults(tmp_path: Path) -> None:
    minimal = '<safe><service><heart><heartbeat name="default"/></heart></service></safe>'
    cfg = load_module(make_paths(tmp_path, minimal), "AM", node="node1")

    assert (cfg.boot, cfg.failover, cfg.defaultprim, cfg.maxloop, cfg.loop_interval) == (False, True, None, 3, 86400.0)
    assert (cfg.heart.pulse, cfg.heart.timeout, cfg.heart.flow_lan) == (0.7, 30.0, "default")
    assert (cfg.user.nicestoptimeout, cfg.user.forcestoptimeout) == (300.0, 300.0)
    assert (cfg.rfs, cfg.errd, cfg.vips, cfg.failover_rules, cfg.port) == (None, None, (), (), 9010)


def test_rfs_defaults(tmp_path: Path) -> None:
    xml = '<safe><service><heart><heartbeat name="default"/></heart><rfs><replicated dir="/d"/></rfs></service></safe>'
    rfs = load_module(make_paths(tmp_path, xml), "AM", node="node1").rfs

    assert rfs is not None
    assert (rfs.async_mode, rfs.ruzone_blocksize, rfs.reiallowedbw, rfs.ackeach, rfs.sendtimeout) == (
        "second",
        131072,
        None,
        False,
        30.0,
    )


def test_macro_may_use_earlier_macros_and_expands_in_rules(tmp_path: Path) -> None:
    xml = """<safe>
  <macro name="A" value="db"/>
  <macro name="B" value="tcp.%A%"/>
  <service port="%P%"><heart><heartbeat name="default"/></heart></service>
</safe>"""
    xml = xml.replace('<macro name="B"', '<macro name="P" value="9100"/><macro name="B"')
    xml = xml.replace(
        "</heart>",
        '</heart><check><tcp ident="%A%"><to addr="h" port="1"/></tcp></check>'
        "<failover>r: if (%B% == down) then restart();</failover>",
    )
    cfg = load_module(make_paths(tmp_path, xml), "AM", node="node1")

    assert cfg.port == 9100
    assert cfg.checks.tcp[0].ident == "db"
    assert cfg.failover_rules[0].expr == rules.Compare(rules.Resource("local", "tcp", "db"), "==", "down")


def test_node_from_environment_and_unknown_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    minimal = '<safe><service><heart><heartbeat name="default"/></heart></service></safe>'
    paths = make_paths(tmp_path, minimal)
    monkeypatch.setenv("MIRRORCORE_NODE", "node2")
    assert load_module(paths, "AM").node == "node2"

    with pytest.raises(ConfigError, match=r'"node3"\) is not a node of the cluster \(nodes: node1, node2\)'):
        load_module(paths, "AM", node="node3")


def test_local_node_detected_by_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIRRORCORE_NODE", raising=False)
    cluster = CLUSTER.replace("192.168.5.2", "127.0.0.1")
    paths = make_paths(tmp_path, '<safe><service><heart><heartbeat name="default"/></heart></service></safe>', cluster)
    assert load_module(paths, "AM").node == "node2"

    paths.cluster_xml.write_text(CLUSTER.replace("10.0.0.1", "127.0.0.1").replace("192.168.5.2", "127.0.0.2"))
    with pytest.raises(ConfigError, match=r"both nodes.*MIRRORCORE_NODE"):
        load_module(paths, "AM")


def test_cluster_parses_lans_in_order(tmp_path: Path) -> None:
    (tmp_path / "cluster.xml").write_text(CLUSTER)
    cluster = load_cluster(tmp_path / "cluster.xml")
    assert cluster.node_names == ("node1", "node2")
    assert [lan.name for lan in cluster.lans] == ["default", "private"]
    assert cluster.lan("private").addr("node2") == "192.168.5.2"


@pytest.mark.parametrize(
    ("text", "unit", "seconds"),
    [
        ("700", "ms", 0.7),
        ("700ms", "s", 0.7),
        ("30s", "ms", 30.0),
        ("24", "h", 86400.0),
        ("1h30m", "s", 5400.0),
        ("1.5d", "s", 129600.0),
        ("250us", "s", 0.00025),
        (" 2 m ", "s", 120.0),
    ],
)
def test_parse_duration_units(text: str, unit: str, seconds: float) -> None:
    assert math.isclose(parse_duration(text, default_unit=unit, file=Path("f.xml"), line=3), seconds)


@pytest.mark.parametrize("text", ["", "abc", "10x", "1h 30", "-5s", "5 5", "ms"])
def test_parse_duration_rejects_garbage_naming_the_units(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^f\.xml:3: .* is not a duration\. Fix: .*d h m s ms us"):
        parse_duration(text, default_unit="s", file=Path("f.xml"), line=3)


def test_parse_size_suffixes() -> None:
    f = Path("f.xml")
    assert parse_size("128K", default_unit="B", file=f, line=1) == 131072
    assert parse_size("64MiB", default_unit="B", file=f, line=1) == 64 << 20
    assert parse_size("20000", default_unit="K", file=f, line=1) == 20000 * 1024
    with pytest.raises(ConfigError, match="is not a size"):
        parse_size("12Q", default_unit="B", file=f, line=1)


@given(st.integers(min_value=0, max_value=400 * 86_400_000_000))
def test_format_then_parse_duration_round_trips(us: int) -> None:
    text = format_duration(us / 1_000_000)
    back = parse_duration(text, default_unit="s", file=Path("f"), line=None)
    assert round(back * 1_000_000) == us


def test_a_proc_handler_loads_with_its_timeout(tmp_path: Path) -> None:
    handler = tmp_path / "on_down"
    handler.write_text("#!/bin/sh\n")
    handler.chmod(0o755)
    xml = f"""<safe><macro name="H" value="{handler}"/><service>
      <heart><heartbeat name="default"/></heart>
      <errd>
        <proc name="app" action="%H%" handler_timeout="30"/>
        <proc name="db" action="{handler}"/>
        <proc name="web" action="restart"/>
      </errd>
    </service></safe>"""
    cfg = load_module(make_paths(tmp_path, xml), "AM", node="node1")
    assert cfg.errd is not None
    app, db, web = cfg.errd.procs
    assert (app.action, app.handler, app.handler_timeout) == (str(handler), str(handler), 30.0)
    assert (db.handler, db.handler_timeout) == (str(handler), 300.0)
    assert (web.handler, web.action) == (None, "restart")
