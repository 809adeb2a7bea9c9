"""
The C{pcci} command's options and subcommands (click).

Start-up time is a feature of a command line: this module imports click
only, and each subcommand imports what it needs when it runs (no reactor:
see L{pcci.cli.http}).  Every subcommand is an C{async} function run by
L{go}, the one place that runs one and turns each known failure into one
line on stderr and an exit status.
"""

from __future__ import annotations

from typing import Any

import click

from pcci import __version__
from pcci.cli.config import DEFAULT_URL, Config, go, locate_token
from pcci.cli.options import (
    JOB_OPTIONS,
    TARGETS_HELP,
    duration,
    job_options,
    json_option,
    query_option,
    targets,
    wait_offline_option,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="PCCI_URL", default=DEFAULT_URL, show_default=True,
              help="The master's REST API (also PCCI_URL); several, comma-separated, are tried in turn.")
@click.option("--token-file", metavar="PATH",
              help="A file holding the API token, if PCCI_TOKEN is not set"
                   " (default: ~/.pcci/api-token, when it exists).")
@click.option("--ca-file", metavar="PATH", type=click.Path(dir_okay=False),
              help="Trust this CA certificate (PEM) for an https:// master.")
@click.version_option(__version__, "--version", prog_name="pcci")
@click.pass_context
def cli(ctx: click.Context, url: str, token_file: str | None, ca_file: str | None) -> None:
    """
    Run commands on many machines through a pcci master.

    \b
      pcci run -w 'pi[01-16]' -- uname -a
      pcci workers
      pcci pools
    """
    token, source = locate_token(token_file)
    ctx.obj = Config(url=url, token=token, token_source=source, ca_file=ca_file)


@cli.command(context_settings={"allow_interspersed_args": False})
@targets
@query_option
@job_options
@click.option(
    "-b", "--gather", is_flag=True, help="At the end, each distinct output once, with the workers that printed it."
)
@click.option("--diff", is_flag=True, help="With --gather: each output as a diff against the most common.")
@json_option("the ended pool")
@click.option("--detach", is_flag=True, help="Print the pool id and exit at once.")
@click.option(
    "-n", "--dry-run", is_flag=True, help="Print the workers the targets select, one a line, and run nothing."
)
@click.argument("command", nargs=-1, required=True)
@click.pass_obj
def run(cfg: Config, command: tuple[str, ...], **options: Any) -> None:
    """
    Run COMMAND on the selected workers, showing output as it comes.

    Each line is prefixed with its worker's name: stdout to stdout, stderr
    to stderr.  At the end, a summary by state goes to stderr.  The exit
    status is 0 when every job is ok, else the highest job status (a lost
    worker counts 255).  Ctrl-C kills the pool.

    \b
      pcci run -w 'pi[01-16]' -- uname -a
      pcci run -l gpu -x gpu3 --batch 2 -- nvidia-smi
      pcci run -w 'web*' -t 30 -b -- sh -c 'df -h | grep sda'
      pcci run -w build1 --cwd /srv/app -e CI=1 -- make test
      pcci run -n -l gpu -x 'gpu[3-4]' -- true
      pcci run -w 'pi*' --wait-offline 1h -- apt-get -y upgrade
      pcci run -l rack=3 --notify https://hooks.example/pcci -- make deploy
      pcci run -q 'os.id=debian and cpus>=4 and not gpu.count=0' -- nproc
      pcci run -w 'web*' --canary 1 --batch 10 --max-failures 5% --pause-every 50 -- deploy
    """
    from pcci.cli.run import RunRequest, run_pool

    if not options["targets"] and not options["labels"] and not options["query"]:
        raise click.UsageError("choose workers with -w TARGET, -l LABEL or -q QUERY")
    if options["diff"]:
        options["gather"] = True
    request = RunRequest(command=list(command), **_read_stdin(options))
    go(run_pool, cfg, request)


