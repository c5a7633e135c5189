"""Checkers, resources and failover rules at run time (SPEC §5).

Each checker is a task `await nursery.start(checker.run, resources)` that sets its resource in
the shared `Resources` table while its `when` holds; `RuleEngine.run` watches the table and
calls back with the action of each rule that held for `handle_time`.
"""

from mirrorcore.checkers._loop import StateFn, is_active
from mirrorcore.checkers.custom import CustomChecker
from mirrorcore.checkers.errd import ErrdWatcher, ProcMatch, count_processes
from mirrorcore.checkers.handlers import ProcHandlers
from mirrorcore.checkers.intf import IntfChecker
from mirrorcore.checkers.ip import IpChecker, vip_status
from mirrorcore.checkers.module import ModuleChecker, module_up
from mirrorcore.checkers.ping import PingChecker, ping, ping_any, reachable
from mirrorcore.checkers.resources import Entry, Resources, lookup_in, split_name
from mirrorcore.checkers.rules_runtime import DEFAULT_PERIOD, Decision, RuleEngine, default_rules, describe, proc_rule
from mirrorcore.checkers.splitbrain import witness_reachable
from mirrorcore.checkers.tcp import TcpChecker, tcp_up

__all__ = [
    "DEFAULT_PERIOD",
    "CustomChecker",
    "Decision",
    "Entry",
    "ErrdWatcher",
    "IntfChecker",
    "IpChecker",
    "ModuleChecker",
    "PingChecker",
    "ProcHandlers",
    "ProcMatch",
    "Resources",
    "RuleEngine",
    "StateFn",
    "TcpChecker",
    "count_processes",
    "default_rules",
    "describe",
    "is_active",
    "lookup_in",
    "module_up",
    "ping",
    "ping_any",
    "proc_rule",
    "reachable",
    "split_name",
    "tcp_up",
    "vip_status",
    "witness_reachable",
]
