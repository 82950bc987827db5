"""The measured tables in README.md and docs/*.md, generated from the results files they cite,
so that a table cannot drift from its file:

    python -m benchmarks.docs_tables            # rewrite every table block in place
    python -m benchmarks.docs_tables --check    # exit 1 naming each block that differs

A block is whatever stands between its two markers:

    <!-- table: benchmarks/results/FILE.json [cases=seed,data] -->
    ... generated ...
    <!-- end table -->

FILE is a `python -m benchmarks` results file (its `--show` table; `cases=` keeps only those
cases), a `python -m benchmarks.serve_load` one or a `benchmarks.serve_lifecycle` one.
`<!-- table: candidates FILE.jsonl -->` is a `benchmarks.recipe_sweep` screen of candidate recipes,
`<!-- table: phases FILE.jsonl -->` a `benchmarks/probes/phases.py` before/after.
`<!-- table: headline -->` is the README's three-recipe table (HEADLINE below names its files). Prose around a block is not checked:
it should read the table, not copy its figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from benchmarks.__main__ import show
from benchmarks.common import machine_line, med
from fmnist.recipes import Recipe, traits

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("README.md", "docs/*.md", "benchmarks/results/*.md")
# a marker stands alone on its line (a mention inside a sentence is not one)
BLOCK = re.compile(r"^(<!-- table: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)^(<!-- end table -->)$",
                   re.S | re.M)

RESULTS = "benchmarks/results/"
# The README's table: quickstart from the seed case on the avx2 EPYC (beside the Quickstart
# program itself; the class most laptops and VMs have); default from its three seeds on the same
# machine (the mean and the range, not the best); best from its own training run's metrics,
# whose file records no machine: it ran on a 2-core Intel Xeon (class amx).
HEADLINE = {
    "seed": RESULTS + "2026-12-07-amd-epyc-2c-seed-avx2.json",
    "default_seeds": RESULTS + "2026-11-28-amd-epyc-2c-default-seeds.jsonl",
    "best": RESULTS + "2026-11-27-intel-xeon-2c-best-b128-metrics.jsonl",
    "best_machine": "2-core Intel Xeon (CPU class amx)",
}


def link(target: str, page: Path) -> str:
    """A markdown link to `target` (relative to the repository root) from `page`."""
    rel = os.path.relpath(ROOT / target, (ROOT / page).parent)
    return f"[`{Path(target).name}`]({rel})"


def results_block(spec: list[str], page: Path) -> str:
    path, options = spec[0], dict(o.split("=", 1) for o in spec[1:])
    cases = options["cases"].split(",") if "cases" in options else None
    lines = show(str(ROOT / path), cases=cases, commands=False).splitlines()
    # the file's machine and command lines, as a list so they do not run into one paragraph
    machine, command, rest = lines[0], lines[1], lines[2:]
    command = re.sub(r"`([^`]*)`", lambda m: f"`{portable(m[1])}`", command)
    # the aims a case is checked against are the benchmark's business, not the reader's
    rest = [re.sub(r" \(target [^)]*\)", "", line) for line in rest]
    return "\n".join([f"- {machine}", f"- {command}", f"- Results: {link(path, page)}", *rest])


def default_recipe(seed: dict) -> str:
    """What the seed case's `fmnist train` ran, from the config.json it recorded (files from
    before it did ran the 6-epoch default of the time)."""
    recipe = seed["cases"]["seed"]["runs"]["default"][0].get("recipe", {"epochs": 6})
    ran = Recipe(whiten=bool(recipe.get("whiten")), model_config=recipe.get("model_config", {}))
    muon = ["its conv filters trained by Muon"] if recipe.get("optimizer") == "muon" else []
    return ", ".join(["a small cnn", *(f"its {t}" for t in traits(ran)), *muon,
                      f"{recipe['epochs']} epochs"])


def jsonl(path: str) -> list[dict]:
    return [json.loads(x) for x in (ROOT / path).read_text().splitlines() if x.strip()]


def headline_block(page: Path) -> str:
    seed = json.loads((ROOT / HEADLINE["seed"]).read_text())
    wall, acc = seed["cases"]["seed"]["summary"]["wall_s"], seed["cases"]["seed"]["summary"]["accuracy"]
    m = seed["machine"]
    seed_cpu = f"{m['cores']}-core {m['cpu']} (CPU class {m['cpu_class']})"
    seeds = jsonl(HEADLINE["default_seeds"])
    accs = sorted(100 * r["test_accuracy"] for r in seeds)
    walls = sorted(r["wall_s"] for r in seeds)
    best = jsonl(HEADLINE["best"])
    last = best[-1]
    rows = [
        ("`quickstart`: the Quickstart's exact network and training",
         f"{100 * acc['fmnist']:.2f} %",
         f"{wall['fmnist']:.1f} s for the whole command (the Quickstart program: "
         f"{wall['reference']:.1f} s)", seed_cpu),
        (f"`default`: {default_recipe(seed)}",
         f"{sum(accs) / len(accs):.2f} % (seeds {', '.join(str(r['seed']) for r in seeds)}: "
         f"{accs[0]:.2f}-{accs[-1]:.2f} %)",
         f"{walls[len(walls) // 2]:.0f} s for the whole command ({walls[0]:.0f}-{walls[-1]:.0f} s)",
         seed_cpu),
        (f"`best`: a wider cnn, {last['epoch']} epochs", f"{100 * last['test_accuracy']:.2f} %",
         f"{last['train_seconds']:.0f} s of training (about {last['train_seconds'] / 60:.0f} min)",
         HEADLINE["best_machine"]),
    ]
    return "\n".join([
        "| recipe | test accuracy | time | measured on |",
        "| --- | ---: | --- | --- |",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
        f"From {link(HEADLINE['seed'], page)} (`quickstart`: its fixed order gives the same "
        f"accuracy every run; the time is the median of {len(seed['cases']['seed']['runs']['fmnist'])}), "
        f"{link(HEADLINE['default_seeds'], page)} (`default`: the mean of its seeds, their range, "
        f"the median time) and {link(HEADLINE['best'], page)} (`best`: one seed).",
    ])


def portable(command: str) -> str:
    """A recorded command as a reader can type it: no paths of the machine it ran on (a
    repository file from its root, a temporary folder by what it holds) and options by their
    current names."""
    words = command.split()
    for i, word in enumerate(words):
        kind, _, path = word.rpartition(":") if ":/" in word else ("", "", word)
        if not path.startswith("/"):
            continue
        if "/benchmarks/" in path:
            path = "benchmarks/" + path.split("/benchmarks/", 1)[1]
        else:
            path = "OUT" if words[i - 1] == "--out" else "DIR"
        words[i] = f"{kind}:{path}" if kind else path
    renamed = {"--budget": "--time-budget"}  # fmnist sweep's first name for it
    return " ".join(renamed.get(w, w) for w in words)


def sweep_block(path: str, page: Path) -> str:
    """A `python -m benchmarks.sweep_vs_default` file: the sweep, then winner vs default per seed."""
    r = json.loads((ROOT / path).read_text())
    states = [t["state"] for t in r["trials"]]
    length = f"{r['epochs']} epochs" if r.get("epochs") else f"{r['trial_budget']} time budget"
    data = ("an image folder of classes {}, {} images each".format(*r["folder"].split(":"))
            if r.get("folder")
            else f"the first {r['subset']:,} training images" if r.get("subset")
            else "all 60,000 training images")
    changed = ", ".join(f"{k} {v['recipe']:.3g} -> {v['best']:.3g}"
                        if isinstance(v["best"], float) else f"{k} {v['recipe']} -> {v['best']}"
                        for k, v in r["best"].get("changed", {}).items())
    second = r.get("objective", "accuracy").partition(",")[2]
    if second:
        return front_block(r, path, page, second, states, data)
    rows = []
    for who, label in (("default", "default recipe"), ("winner", "sweep's winner")):
        runs, summary = r["runs"][who], r["summary"][who]
        seeds = " / ".join(f"{100 * x['test_accuracy']:.2f}" if "test_accuracy" in x else "failed"
                           for x in runs)
        rows.append(f"| {label} | {seeds} % | {100 * summary['mean']:.2f} ± "
                    f"{100 * summary['std']:.2f} % |")
    return "\n".join([
        machine_bullet(r),
        f"- Sweep: `{portable(r['commands'][0].split(' -m ', 1)[1])}`: {len(states)} trials "
        f"({states.count('complete')} complete, {states.count('pruned')} pruned, "
        f"{states.count('failed')} failed) in {r['sweep_seconds'] / 60:.1f} min, on {data}; "
        f"best trial {r['best']['trial']} ({100 * r['best']['validation_accuracy']:.2f} % on the validation split)"
        + (f": {changed}" if changed else ""),
        *recipe_line(r),
        f"- Results: {link(path, page)}",
        "",
        f"| {length} per run | test accuracy, seeds 0 / 1 / 2 | mean ± std |",
        "| --- | --- | --- |",
        *rows,
    ])


def machine_bullet(r: dict) -> str:
    """The machine, and the torch threads every run was given where that was not the default."""
    n = r.get("threads")
    threads = f"; every run at {n} torch thread{'s' if n != 1 else ''}" if n else ""
    return (f"- {machine_line(r['machine'])}; load average {r['load_before'][0]:.1f} before, "
            f"{r['load_after'][0]:.1f} after{threads}")


def recipe_line(r: dict) -> list[str]:
    """The recipe's own settings, the sweep's first trial, beside the winner (newer files)."""
    own = r.get("recipe_trial")
    if not own or own.get("validation_accuracy") is None:
        return []
    return [f"- The recipe's own settings (trial {own['trial']}, the first): "
            f"{100 * own['validation_accuracy']:.2f} % on the validation split; the winner "
            f"{100 * r['best']['validation_accuracy']:.2f} %"]


def front_block(r: dict, path: str, page: Path, second: str, states: list[str], data: str) -> str:
    """A sweep with a second objective: its Pareto front, and the final run of its most
    accurate point."""
    unit = {"latency": "ms per image", "params": "parameters"}[second]
    lines = [
        machine_bullet(r),
        f"- Sweep: `{portable(r['commands'][0].split(' -m ', 1)[1])}`: {len(states)} trials "
        f"({states.count('complete')} complete, {states.count('failed')} failed) in "
        f"{r['sweep_seconds'] / 60:.1f} min, on {data}",
        f"- The final run (the front's most accurate point, trial {r['best']['trial']}): "
        f"{100 * r['runs']['winner'][0]['test_accuracy']:.2f} % test accuracy",
        f"- Results: {link(path, page)}",
        "",
        f"| trial on the front | validation accuracy | {unit} | settings |",
        "| --- | --- | --- | --- |",
    ]
    for point in r["best"]["front"]:
        value = point[second]
        shown = f"{value:.3f}" if second == "latency" else f"{value:,.0f}"
        settings = ", ".join(f"{k.removeprefix('model_config.')} {v:.3g}" if isinstance(v, float)
                             else f"{k.removeprefix('model_config.')} {v}"
                             for k, v in point["values"].items())
        lines.append(f"| {point['trial']} | {100 * point['validation_accuracy']:.2f} % | "
                     f"{shown} | {settings} |")
    return "\n".join(lines)


def screen_block(paths: list[str], page: Path) -> str:
    """`benchmarks/probes/default_screen.py screen` rows: each candidate's test accuracy per
    seed and its mean under three test-time augmentations, best first."""
    rows = [json.loads(x) for path in paths for x in (ROOT / path).read_text().splitlines() if x.strip()]
    by_name: dict[str, list[dict]] = {}
    for row in rows:
        by_name.setdefault(row["name"], []).append(row)
    base = json.loads((ROOT / "benchmarks/probes/screen_base.json").read_text())

    def mean(runs: list[dict], key: str) -> float:
        return sum(r[key] for r in runs) / len(runs)

    def shifts(runs: list[dict]) -> str:  # a CPU screen evaluates no shifted views
        return f"{mean(runs, 'flip_sx'):.2f} %" if all("flip_sx" in r for r in runs) else "—"

    def changes(cfg: dict) -> str:
        return ", ".join(f"{k} {json.dumps(v)}" for k, v in cfg.items()
                         if k != "seed" and v != base.get(k)) or "—"

    lines = ["| candidate | changes from the default of the time | flip TTA, seeds 0 / 1 / 2 (+ seed_offset) | mean | "
             "no TTA | flip + shifts |", "| --- | --- | --- | ---: | ---: | ---: |"]
    for name, runs in sorted(by_name.items(), key=lambda kv: -mean(kv[1], "flip")):
        runs.sort(key=lambda r: r["cfg"]["seed"] + r["cfg"].get("seed_offset", 0))
        seeds = " / ".join(f"{r['flip']:.2f}" for r in runs)
        lines.append(f"| {name} | {changes(runs[0]['cfg'])} | {seeds} | {mean(runs, 'flip'):.2f} % | "
                     f"{mean(runs, 'none'):.2f} % | {shifts(runs)} |")
    return "\n".join([*lines, "", "From " + " and ".join(link(p, page) for p in paths) + "."])


def candidates_block(path: str, page: Path) -> str:
    """`benchmarks.recipe_sweep` rows: each candidate's test accuracy per seed, its mean and
    its training cost (images/s and seconds, medians over its seeds), most accurate first."""
    rows = [r for r in jsonl(path) if r.get("test_accuracy") is not None]
    by_name: dict[str, list[dict]] = {}
    for row in rows:
        by_name.setdefault(row["candidate"], []).append(row)

    def mean(runs: list[dict]) -> float:
        return 100 * sum(r["test_accuracy"] for r in runs) / len(runs)

    lines = ["| candidate | changes from the default | seeds | test accuracy per seed | mean | "
             "images/s | training seconds |", "| --- | --- | ---: | --- | ---: | ---: | ---: |"]
    for name, runs in sorted(by_name.items(), key=lambda kv: -mean(kv[1])):
        runs.sort(key=lambda r: r["seed"])
        changes = ", ".join(f"{k} {json.dumps(v)}" for k, v in runs[0]["overrides"].items()) or "—"
        seeds = " / ".join(f"{100 * r['test_accuracy']:.2f}" for r in runs)
        speed, seconds = (med([r.get(k) for r in runs]) for k in ("images_per_s", "train_seconds"))
        lines.append(f"| {name} | {changes} | {len(runs)} | {seeds} | {mean(runs):.2f} % | "
                     f"{'—' if speed is None else f'{speed:,.0f}'} | {seconds:.0f} |")
    first = rows[0]
    flags = " ".join(first.get("flags", []))
    commands = sorted({r.get("command") or f"fmnist train --config CANDIDATE --seed S --bf16 off {flags}"
                       for r in rows})
    return "\n".join([f"- {machine_line(first['machine'])}",
                      f"- Each run: {', '.join(f'`{c}`' for c in commands)}",
                      f"- Results: {link(path, page)}", "", *lines])


def phases_block(path: str, page: Path) -> str:
    """`benchmarks/probes/phases.py` rows, before and after a change: each phase's seconds, the
    median of each side's runs."""
    rows = jsonl(path)
    sides = {code: [r for r in rows if r["code"] == code] for code in ("before", "after")}
    lines = ["| phase | before | after |", "| --- | ---: | ---: |"]
    for phase in rows[0]["seconds"]:
        cells = [med([r["seconds"].get(phase) for r in runs]) for runs in sides.values()]
        lines.append(f"| {phase} | " + " | ".join("—" if c is None else f"{c:.2f} s" for c in cells) + " |")
    runs = ", ".join(f"{len(v)} {k}" for k, v in sides.items())
    return "\n".join([f"- {rows[0]['machine']}", f"- `{rows[-1]['command']}`, {runs}, alternating; "
                      "medians", f"- Results: {link(path, page)}", "", *lines])