def _read_stdin(options: dict[str, Any]) -> dict[str, Any]:
    """The options with C{--stdin}'s file read: a pool request carries the text."""
    stdin = options.pop("stdin")
    return {**options, "stdin": None if stdin is None else stdin.read()}


@cli.command()
@targets
@click.option("-r", "--recursive", is_flag=True, help="Fetch a directory, and all it holds.")
@json_option("the ended pool")
@click.argument("path")
@click.argument("dest", type=click.Path(file_okay=False))
@click.pass_obj
def fetch(cfg: Config, path: str, dest: str, **options: Any) -> None:
    """
    Fetch PATH from the selected workers into DEST/<worker>/.

    Each worker's files land in a directory of their own, written whole or
    not at all (a temporary name, then a rename), with their modes and
    times; links come as links.  A file that changed while it was read is
    reported, and that worker's job fails.  Each worker's result, gathered,
    then a summary; the exit status is 0 only if every worker is ok.

    \b
      pcci fetch -w 'pi*' /var/log/syslog ./logs/     # ./logs/pi01/syslog, ...
      pcci fetch -l gpu -r /etc/nvidia/ ./conf/
    """
    from pcci.cli.files import FetchRequest, fetch_files

    if not options["targets"] and not options["labels"]:
        raise click.UsageError("choose workers with -w TARGET or -l LABEL")
    if not path.startswith("/"):
        raise click.UsageError("PATH is a path on the workers: give it absolute")
    go(fetch_files, cfg, FetchRequest(path, dest, **options))


@cli.command()
@targets
@click.option("-r", "--recursive", is_flag=True, help="Copy directories, and all they hold.")
@click.option("--mode", metavar="OCTAL", help="The files' mode on the workers (default: as here).")
@click.option(
    "--owner",
    metavar="USER[:GROUP]",
    help="The files' owner on the workers (the worker must run as root; default: the worker's user).",
)
@click.option("--mkdir", is_flag=True, help="Make the destination directory (and its parents) if missing.")
@json_option("the ended pool")
@click.argument("paths", nargs=-1, required=True)
@click.pass_obj
def cp(cfg: Config, paths: tuple[str, ...], **options: Any) -> None:
    """
    Copy files to the selected workers: SOURCE... DESTINATION.

    Each file arrives whole or not at all (a temporary name, its SHA-256
    checked, then a rename), with its mode and time; a file already there,
    identical, is not sent again.  A destination ending in / (or a
    directory there) receives the sources by name; several sources need
    one.  A directory is copied by its name (dir) or its contents (dir/),
    with -r; links are copied as links.  Each worker's result, gathered,
    then a summary; the exit status is 0 only if every worker is ok.

    \b
      pcci cp -w 'pi[01-16]' ./config.toml /etc/app/config.toml
      pcci cp -l gpu -r ./models/ /srv/models/
      pcci cp -w '*' --mode 0644 --mkdir ./motd /etc/motd
    """
    from pcci.cli.files import CopyRequest, push_files

    if len(paths) < 2:
        raise click.UsageError("give one or more sources, then the destination")
    if not options["targets"] and not options["labels"]:
        raise click.UsageError("choose workers with -w TARGET or -l LABEL")
    if options["mode"] is not None:
        try:
            if not 0 <= int(options["mode"], 8) <= 0o7777:
                raise ValueError
        except ValueError:
            raise click.BadParameter("an octal mode, 0 to 7777", param_hint="--mode") from None
    if not paths[-1].startswith("/"):
        raise click.UsageError("the destination is a path on the workers: give it absolute")
    go(push_files, cfg, CopyRequest(list(paths[:-1]), paths[-1], **options))


@cli.command("continue")
@click.argument("pool")
@click.pass_obj
def continue_(cfg: Config, pool: str) -> None:
    """Let POOL, paused by its rollout (--pause-every), go on."""
    from pcci.cli.views import continue_pool

    go(continue_pool, cfg, pool)


