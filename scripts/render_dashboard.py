"""Render the Grafana dashboard's panels from a real Prometheus into one PNG (the README's
dashboard picture): every target of deploy/grafana/effort.json is queried over the last
`--minutes` through Prometheus' range API and drawn as the dashboard lays it out.

    python scripts/render_dashboard.py --prometheus http://127.0.0.1:9090 --out deploy/grafana/dashboard.png
"""

import argparse
import json
import math
import time
from pathlib import Path

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def legend(fmt: str, labels: dict) -> str:
    out = fmt
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--out", default=str(REPO / "deploy" / "grafana" / "dashboard.png"))
    ap.add_argument("--minutes", type=float, default=5)
    ap.add_argument("--end", type=float, default=None, help="unix time the window ends (default: now)")
    ap.add_argument("--rate", default="30s", help="what $__rate_interval becomes")
    args = ap.parse_args()
    dash = json.loads((REPO / "deploy" / "grafana" / "effort.json").read_text())
    panels = dash["panels"]
    end = args.end or time.time()
    start = end - 60 * args.minutes
    rows = math.ceil(len(panels) / 2)
    fig, axes = plt.subplots(rows, 2, figsize=(14, 2.6 * rows), dpi=90)
    fig.patch.set_facecolor("#111217")
    for ax, panel in zip(axes.flat, panels):
        ax.set_facecolor("#181b1f")
        ax.set_title(panel["title"], color="#ccccdc", fontsize=9, loc="left")
        ax.tick_params(colors="#8e8e9e", labelsize=7)
        for sp in ax.spines.values():
            sp.set_color("#2c3235")
        ax.grid(color="#2c3235", linewidth=0.5)
        for t in panel["targets"]:
            q = t["expr"].replace("$__rate_interval", args.rate)
            r = httpx.get(
                f"{args.prometheus}/api/v1/query_range", params={"query": q, "start": start, "end": end, "step": 5}
            ).json()
            for series in r["data"]["result"][:8]:
                xs = [(float(x) - end) / 60 for x, _ in series["values"]]
                ys = [float(y) for _, y in series["values"]]
                ax.plot(xs, ys, linewidth=1.2, label=legend(t.get("legendFormat", ""), series["metric"]))
        if ax.lines:
            ax.legend(fontsize=6, loc="upper left", facecolor="#181b1f", labelcolor="#ccccdc", framealpha=0.7)
        ax.set_xlabel("minutes", color="#8e8e9e", fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle("effort-server (deploy/grafana/effort.json, data from Prometheus)", color="#ccccdc")
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(args.out, facecolor=fig.get_facecolor())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
