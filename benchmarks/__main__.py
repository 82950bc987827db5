"""Side-by-side benchmarks: `python -m benchmarks [--quick] [--only CASES] [--best]`.

Every case runs fmnist and its reference in the same process tree, in the same invocation,
alternating repetitions, and reports medians and ratios. Cases (benchmarks/cases/):

{cases}

Results: a markdown table on stdout and benchmarks/results/<date>-<machine>[-<cases>].json;
the machine's CPU class (amx, avx512, avx2, other) is recorded with them and printed above
the table, as figures are only comparable within a class.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from benchmarks.cases import BY_KEY, CASES, OLD_KEYS, key
from benchmarks.common import HERE, ROOT, machine_info, machine_line, machine_slug


def describe_cases() -> str:
    return "\n".join(
        textwrap.fill(" ".join(mod.__doc__.split()), 95, initial_indent=f"  {name:<12}",
                      subsequent_indent=" " * 14)
        for name, mod in CASES.items()
    )


def case_table(results: dict[str, Any]) -> list[str]:
    """The markdown table of `results` (case key -> saved result), each case's rows in turn."""
    lines = ["| case | metric | fmnist | reference | ratio |", "| --- | --- | --- | --- | --- |"]
    for name, result in results.items():
        lines += ["| " + " | ".join(row) + " |" for row in BY_KEY[name].rows(result)]
    return lines


def table(results: dict[str, Any], info: dict[str, Any], argv: list[str],
          commands: bool = True) -> str:
    lines = [machine_line(info),
             f"Command: `{shlex.join(['python', '-m', 'benchmarks', *argv])}`", "",
             *case_table(results)]
    run = [f"    [{name}] {cmd}" for name, result in results.items()
           for cmd in result.get("commands", [])]
    return "\n".join(lines + (["", "Commands:", "", *run] if commands and run else []))


def serve_table(saved: dict[str, Any]) -> str:
    """A saved `python -m benchmarks.serve_load` run: its table and the in-process ceiling."""
    import io

    from benchmarks.serve_load import CEILING_BATCHES, print_row

    rows = io.StringIO()
    for row in saved["rows"]:  # JSON made the pass sizes' keys strings
        print_row({**row, "pass_sizes": {int(k): v for k, v in row["pass_sizes"].items()}},
                  file=rows)
    ceiling = [f"- {backend}: " + ", ".join(
        f"{n} at a time {c[f'batch_{n}_images_per_s']:,.0f}" for n in CEILING_BATCHES)
        for backend, c in saved["ceiling"].items()]  # fmt: skip
    return "\n".join([
        machine_line(saved["machine"]),
        f"Command: `python -m benchmarks.serve_load --seconds {saved['seconds']:g}`", "",
        "| server | load | requests/s | images/s | p50 ms | p99 ms | p99.9 ms | statuses | "
        "socket errors | RSS MB | mean pass |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
        *rows.getvalue().splitlines(), "",
        "Ceiling, the same predictor in-process (decode + predict, no HTTP), images/s:", "",
        *ceiling,
    ])


def show(path: str, cases: list[str] | None = None, commands: bool = True) -> str:
    """The table of a saved results file (`python -m benchmarks` or `benchmarks.serve_load`),
    only the cases named in `cases` when given."""
    saved = json.loads(Path(path).read_text())
    if "cases" not in saved:
        if {"rows", "ceiling"} <= saved.keys():
            return serve_table(saved)
        if saved.get("benchmark") == "serve_lifecycle":
            from benchmarks.serve_lifecycle import lifecycle_table

            return lifecycle_table(saved)
        if saved.get("benchmark") == "serve_vs_litserve":
            from benchmarks.serve_vs_litserve import comparison_table

            return comparison_table(saved)
        if saved.get("benchmark") == "serve_hostile":
            from benchmarks.serve_hostile import hostile_table

            return hostile_table(saved)
        raise ValueError(f"{path} is not a results file of `python -m benchmarks` or "
                         "`benchmarks.serve_load` (it has no 'cases'); read it as it is.")
    results = {OLD_KEYS.get(k, k): v for k, v in saved["cases"].items()}
    if cases is not None:
        missing = [c for c in cases if c not in results]
        if missing:
            raise ValueError(f"{path} has no case {', '.join(missing)}; it has "
                             f"{', '.join(results)}.")
        results = {k: results[k] for k in cases}
    return table(results, saved["machine"], saved["argv"], commands)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks",
                                description=__doc__.format(cases=describe_cases()),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short smoke: 1 epoch, 1 repetition")
    p.add_argument("--only", help=f"comma-separated cases out of: {', '.join(CASES)}")
    p.add_argument("--best", action="store_true", help="include the best recipe (minutes)")
    p.add_argument("--seeds", type=int, default=3, help="seeds for time to accuracy (default 3)")
    p.add_argument("--reps", type=int, default=3, help="repetitions for seed and data (default 3)")
    p.add_argument("--budgets", default="30,60,120,300,600",
                   help="the budget case's budgets, seconds (default 30,60,120,300,600)")
    p.add_argument("--holdout", type=int, default=5000,
                   help="training images held out in the extra time-to-accuracy run (0: skip)")
    p.add_argument("--out", help="results JSON (default benchmarks/results/<date>-<machine>"
                                 "[-<cases>].json)")
    p.add_argument("--show", metavar="JSON", help="print the table of a saved results file "
                                                  "(also a benchmarks.serve_load one)")
    return p


def pick_cases(only: str | None, best: bool) -> list[str]:
    if not only:
        # best (tens of minutes) only with --best; budget (9 minutes) only when named
        return [c for c in CASES if (c != "best" or best) and c != "budget"]
    cases = [c.strip() for c in only.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad:
        raise ValueError(f"Unknown case(s) {', '.join(bad)}. Valid: {', '.join(CASES)}"
                         + (" (tta is now time-to-acc)." if "tta" in bad else "."))
    return cases


def default_out(info: dict[str, Any], args: argparse.Namespace, cases: list[str]) -> Path:
    # a partial run is named after its cases, so it never overwrites a full run of the same day
    parts = [_dt.date.today().isoformat(), machine_slug(info), *(cases if args.only else []),
             *(["quick"] if args.quick else [])]
    return HERE / "results" / ("-".join(parts) + ".json")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = get_args_parser().parse_args(argv)
    if args.show:
        try:
            print(show(args.show))
        except (OSError, ValueError) as e:  # a missing or foreign file: one sentence
            print(e, file=sys.stderr)
            return 2
        return 0
    try:
        cases = pick_cases(args.only, args.best)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    info = machine_info()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fmnist-bench-") as tmp:
        for name in cases:
            t0 = time.perf_counter()
            print(f"[{name}] running ...", file=sys.stderr, flush=True)
            case_tmp = Path(tmp) / name
            case_tmp.mkdir()
            results[key(CASES[name])] = CASES[name].run(args, case_tmp)
            print(f"[{name}] done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    report = table(results, info, argv)
    print(report)
    out = Path(args.out) if args.out else default_out(info, args, cases)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "argv": argv,
               "machine": info, "cases": results, "table": report}
    # the commands as a reader would type them: no path of this machine in a results file
    text = json.dumps(payload, indent=2, default=str).replace(sys.executable, "python")
    out.write_text(text.replace(f"{ROOT}/", "") + "\n")
    print(f"\nWrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
