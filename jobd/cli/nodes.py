"""``jobd nodes``: the ``jobd serve`` nodes sharing the database, as the database sees them."""

from __future__ import annotations

import functools
from typing import Any

from jobd.cli.common import (
    ConfigOpt,
    JsonOpt,
    existing_database,
    list_table,
    out,
    print_json,
    with_backend,
)
from jobd.clock import to_rfc3339
from jobd.config import Config
from jobd.store.backend import Backend
from jobd.store.cluster import NodeInfo, open_coordination


def node_doc(node: NodeInfo) -> dict[str, Any]:
    return {
        "name": node.name, "instance": node.instance, "host": node.host, "pid": node.pid,
        "version": node.version, "leader": node.leader, "runningJobs": node.running,
        "startedAt": to_rfc3339(node.started_at),
        "heartbeatAt": to_rfc3339(node.heartbeat_at),
        "silentSeconds": round(node.silent_s, 3), "timeoutSeconds": node.timeout_s,
    }


def duration(seconds: float) -> str:
    """``45s``, ``12m05s``, ``3h07m``, ``2d04h``: how long a node has been up."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86_400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86_400}d{s % 86_400 // 3600:02d}h"


def nodes(json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """List the live jobd serve nodes on this PostgreSQL database.

    A node is live while its heartbeats reach the database (within its
    cluster.node_timeout); the leader puts back the work of nodes that fall silent.
    Shows each node's last heartbeat, its running jobs and which one leads. On SQLite
    there is one daemon per database file and no nodes to list.

    Example: jobd nodes --json
    """
    cfg = existing_database(config)
    if not cfg.database.is_postgres:
        if json:
            print_json([])
        else:
            out.print(f"the database is SQLite ({cfg.database.location}): one jobd serve per "
                      "database file, no nodes to list (nodes share a PostgreSQL database, "
                      "database.url)", highlight=False)
        return
    found = with_backend(cfg, functools.partial(_live_nodes, cfg))
    if json:
        print_json([node_doc(n) for n in found])
        return
    if not found:
        out.print("no live node: none heartbeated within its cluster.node_timeout",
                  highlight=False)
        return
    leader = next((n.name for n in found if n.leader), None)
    table = list_table(title=f"{len(found)} live node(s); "
                             f"{'leader: ' + leader if leader else 'no leader at the moment'}")
    table.add_column("node", overflow="fold")
    table.add_column("leader", no_wrap=True)
    table.add_column("host:pid", overflow="fold")
    table.add_column("heartbeat", justify="right", no_wrap=True)
    table.add_column("running", justify="right", no_wrap=True)
    table.add_column("up", justify="right", no_wrap=True)
    table.add_column("version", no_wrap=True)
    for n in found:
        table.add_row(n.name, "yes" if n.leader else "", f"{n.host}:{n.pid}",
                      f"{n.silent_s:.1f}s ago", f"{n.running:,}",
                      duration(n.heartbeat_at + n.silent_s - n.started_at), n.version)
    out.print(table)


async def _live_nodes(cfg: Config, backend: Backend) -> list[NodeInfo]:
    coordination = open_coordination(backend, cfg)
    try:
        return await coordination.nodes()
    finally:
        await coordination.close()