def render(spec: str, page: Path) -> str:
    words = spec.split()
    if words == ["headline"]:
        body = headline_block(page)
    elif words[0] == "phases":
        body = phases_block(words[1], page)
    elif words[0] == "candidates":
        body = candidates_block(words[1], page)
    elif words[0] == "screen":
        body = screen_block(words[1:], page)
    elif "sweep-vs-default" in words[0]:
        body = sweep_block(words[0], page)
    else:
        body = results_block(words, page)
    return body + "\n"


def pages() -> list[Path]:
    return sorted({p.relative_to(ROOT) for pattern in PAGES for p in ROOT.glob(pattern)})


def update(page: Path) -> tuple[str, list[str]]:
    """`page`'s text with every block regenerated, and the specs of the blocks that changed."""
    text = (ROOT / page).read_text()
    changed: list[str] = []

    def fill(m: re.Match[str]) -> str:
        body = render(m["spec"], page)
        if body != m["body"]:
            changed.append(m["spec"])
        return m[1] + body + m[4]

    return BLOCK.sub(fill, text), changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.docs_tables", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true",
                   help="change nothing; exit 1 if a table differs from its results file")
    args = p.parse_args(argv)
    stale = []
    for page in pages():
        text, changed = update(page)
        stale += [f"{page}: the table of {spec}" for spec in changed]
        if changed and not args.check:
            (ROOT / page).write_text(text)
    for line in stale:
        print(("differs from its results file: " if args.check else "regenerated: ") + line)
    if args.check and stale:
        print("Run `python -m benchmarks.docs_tables` to regenerate them.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
