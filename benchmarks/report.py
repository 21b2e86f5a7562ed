#!/usr/bin/env python3
"""README tables from a run_all.py result file, never by hand.

    python benchmarks/report.py benchmarks/results/<date>-quick.json   # rewrites README.md

Each benchmark's block in README.md lies between ``<!-- bench:NAME -->`` and
``<!-- /bench:NAME -->``; this replaces what is between them with the tables,
notes and ratios of that benchmark in the given file (the command that reran it,
the machine, the spread), and leaves everything else as it is.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import benchlib as bl

README = bl.REPO / "README.md"


def machine_line(m: dict) -> str:
    v = m.get("versions", {})
    soft = ", ".join(f"{k} {v[k]}" for k in ("python", "numpy", "faiss", "pyspark", "torch")
                     if k in v)  # fmt: skip
    return (f"{m.get('cores')} cores ({m.get('cpu')}), {m.get('mem_gib')} GiB, {soft}; "
            f"load average {m.get('load_avg_at_start')} at the start, "
            f"OMP_WAIT_POLICY={m.get('omp_wait_policy')}, {m.get('date')}")  # fmt: skip


def render(name: str, res: dict, source: str) -> str:
    lines = [(f"Rerun: `{res.get('command', '?')}` (from `python benchmarks/run_all.py "
             f"--{res.get('mode')}`; result file `{source}`).")]  # fmt: skip
    if res.get("error"):
        return "\n".join(lines + ["", f"**Not measured in this run**: {res['error']}"])
    if res.get("skipped"):
        return "\n".join(lines + ["", f"**Skipped in this run**: {res['skipped']}"])
    lines += ["", f"Measured on {machine_line(res['machine'])}."]
    for t in res.get("tables", []):
        lines += ["", f"*{t['title']}*", "", bl.markdown(t)]
    if res.get("ratios"):
        lines += ["", "Ratios of medians:", ""]
        lines += [f"- {r['name']} = {bl.fmt(r['value'], 2)} ({r['meaning']})"
                  for r in res["ratios"]]  # fmt: skip
    if res.get("notes"):
        lines += [""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines)


def update_readme(result_path: Path, readme: Path = README) -> None:
    data = json.loads(Path(result_path).read_text())
    text = readme.read_text()
    try:
        source = str(Path(result_path).resolve().relative_to(bl.REPO))
    except ValueError:
        source = str(result_path)
    for name, res in data["benchmarks"].items():
        pat = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.DOTALL)
        if not pat.search(text):
            print(f"report: README has no <!-- bench:{name} --> block", file=sys.stderr)
            continue
        body = render(name, res, source)
        text = pat.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), text)
    summary = (f"Figures from `{source}` ({data['mode']} run, {data['wall_s']:.0f} s): "
               f"{machine_line(data['machine'])}.")  # fmt: skip
    pat = re.compile(r"(<!-- bench:summary -->\n).*?(<!-- /bench:summary -->)", re.DOTALL)
    text = pat.sub(lambda m: m.group(1) + summary + "\n" + m.group(2), text)
    readme.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("result", help="a run_all.py JSON file")
    ap.add_argument("--readme", default=str(README))
    args = ap.parse_args()
    update_readme(Path(args.result), Path(args.readme))
    return 0


if __name__ == "__main__":
    sys.exit(main())
