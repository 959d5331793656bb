"""KL per epoch of several runs in one chart (the seed's Figure 3), drawn by vaecli.render.plot.line_chart.

python scripts/kl_chart.py RUN [RUN ...] -o kl.png [--split train|test] [--label RUN=TEXT ...]
"""

from __future__ import annotations

import argparse

from vaecli.render.plot import line_chart
from vaecli.runs import store as ckpt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--split", default="train", choices=("train", "test"))
    ap.add_argument("--label", action="append", default=[], help="RUN=TEXT legend label")
    args = ap.parse_args()
    labels = dict(item.split("=", 1) for item in args.label)
    series = {}
    for ref in args.runs:
        path = ckpt.resolve_run(ref)
        rows = sorted((r for r in ckpt.read_metrics(path) if not r.get("partial")), key=lambda r: r["epoch"])
        series[labels.get(ref, path.name)] = ([float(r["epoch"]) for r in rows], [float(r[args.split]["kl"]) for r in rows])
    line_chart(args.output, series, title=f"KL divergence per epoch ({args.split})", xlabel="epoch", ylabel="KL (nats / image)")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
