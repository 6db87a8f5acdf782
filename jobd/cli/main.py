"""``jobd``: the command line. Each group lives in its own module."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from jobd import __version__
from jobd.cli import config as config_cmd
from jobd.cli import dlq, jobs, nodes, ops, tenants
from jobd.cli.common import ConfigOpt, is_missing, load, run_cli

app = typer.Typer(help="jobd: background jobs with retries and signed webhooks, on one host.\n\n"
                  "Examples: jobd serve --config jobd.toml | jobd jobs list --status fatal | jobd stats",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
app.add_typer(tenants.app, name="tenants")
app.add_typer(jobs.app, name="jobs")
app.add_typer(dlq.app, name="dlq")
app.add_typer(config_cmd.app, name="config")


@app.command("serve")
def serve(config: ConfigOpt = None,
          log_format: Annotated[str | None, typer.Option(
              "--log-format", help="text or json (default: logging.format).")] = None) -> None:
    """Start the daemon: HTTP API, scheduler, workers and webhook dispatcher.

    It logs which config file it read. Under systemd (NOTIFY_SOCKET set) it sends
    READY=1 once the API answers and STOPPING=1 when shutdown starts.

    Example: jobd serve --config jobd.toml
    """
    from jobd.daemon import run
    from jobd.logs import configure_logging
    from jobd.sdnotify import notify

    source, cfg = load(config)
    fmt = log_format or cfg.logging.format
    if fmt not in ("text", "json"):
        raise typer.BadParameter("must be text or json", param_hint="--log-format")
    configure_logging(fmt, cfg.logging.level)
    log = logging.getLogger("jobd.cli")
    log.info("%s", source.describe())
    if is_missing(cfg):
        log.info("database %s does not exist yet: creating it", Path(cfg.database.path).absolute())

    def ready(address: str) -> None:
        notify(f"READY=1\nSTATUS=serving on {address}")

    def stopping() -> None:
        notify("STOPPING=1\nSTATUS=shutting down")

    run(cfg, on_ready=ready, on_stopping=stopping)


app.command("stats")(ops.stats)
app.command("top")(ops.top)
app.command("prune")(ops.prune)
app.command("migrate")(ops.migrate)
app.command("nodes")(nodes.nodes)


@app.command("version")
def version(config: ConfigOpt = None) -> None:
    """Print the version.

    Example: jobd version
    """
    typer.echo(__version__)


def main() -> None:
    run_cli(app)


if __name__ == "__main__":
    main()