@cli.command()
@click.argument("pool", required=False)
@click.option("--last", is_flag=True, help="Retry the latest pool this token started.")
@click.option(
    "--states",
    metavar="STATE,...",
    help="Retry the jobs that ended so (default: every state but ok): failed, killed, timed_out, lost, "
    "not_started, cancelled.",
)
@wait_offline_option()
@query_option
@click.option(
    "-b", "--gather", is_flag=True, help="At the end, each distinct output once, with the workers that printed it."
)
@json_option("the ended pool")
@click.option("--detach", is_flag=True, help="Print the new pool's id and exit at once.")
@click.pass_obj
def retry(cfg: Config, pool: str | None, last: bool, states: str | None, **options: Any) -> None:
    """
    Run POOL's command again on the workers where it did not end ok: a new
    pool, followed as pcci run follows one.

    \b
      pcci retry 019a5f3c-...
      pcci run -w 'pi*' -- make test; pcci retry --last --states failed,timed_out
    """
    from pcci.cli.run import retry_pool

    if (pool is None) == (not last):
        raise click.UsageError("give a POOL, or --last")
    chosen = [s.strip() for s in states.split(",") if s.strip()] if states else None
    go(retry_pool, cfg, pool, chosen, options)


@cli.group()
def schedule() -> None:
    """
    Schedules: pools that start by themselves on a cron line, kept in the
    master's store (every master runs each run once).
    """


@schedule.command("add")
@click.argument("name")
@click.option(
    "--cron",
    required=True,
    metavar="LINE",
    help="Five fields (minute hour day month weekday), or @hourly, @daily, @weekly, @monthly.",
)
@click.option(
    "--tz",
    "timezone",
    metavar="ZONE",
    help="The IANA time zone the cron line is read in (default UTC), e.g. Europe/Berlin.",
)
@targets
@query_option
@job_options
@click.option(
    "--overlap", is_flag=True, help="Start a run even while the previous one still runs (else it is skipped)."
)
@click.option("--catch-up", is_flag=True, help="At a master's start, run the latest run missed while no master was up.")
@click.option("--paused", is_flag=True, help="Make it paused: it runs once resumed.")
@click.argument("command", nargs=-1, required=True)
@click.pass_obj
def schedule_add(cfg: Config, name: str, command: tuple[str, ...], **options: Any) -> None:
    """
    Make a schedule NAME that runs COMMAND on the selected workers.

    \b
      pcci schedule add backup --cron '0 3 * * *' --tz Europe/Berlin -w 'db*' -- /usr/local/bin/backup
      pcci schedule add uptime --cron '*/5 * * * *' -l rack=3 -- uptime
    """
    from pcci.cli.run import RunRequest
    from pcci.cli.views import add_schedule

    if not options["targets"] and not options["labels"] and not options["query"]:
        raise click.UsageError("choose workers with -w TARGET, -l LABEL or -q QUERY")
    job = {k: options.pop(k) for k in ("targets", "labels", "exclude", "query", *JOB_OPTIONS)}
    body = RunRequest(command=list(command), **_read_stdin(job)).body()
    body.update(name=name, cron=options["cron"], overlap=options["overlap"], catch_up=options["catch_up"],
                paused=options["paused"])
    if options["timezone"]:
        body["timezone"] = options["timezone"]
    go(add_schedule, cfg, body)


@schedule.command("ls")
@json_option("the schedules")
@click.pass_obj
def schedule_ls(cfg: Config, as_json: bool) -> None:
    """The schedules: name, cron line, next run, last outcome, command."""
    from pcci.cli.views import list_schedules

    go(list_schedules, cfg, as_json)


@schedule.command("show")
@click.argument("name")
@json_option("the schedule")
@click.pass_obj
def schedule_show(cfg: Config, name: str, as_json: bool) -> None:
    """One schedule: what it runs, its next runs, its latest runs and pools."""
    from pcci.cli.views import show_schedule

    go(show_schedule, cfg, name, as_json)


