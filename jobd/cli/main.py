"""``jobd``: the command line. Each group lives in its own module."""

from __future__ import annotations

from typing import Annotated

import typer

from jobd import __version__
from jobd.cli import dlq, jobs, ops, tenants
from jobd.cli.common import ConfigOpt, config_from, run_cli

app = typer.Typer(help="jobd: background jobs with retries and signed webhooks, on one host.\n\n"
                  "Examples: jobd serve --config jobd.toml | jobd jobs list --status fatal | jobd stats",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
app.add_typer(tenants.app, name="tenants")
app.add_typer(jobs.app, name="jobs")
app.add_typer(dlq.app, name="dlq")


@app.command("serve")
def serve(config: ConfigOpt = None,
          log_format: Annotated[str | None, typer.Option(
              "--log-format", help="text or json (default: logging.format).")] = None) -> None:
    """Start the daemon: HTTP API, scheduler, workers and webhook dispatcher.

    Example: jobd serve --config jobd.toml
    """
    from jobd.daemon import run
    from jobd.logs import configure_logging

    cfg = config_from(config)
    fmt = log_format or cfg.logging.format
    if fmt not in ("text", "json"):
        raise typer.BadParameter("must be text or json", param_hint="--log-format")
    configure_logging(fmt, cfg.logging.level)
    run(cfg)


app.command("stats")(ops.stats)
app.command("top")(ops.top)
app.command("prune")(ops.prune)


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
