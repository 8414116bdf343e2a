"""`effort bench router`: the per-request cost of the router + policy, against the policy without a router."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from effort_server.contract.scoring import Router


@dataclass
class RouterBenchConfig:
    router: str = field(default="adapters/router", metadata={"help": "router folder"})
    adapter_dir: str = field(default="", metadata={"help": "adapters folder (default: the repo's adapters/)"})
    prompts: str = field(
        default="", metadata={"help": 'JSONL of {"question": ...} (default: the embedded model\'s prompts.jsonl)'}
    )
    n: int = field(default=2000, metadata={"help": "timed decisions per scenario"})
    long_chars: int = field(default=4000, metadata={"help": "length of the long-prompt scenario"})

    def __post_init__(self):
        if self.n < 10 or self.long_chars < 1:
            raise ValueError("--n must be >= 10 and --long-chars >= 1")


def run_router_bench(cfg: RouterBenchConfig) -> list[dict]:
    """Per-request cost of router + policy, against the policy without a router (the peer: what
    every request pays anyway), in the same run on the same prompts. Prints a table."""
    from effort_server.server.config import ServerSettings
    from effort_server.server.engine import default_adapter_dir
    from effort_server.server.policy import Policy
    from effort_server.server.registry import scan
    from effort_server.server.routes import History

    from .bench import load_prompts

    router = Router.load(cfg.router)
    adapters = scan([cfg.adapter_dir or default_adapter_dir()])
    s = ServerSettings()
    plain = Policy(s, adapters, "base", 81)
    routed = Policy(s, adapters, "base", 81, router, History(s.router_history))
    short = load_prompts(cfg.prompts, 200)
    long_ = [("Consider the following carefully. " * 200)[: cfg.long_chars] + q for q in short]
    rows = []
    for label, prompts in (("task prompts", short), (f"{cfg.long_chars}-char prompts", long_)):
        for name, pol, effort in (
            ("no router, effort 0.5 (peer)", plain, 0.5),
            ("router, effort 0.5", routed, 0.5),
            ("router, auto", routed, "auto"),
        ):
            times = []
            for i in range(cfg.n):
                t = time.perf_counter()
                pol.decide(model=None, effort=effort, max_tokens=512, prompt=prompts[i % len(prompts)])
                times.append(time.perf_counter() - t)
            ms = np.array(times) * 1e3
            rows.append(
                {
                    "prompts": label,
                    "policy": name,
                    "p50_ms": float(np.median(ms)),
                    "p99_ms": float(np.percentile(ms, 99)),
                }
            )
    print("| prompts | policy | p50 (ms) | p99 (ms) | added p50 vs peer (ms) |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        peer = next(x for x in rows if x["prompts"] == r["prompts"] and "peer" in x["policy"])
        print(
            f"| {r['prompts']} | {r['policy']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
            f"{r['p50_ms'] - peer['p50_ms']:.3f} |"
        )
    return rows