@schedule.command("pause")
@click.argument("name")
@click.pass_obj
def schedule_pause(cfg: Config, name: str) -> None:
    """Pause a schedule: it starts nothing until resumed."""
    from pcci.cli.views import change_schedule

    go(change_schedule, cfg, name, {"paused": True})


@schedule.command("resume")
@click.argument("name")
@click.pass_obj
def schedule_resume(cfg: Config, name: str) -> None:
    """Resume a paused schedule (runs missed meanwhile are not made up)."""
    from pcci.cli.views import change_schedule

    go(change_schedule, cfg, name, {"paused": False})


@schedule.command("rm")
@click.argument("name")
@click.pass_obj
def schedule_rm(cfg: Config, name: str) -> None:
    """Remove a schedule (its pools stay, for the retention)."""
    from pcci.cli.views import remove_schedule

    go(remove_schedule, cfg, name)


@cli.group()
def token() -> None:
    """
    API tokens: make scoped ones, list them, revoke them (an administrator's
    token only).  Made tokens are kept hashed in the master's store, so
    every master sharing it knows them.
    """


@token.command("create")
@click.argument("name")
@click.option("--read", "read_only", is_flag=True, help="It may only read.")
@click.option(
    "-w", "--workers", multiple=True, metavar="TARGET", help="Only these workers (names, node sets, globs); repeatable."
)
@click.option(
    "-l",
    "--labels",
    multiple=True,
    metavar="LABEL",
    help="Only workers holding KEY or KEY=VALUE; repeatable (all must hold).",
)
@click.option(
    "-c",
    "--commands",
    multiple=True,
    metavar="GLOB",
    help="Only commands matching this glob (wildcards "
    "never match ; & | < > $ ` ( ) or a newline, nor / in the program); repeatable (any may match).",
)
@click.option("--stdin", "stdin", is_flag=True, help="With --commands: its runs may feed the command's standard input.")
@click.option(
    "--cwd",
    "cwd",
    multiple=True,
    metavar="DIR",
    help="With --commands: a directory (glob) its runs may start in; repeatable.",
)
@click.option(
    "--notify",
    "notify",
    multiple=True,
    metavar="URL",
    help="A URL (glob) its pools may ask to be told of their end; repeatable.",
)
@click.option("--shell", "shell", is_flag=True, help="It may open shells (pcci shell) on its workers.")
@click.pass_obj
def token_create(cfg: Config, name: str, read_only: bool, stdin: bool, shell: bool, **scope: tuple[str, ...]) -> None:
    """
    Make a token named NAME and print it: the only time it is shown.

    \b
      pcci token create alice -w 'lab[01-20]' -l gpu -c nvidia-smi -c uptime
      pcci token create ci -w 'build*' -c 'make test' --cwd /srv/app
      pcci token create alerts -c uptime --notify 'https://hooks.slack.com/services/*'
      pcci token create grafana --read
      pcci token create oncall -w 'lab*' --shell
    """
    from pcci.cli.views import create_token

    asked: dict[str, Any] = {k: list(v) for k, v in scope.items() if v}
    if stdin:
        asked["stdin"] = True
    if shell:
        asked["shell"] = True
    go(create_token, cfg, name, read_only, asked)


@token.command("ls")
@json_option("the tokens")
@click.pass_obj
def token_ls(cfg: Config, as_json: bool) -> None:
    """Every token's name, where it comes from and its scope; never a token."""
    from pcci.cli.views import list_tokens

    go(list_tokens, cfg, as_json)


@token.command("revoke")
@click.argument("name")
@click.pass_obj
def token_revoke(cfg: Config, name: str) -> None:
    """Revoke the token NAME: every master refuses it from now on."""
    from pcci.cli.views import revoke_token

    go(revoke_token, cfg, name)


