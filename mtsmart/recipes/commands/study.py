"""`mtsmart study STUDY.yaml [--workers N] [--threads T] [--settings A,B] [--variants A,B]
[--stop-after-failures K] [--hours H] [--report-only | --plan]`: run a study, then write its report (docs/study.md)."""
from __future__ import annotations

import argparse
import math
import signal
from typing import Optional

from mtsmart.recipes.study.spec import StudyError, load_study


def add_parser(commands) -> None:
    parser = commands.add_parser("study", help="run a pre-registered study (variants × settings × seeds) and report it")
    parser.add_argument("study", help="the study file (YAML)")
    parser.add_argument("--workers", type=int, default=2, help="training processes at once (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process (default 1)")
    parser.add_argument("--settings", default=None,
                        help="comma-separated settings to run (default all); the report covers every setting. "
                             "Machines can share a study by setting: their run folders never overlap")
    parser.add_argument("--variants", default=None,
                        help="comma-separated variants to run (default all), with the variants their runs start "
                             "from or read; the report covers every variant. Answers one question first: "
                             "the others' runs wait for a later invocation")
    parser.add_argument("--stop-after-failures", type=int, default=3, metavar="K",
                        help="start no more runs once K runs in a row have failed (default 3): a cause they "
                             "share, such as data that cannot be found, would fail every run in turn")
    parser.add_argument("--hours", type=float, default=None, metavar="H",
                        help="end within H hours: start a run only if the finished runs' times say it ends in "
                             "time (for a machine with a time limit, where a killed run loses its work since "
                             "its last checkpoint); rerun to continue")
    parser.add_argument("--report-only", action="store_true", help="write report.md / report.png from the finished runs; run nothing")
    parser.add_argument("--plan", action="store_true",
                        help="print the runs left (of --settings / --variants) per setting and variant and how long "
                             "they will take at --workers at a time, from the finished runs' times; run and write nothing")
    parser.set_defaults(handler=run)


def _names(given: Optional[str], flag: str, kind: str, known: list[str]) -> Optional[list[str]]:
    """A comma-separated selection of the study's settings or variants (None: all of them)."""
    if given is None:
        return None
    names = [name.strip() for name in given.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise StudyError(f"{flag}: {f'unknown {kind} {unknown[0]!r}' if unknown else f'no {kind} given'}; "
                         f"the study has {known}")
    return names


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from mtsmart.recipes.study.report import write_report
    from mtsmart.recipes.study.runner import run_study, with_sources

    if args.workers < 1 or args.threads < 1 or args.stop_after_failures < 1:
        raise StudyError("--workers, --threads and --stop-after-failures must be at least 1")
    if args.hours is not None and not (math.isfinite(args.hours) and args.hours > 0):
        raise StudyError(f"--hours must be a positive number of hours, not {args.hours}")
    if args.plan and args.report_only:
        raise StudyError("--plan and --report-only: give one of them (--plan writes nothing)")
    study = load_study(args.study)
    settings = _names(args.settings, "--settings", "setting", list(study.settings))
    variants = _names(args.variants, "--variants", "variant", list(study.variants))
    if variants is not None:
        added = [v for v in with_sources(study, variants) if v not in variants]
        if added:
            print(f"--variants: also {', '.join(added)}: the runs of {', '.join(variants)} start from or read theirs")
    if args.plan:
        from mtsmart.recipes.study.plan import plan_text

        print(plan_text(study, args.workers, settings, variants))
        return 0
    # `kill` (SIGTERM) stops a study run in the background (where SIGINT is ignored) the same
    # clean way as Ctrl-C: the children stop and resume from their checkpoints next time.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        outcome = None if args.report_only else run_study(
            study, args.workers, args.threads, settings, stop_after_failures=args.stop_after_failures,
            hours=args.hours, variants=variants)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to continue (finished runs are kept, the others resume)")
        return 130
    md, png = write_report(study)
    print(f"report: {md} and {png}")
    if outcome is not None and outcome.stopped:
        print(f"stopped early: {outcome.stopped}; fix that and rerun the same command "
              f"(finished runs are kept, the others resume or start again)")
        return 1
    if outcome is not None and outcome.failed:
        print(f"{len(outcome.failed)} runs failed; their train.log says why; rerun the same command to retry them")
        return 1
    if outcome is not None and outcome.held:
        for line in outcome.held:
            print(f"held: {line}")
        return 1
    if outcome is not None and outcome.out_of_time:
        print(f"out of time: {outcome.out_of_time} run{'' if outcome.out_of_time == 1 else 's'} left, none expected "
              f"to end within --hours {args.hours:g}; rerun to continue (finished runs are kept)")
    return 0
