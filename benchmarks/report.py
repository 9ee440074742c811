"""Copy a benchmark report's results into docs/benchmark.md (between the results markers).

    python benchmarks/report.py REPORT_DIR [--docs docs/benchmark.md] [--command "polarstem benchmark ..."]

The report's sections (everything after its title) replace the block between ``<!-- results:begin -->`` and
``<!-- results:end -->``; figure links point into REPORT_DIR (relative to the docs page), so the numbers in
the docs are always the ones a run produced, never retyped.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def splice(report_dir: Path, docs: Path, command: str | None, figures: bool = True) -> None:
    md = (report_dir / "report.md").read_text()
    body = md.split("\n", 1)[1] if md.startswith("# ") else md
    if not figures:  # the report folder is not part of the repository: keep the numbers, drop the images
        body = "\n".join(line for line in body.splitlines() if not line.startswith("!["))
    rel = Path(os.path.relpath(report_dir.resolve(), docs.parent.resolve()))
    body = re.sub(r"!\[([^\]]*)\]\(([^)/]+\.png)\)", lambda m: f"![{m.group(1)}]({(rel / m.group(2)).as_posix()})", body)
    body = body.replace("\n## ", "\n### ").replace("\n### ### ", "\n#### ")
    head = ["## Results on this machine", ""]
    if command:
        head += ["Regenerate with:", "", f"    {command}", ""]
    text = docs.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"{docs}: no {BEGIN} ... {END} block")
    pre, rest = text.split(BEGIN, 1)
    _, post = rest.split(END, 1)
    docs.write_text(pre + BEGIN + "\n" + "\n".join(head) + "\n" + body.strip() + "\n" + END + post)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report_dir", type=Path)
    ap.add_argument("--docs", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "benchmark.md")
    ap.add_argument("--command", default="OMP_NUM_THREADS=1 polarstem benchmark configs/benchmark/full.yaml -o .cache/benchmark")
    ap.add_argument("--no-figures", action="store_true", help="leave out the figure links")
    args = ap.parse_args()
    splice(args.report_dir, args.docs, args.command, figures=not args.no_figures)


if __name__ == "__main__":
    main()