@cli.command(context_settings={"allow_interspersed_args": False})
@click.option("-u", "--user", metavar="USER", help="Who the shell runs as (where the worker runs as root).")
@click.option("-t/-T", "--tty/--no-tty", "tty", default=None,
              help="A pseudo-terminal on the worker, or none; by default, one when this standard input is a terminal.")
@click.option("--replay", metavar="SHELL", help="Play back a kept shell's recording instead (pcci shells lists them).")
@click.option("--speed", type=click.FloatRange(min=0.1, max=100), default=1.0, show_default=True,
              help="With --replay: how much faster than it happened.")
@click.argument("node", required=False)
@click.argument("command", nargs=-1)
@click.pass_obj
def shell(
    cfg: Config, node: str | None, command: tuple[str, ...], user: str | None, tty: bool | None,
    replay: str | None, speed: float,
) -> None:
    """
    A login shell on NODE, or COMMAND run by its shell, through the master.
    ~. at the start of a line disconnects; the remote exit status is pcci's.

    \b
      pcci shell pi07
      pcci shell -u root db1
      pcci shell db1 -- tail -f /var/log/syslog
      pcci shell db1 -- 'ls /srv | wc -l' > count.txt
      pcci shell --replay 5f0c9a1e2b3d4c6f
    """
    if replay is not None:
        if node is not None:
            raise click.UsageError("--replay plays a kept shell: give no NODE")
        from pcci.cli.sessions import replay_shell

        go(replay_shell, cfg, replay, speed)
    if node is None:
        raise click.UsageError("which NODE? (pcci workers lists them)")
    import os

    from pcci.cli.shell import open_shell

    pty = os.isatty(0) if tty is None else tty
    if command[:1] == ("--",):  # after NODE, click keeps it
        command = command[1:]
    # As ssh does: the words of COMMAND are joined by spaces, for the remote shell.
    options = {"cmd": " ".join(command), "user": user or "", "pty": pty}
    raise SystemExit(open_shell(cfg.url, cfg.token, cfg.ca_file, node, options))


@cli.group(invoke_without_command=True)
@targets
@query_option
@click.option("--fields", metavar="A,B", help="Only these facts (dotted paths: os.id,memory,gpu.models).")
@click.option("--count-by", metavar="A,B", help="Count the workers by these facts, each group's names folded.")
@click.option("--all", "every", is_flag=True, help="Also the workers offline, with their facts as last told.")
@json_option("the facts")
@click.pass_context
def facts(ctx: click.Context, **options: Any) -> None:
    """
    What each worker told of its machine: OS, kernel, CPUs, memory, disks,
    GPUs, virtualisation, addresses, versions, and its own facts.d.

    \b
      pcci facts
      pcci facts -q 'cpus>=8 and gpu.count>0' --fields cpus,memory,gpu.models
      pcci facts --count-by os.id,os.version
      pcci facts -w pi07 --json
      pcci facts refresh -l rack=3
    """
    if ctx.invoked_subcommand is None:
        from pcci.cli.facts import show_facts

        go(show_facts, ctx.obj, options)


@facts.command("refresh")
@targets
@query_option
@click.pass_obj
def facts_refresh(cfg: Config, **options: Any) -> None:
    """Ask the workers (all of them by default) to look at their facts now."""
    from pcci.cli.facts import refresh_facts

    go(refresh_facts, cfg, options)


@cli.command()
@click.option("-n", "--limit", type=click.IntRange(1, 1000), default=20, show_default=True,
              help="How many, newest first.")
@json_option("the shells")
@click.pass_obj
def shells(cfg: Config, limit: int, as_json: bool) -> None:
    """The shells open and those kept: who, where, as whom, how they ended, their recordings."""
    from pcci.cli.sessions import show_shells

    go(show_shells, cfg, limit, as_json)


