"""The ``sandboxd`` command line.

    sandboxd run [options] -- PROGRAM [ARG…]    run one program in a jail
    sandboxd policy check FILE…                  validate policy files
    sandboxd policy show NAME|FILE               the fully resolved policy and its hash
    sandboxd profile check FILE…                 load seccomp profiles, list skipped rules
    sandboxd profile show NAME [--arch ARCH]     the effective allow/deny table
    sandboxd doctor [--json]                     what this host can give each layer

Bad input (a malformed policy, a missing path) prints one line and exits 2, never a traceback.
Heavy modules are imported inside the commands: ``run`` forks the spawner from this process,
and a lean process forks faster.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from typing import Sequence

from sandboxd.errors import LayerUnavailable, SandboxdInputError
from sandboxd.result import EXIT_SETUP_FAILED, EXIT_USAGE


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every bad input
        self.exit(EXIT_USAGE, f"sandboxd: {message}\n")


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--env takes KEY=VALUE, got {text!r}")
    return name, value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _size(text: str) -> int:
    from sandboxd.policy.sizes import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sandboxd", description="Run untrusted programs in hardened sandboxes.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="run one program in a jail")
    run.add_argument("--policy", default="default", help="policy name or file (default: default)")
    run.add_argument("--ro-bind", nargs=2, action="append", default=[], metavar=("SRC", "DEST"))
    run.add_argument("--bind", nargs=2, action="append", default=[], metavar=("SRC", "DEST"))
    run.add_argument("--tmpfs", action="append", default=[], metavar="DEST")
    run.add_argument("--workdir", metavar="HOSTDIR", help="host directory mounted read-write at the work path")
    run.add_argument("--env", action="append", type=_env_pair, default=[], metavar="KEY=VALUE")
    run.add_argument("--stdin", metavar="FILE")
    run.add_argument("--stdout", metavar="FILE")
    run.add_argument("--stderr", metavar="FILE")
    run.add_argument("--net", choices=("none", "loopback"))
    run.add_argument("--hostname")
    run.add_argument("--result", metavar="FILE|-", help="write the JSON result here ('-' = stdout)")
    run.add_argument("--time-limit", type=_positive_float, metavar="SEC", help="CPU time of all the job's processes")
    run.add_argument("--wall-time-limit", type=_positive_float, metavar="SEC")
    run.add_argument("--memory-limit", type=_size, metavar="SIZE", help="RAM, no swap (K/M/G suffixes)")
    run.add_argument("--pids-limit", type=_positive_int, metavar="N")
    run.add_argument("--output-limit", type=_size, metavar="SIZE", help="bytes kept of each of stdout and stderr")
    run.add_argument("--file-size-limit", type=_size, metavar="SIZE")
    run.add_argument("--cpus", type=_positive_float, metavar="N", help="CPU bandwidth in cores")
    run.add_argument("--audit-log", metavar="DIR", help="append this job's records to the audit log in DIR")
    run.add_argument("--audit-hmac-key", metavar="FILE", help="also sign the records with this key")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- PROGRAM [ARG…]")

    policy = commands.add_parser("policy", help="check and show policies")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True, parser_class=_Parser)
    check = policy_commands.add_parser("check", help="validate policy files")
    check.add_argument("files", nargs="+")
    show = policy_commands.add_parser("show", help="the resolved policy and its content hash")
    show.add_argument("name")

    profile = commands.add_parser("profile", help="check and show seccomp profiles")
    profile_commands = profile.add_subparsers(dest="profile_command", required=True, parser_class=_Parser)
    pcheck = profile_commands.add_parser("check", help="load seccomp profiles")
    pcheck.add_argument("files", nargs="+")
    pshow = profile_commands.add_parser("show", help="the effective allow/deny table")
    pshow.add_argument("name")
    pshow.add_argument("--arch", default="native")

    doctor = commands.add_parser("doctor", help="what this host can give each layer")
    doctor.add_argument("--json", action="store_true")

    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--listen", metavar="HOST:PORT", help="default 127.0.0.1:8080; '' for none")
    serve.add_argument("--unix-socket", metavar="PATH")
    serve.add_argument("--state-dir", metavar="DIR")
    serve.add_argument("--config", metavar="FILE", help="TOML file of settings (docs/service.md)")
    serve.add_argument("--slots", type=_positive_int, metavar="N")

    from sandboxd.audit import cli as audit_cli
    from sandboxd.service import auth

    auth.add_commands(commands)
    audit_cli.add_commands(commands)
    return parser


def _open_stdio(args: argparse.Namespace) -> tuple[int, int, int]:
    """The job's stdio: the named files, else ours. Opened here, with the caller's rights."""
    def open_or(path: str | None, flags: int, default: int, flag: str) -> int:
        if path is None:
            return default
        try:
            return os.open(path, flags | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise SandboxdInputError(f"{flag} {path}: {exc.strerror}") from None

    out_flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    return (open_or(args.stdin, os.O_RDONLY, 0, "--stdin"),
            open_or(args.stdout, out_flags, 1, "--stdout"),
            open_or(args.stderr, out_flags, 2, "--stderr"))


def cmd_run(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise SandboxdInputError("run: no program given (sandboxd run [options] -- PROGRAM [ARG…])")
    from sandboxd.spawner.client import SpawnerClient

    # Started first, before any file of the job is open, and it starts while we load the policy.
    from sandboxd.spawner.client import SpawnerGone

    client = SpawnerClient.start_exec()
    try:
        return _run(args, argv, client)
    except SpawnerGone as exc:
        # Our own failure, not the job's: say so plainly (its stderr, above, says why).
        print(f"sandboxd: the spawner died: {exc}; the job's fate is unknown", file=sys.stderr)
        return EXIT_SETUP_FAILED
    finally:
        client.close()


def _run(args: argparse.Namespace, argv: list[str], client) -> int:
    from sandboxd.jail.plan import JobLimits, JobSpec
    from sandboxd.policy.compile import compile_template
    from sandboxd.policy.load import Overrides, apply_overrides, load_policy

    if args.workdir is not None and not os.path.isdir(args.workdir):
        raise SandboxdInputError(f"--workdir {args.workdir}: not a directory")
    mounts = tuple([("--ro-bind", s, d) for s, d in args.ro_bind] + [("--bind", s, d) for s, d in args.bind]
                   + [("--tmpfs", "", d) for d in args.tmpfs])
    loaded = apply_overrides(load_policy(args.policy),
                             Overrides(mounts=mounts, network=args.net, hostname=args.hostname))
    template = compile_template(loaded)
    requested = JobLimits(cpu_time=args.time_limit, wall_time=args.wall_time_limit, memory=args.memory_limit,
                          pids=args.pids_limit, cpus=args.cpus, output=args.output_limit,
                          fsize=args.file_size_limit)
    limits = template.limits.narrowed(requested)
    job = JobSpec(job_id=uuid.uuid4().hex, argv=tuple(argv), env=tuple(args.env),
                  workdir=os.path.abspath(args.workdir) if args.workdir else None, limits=limits)
    stdio = _open_stdio(args)
    streams, handed = [], ()
    if limits.output is not None:
        # Capped: the job writes into pipes we read, keeping at most the cap of each.
        from sandboxd.supervise.output import pipe_for

        out, out_w = pipe_for("stdout", limits.output, stdio[1], keep=False)
        err, err_w = pipe_for("stderr", limits.output, stdio[2], keep=False)
        streams, handed = [out, err], (out_w, err_w)
        stdio = (stdio[0], out_w, err_w)

    from sandboxd.supervise.runner import run_job

    audit = None
    if args.audit_log:
        from sandboxd.audit.service import cli_audit

        audit = cli_audit(args.audit_log, args.audit_hmac_key)
        audit.job_started(job.job_id, policy={"name": loaded.name, "hash": loaded.hash})
    outcome = run_job(client, template, job, stdio, streams, close_after_send=handed)
    if audit is not None:
        # On disk before we report the result, like the service.
        audit.job_finished(outcome.to_dict(), argv=argv, env=dict(args.env), limits=limits.__dict__)
        audit.writer.close()
    if outcome.error is not None:
        print(f"sandboxd: {outcome.error.get('stage')}: {outcome.error.get('detail')}", file=sys.stderr)
    if args.result == "-":
        print(outcome.to_json())
    elif args.result:
        with open(args.result, "w") as handle:
            handle.write(outcome.to_json() + "\n")
    return outcome.exit_status()


def cmd_policy(args: argparse.Namespace) -> int:
    from sandboxd.policy.load import load_policy

    if args.policy_command == "check":
        from sandboxd.policy.compile import compile_template

        failures = 0
        for path in args.files:
            try:
                loaded = load_policy(path if ("/" in path or path.endswith(".toml")) else f"./{path}")
                compile_template(loaded)  # what only compiling finds: a missing seccomp profile…
                print(f"{path}: ok ({loaded.hash})")
            except (SandboxdInputError, LayerUnavailable) as exc:
                print(str(exc), file=sys.stderr)
                failures += 1
        return EXIT_USAGE if failures else 0
    loaded = load_policy(args.name)
    print(json.dumps({"name": loaded.name, "source": loaded.source, "hash": loaded.hash,
                      "policy": loaded.policy.model_dump(mode="json")}, indent=2))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from sandboxd.policy import seccomp_compile, seccomp_profile

    if args.profile_command == "check":
        failures = 0
        for path in args.files:
            try:
                profile = seccomp_profile.load_profile(path)
                compiled = seccomp_compile.compile_profile(profile)
                print(f"{path}: ok ({compiled.profile_hash}, {len(compiled.bpf) // 8} BPF instructions)")
                for skipped in compiled.skipped:
                    print(f"  skipped {skipped}")
            except SandboxdInputError as exc:
                print(str(exc), file=sys.stderr)
                failures += 1
        return EXIT_USAGE if failures else 0
    profile = seccomp_profile.load_profile(seccomp_profile.find_profile(args.name))
    try:
        table = seccomp_compile.effective_table(profile, args.arch)
    except ValueError as exc:
        raise SandboxdInputError(f"--arch {args.arch}: {exc}") from None
    for row in table:
        print(row if isinstance(row, str) else "  ".join(str(part) for part in _row_parts(row)))
    return 0


def _row_parts(row: object) -> Sequence[object]:
    if isinstance(row, tuple):
        return row
    return [getattr(row, name) for name in getattr(row, "__dataclass_fields__", {})] or [row]


def cmd_doctor(args: argparse.Namespace) -> int:
    from sandboxd import doctor

    return doctor.main(["--json"] if args.json else [])


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from sandboxd.service.config import load_config
    from sandboxd.service.server import serve

    config = load_config(args.config, {"listen": args.listen, "unix_socket": args.unix_socket,
                                       "state_dir": args.state_dir, "slots": args.slots})
    asyncio.run(serve(config))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from sandboxd.service import auth

    return auth.run(args)


def cmd_audit(args: argparse.Namespace) -> int:
    from sandboxd.audit import cli as audit_cli

    return audit_cli.run(args)


COMMANDS = {"run": cmd_run, "policy": cmd_policy, "profile": cmd_profile, "doctor": cmd_doctor,
            "serve": cmd_serve, "token": cmd_token, "audit": cmd_audit}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:
        # The reader went away (`sandboxd profile show … | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except SandboxdInputError as exc:
        print(f"sandboxd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LayerUnavailable as exc:
        print(f"sandboxd: refused: {exc}", file=sys.stderr)
        return EXIT_SETUP_FAILED