@cli.group(invoke_without_command=True)
@click.option("--all", "every", is_flag=True, help="Also the workers seen before and now offline.")
@json_option("the workers")
@click.pass_context
def workers(ctx: click.Context, every: bool, as_json: bool) -> None:
    """
    The workers: state, address, health figures, jobs, labels; and their
    identities: who waits for approval, approve, deny, revoke.

    \b
      pcci workers
      pcci workers --all --json
      pcci workers pending
      pcci workers approve pi07
      pcci workers revoke pi07
      pcci workers upgrade --batch 5
    """
    if ctx.invoked_subcommand is None:
        from pcci.cli.views import show_workers

        go(show_workers, ctx.obj, every, as_json)


@workers.command("identities")
@json_option("the identities")
@click.pass_obj
def workers_identities(cfg: Config, as_json: bool) -> None:
    """Every worker's identity: its key's fingerprint, state, labels and how it joined."""
    from pcci.cli.identities import list_identities

    go(list_identities, cfg, False, as_json)


@workers.command("pending")
@json_option("the pending workers")
@click.pass_obj
def workers_pending(cfg: Config, as_json: bool) -> None:
    """The workers that joined and wait for approval, with their keys' fingerprints."""
    from pcci.cli.identities import list_identities

    go(list_identities, cfg, True, as_json)


@workers.command("upgrade")
@targets
@click.option("--batch", default="100%", show_default=True, metavar="N|N%",
              help="Workers upgraded at once: a number, or a share of those chosen; the next batch starts when "
                   "this one is back.")
@click.option("--deadline", default="60s", show_default=True, callback=duration,
              help="How long a new version has to reach a master before the worker goes back to the old one.")
@json_option("the ended upgrade")
@click.pass_obj
def workers_upgrade(cfg: Config, batch: str, deadline: float, as_json: bool, **options: Any) -> None:
    """
    Upgrade workers to the master's version: each installs it beside the
    running one, waits for its jobs to end, and restarts into it; one whose
    new version does not come back goes back to the old one.  Only workers
    installed by the install line (pcci join-token create) upgrade themselves.

    \b
      pcci workers upgrade                      # every worker, all at once
      pcci workers upgrade -l rack=b --batch 5  # five at a time
      pcci workers upgrade -w 'pi*' --batch 20%
    """
    from pcci.cli.upgrades import upgrade_workers

    body: dict[str, Any] = {"batch": batch, "deadline": deadline}
    for key, values in (("workers", options["targets"]), ("labels", options["labels"]),
                        ("exclude", options["exclude"])):
        if values:
            body[key] = list(values)
    go(upgrade_workers, cfg, body, as_json)


def _decision(verb: str, summary: str) -> None:
    @workers.command(verb, help=summary)
    @click.argument("name")
    @click.pass_obj
    def command(cfg: Config, name: str) -> None:
        from pcci.cli.identities import decide

        go(decide, cfg, name, verb)


_decision("approve", "Approve the pending worker NAME: it connects at its next try.")
_decision("deny", "Deny the pending worker NAME: it is told never to come back, and stops.")
_decision(
    "revoke",
    "Revoke the worker NAME: its connection closes at once and its jobs end lost, on every"
    " master; it comes back only by joining again with a new token.",
)


@cli.group("join-token")
def join_token() -> None:
    """Join tokens: one line brings a new machine in as a worker with its own identity."""


@join_token.command("create")
@click.option("--name", "pattern", default="*", show_default=True, metavar="PATTERN",
              help="A glob the worker's name must match (a plain name also goes into the printed line).")
@click.option("--label", "-l", "labels", multiple=True, metavar="K=V", help="A label bound to the worker (repeatable).")
@click.option("--uses", type=click.IntRange(1, 100_000), default=1, show_default=True,
              help="Workers that may join with it.")
@click.option("--ttl", default="1h", show_default=True, callback=duration, help="How long it lives: 90s, 30m, 1h, 2d.")
@click.option("--approve", is_flag=True, help="Each worker that joins waits for pcci workers approve.")
@click.option("--installed", is_flag=True,
              help="Print the line for a machine where pcci is installed already (twistd pcci-worker --join).")
@click.pass_obj
def join_token_create(
    cfg: Config, pattern: str, labels: tuple[str, ...], uses: int, ttl: float, approve: bool, installed: bool
) -> None:
    """
    Make a join token and print the one line that installs, joins and starts
    a worker, to run as root on the new machine.

    \b
      pcci join-token create --name pi07
      pcci join-token create --name 'lab*' --uses 20 --label room=b12 --ttl 2h
      pcci join-token create --approve
    """
    from pcci.cli.identities import create_join_token
    from pcci.labels import parse_label

    try:
        asked = {"name": pattern, "labels": dict(parse_label(label) for label in labels), "uses": uses,
                 "ttl": ttl, "approve": approve}
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    go(create_join_token, cfg, asked, installed)


@join_token.command("ls")
@json_option("the join tokens")
@click.pass_obj
def join_token_ls(cfg: Config, as_json: bool) -> None:
    """Every join token: its state, names, uses and end; never a token."""
    from pcci.cli.identities import list_join_tokens

    go(list_join_tokens, cfg, as_json)


@join_token.command("revoke")
@click.argument("token_id", metavar="ID")
@click.pass_obj
def join_token_revoke(cfg: Config, token_id: str) -> None:
    """Revoke the join token ID: no worker joins with it any more."""
    from pcci.cli.identities import revoke_join_token

    go(revoke_join_token, cfg, token_id)


@cli.command()
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="How many pools, newest first."
)
@json_option("the pools")
@click.pass_obj
def pools(cfg: Config, limit: int, as_json: bool) -> None:
    """
    The latest pools: id, start, states, workers, duration, command.

    \b
      pcci pools --limit 5
    """
    from pcci.cli.views import show_pools

    go(show_pools, cfg, limit, as_json)


@cli.command()
@click.argument("pool")
@json_option("the pool")
@click.pass_obj
def show(cfg: Config, pool: str, as_json: bool) -> None:
    """
    One pool: its outputs gathered, and its jobs by state.

    \b
      pcci show 019a5f3c-...
    """
    from pcci.cli.views import show_pool

    go(show_pool, cfg, pool, as_json)


@cli.command()
@click.argument("pool")
@click.option(
    "-w", "--workers", "targets", multiple=True, metavar="TARGET", help="Only these workers' output. " + TARGETS_HELP
)
@click.option("-f", "--follow", is_flag=True, help="Go on printing output as it comes, until the pool ends.")
@click.pass_obj
def logs(cfg: Config, pool: str, targets: tuple[str, ...], follow: bool) -> None:
    """
    A pool's output, each line prefixed with its worker's name.

    \b
      pcci logs 019a5f3c-... -w 'pi0*'
      pcci run --detach -w '*' -- long-job; pcci logs -f POOL
    """
    from pcci.cli.views import show_logs

    go(show_logs, cfg, pool, list(targets), follow)


@cli.command()
@click.argument("pool")
@click.option(
    "-w", "--workers", "targets", multiple=True, metavar="TARGET", help="Only on these workers. " + TARGETS_HELP
)
@click.pass_obj
def kill(cfg: Config, pool: str, targets: tuple[str, ...]) -> None:
    """
    Kill a pool's jobs (their whole process trees), on all or some workers.

    \b
      pcci kill 019a5f3c-...
      pcci kill 019a5f3c-... -w pi03
    """
    from pcci.cli.views import kill_pool

    go(kill_pool, cfg, pool, list(targets))


@cli.command()
@click.pass_obj
def whoami(cfg: Config) -> None:
    """
    Which token this is, as the master knows it, and whether it may run and
    kill or only read.
    """
    from pcci.cli.views import show_token

    go(show_token, cfg)


def main() -> None:
    cli(prog_name="pcci")
