"""`effort eval`: accuracy vs reasoning tokens for adapters × effort settings, through vLLM.

Runs an eval set through vLLM's offline engine (built with the serving settings) and writes
``results.json`` (every per-prompt result), ``results.md`` (accuracy, mean / p90 reasoning tokens,
answer tokens, tokens per correct answer, budget-hit rate, by difficulty) and ``plot.png``.
Settings (``--settings``, comma-separated, each for every adapter, or ``adapter@setting``):
``full``, ``none``, ``budget:K``, ``frac:F`` (F × the prompt's own measured full length),
``control:V`` (e1's raw control value), ``route:E`` (the primitive route the policy runs at
effort E), ``effort:E`` and ``auto`` (exactly the server's per-prompt decision, the same
`Policy`). Reasoning tokens are counted by the contract's split, as the server counts them.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from effort_server.server.engine import EngineSettings

from effort_server.contract.prompt import chat_ids


@dataclass(frozen=True)
class Setting:
    kind: str  # full | none | auto | budget | frac | effort | control
    value: float | None = None

    @property
    def label(self) -> str:
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"

    @classmethod
    def parse(cls, text: str) -> "Setting":
        text = text.strip()
        if text in ("full", "none", "auto"):
            return cls(text)
        kind, _, val = text.partition(":")
        if kind not in ("budget", "frac", "effort", "route", "control") or not val:
            raise ValueError(
                f"unknown setting {text!r}: use full, none, auto, budget:K, frac:F, effort:E, route:E or control:E"
            )
        try:
            v = float(val)
        except ValueError:
            raise ValueError(f"setting {text!r}: {val!r} is not a number") from None
        if kind == "budget" and (v < 0 or v != int(v)):
            raise ValueError(f"setting {text!r}: a thinking budget must be an integer >= 0")
        if kind in ("frac", "effort", "route", "control") and not 0 <= v <= 1:
            raise ValueError(f"setting {text!r}: a fraction must be in [0, 1]")
        return cls(kind, v)


@dataclass
class EvalConfig:
    model: str = field(default="", metadata={"help": "model folder (default: the embedded model)"})
    adapters: str = field(
        default="base",
        metadata={"help": "comma list: 'base' and/or adapter names in --adapter-dir or adapter folders"},
    )
    adapter_dir: str = field(
        default="", metadata={"help": "folder of registered adapters (default: the repo's adapters/)"}
    )
    settings: str = field(
        default="full",
        metadata={
            "help": "comma list of full, none, auto, budget:K, frac:F, effort:E, route:E, control:E; ADAPTER@SETTING applies a setting to one adapter only"
        },
    )
    router: str = field(
        default="",
        metadata={
            "help": "router folder for auto, effort:E and route:E (default: <adapter-dir>/router when present; 'none': no router)"
        },
    )
    task: str = field(default="digits", metadata={"help": "task name (digits) or a JSONL file of question/answer"})
    split: str = field(default="test", metadata={"help": "task split (train, dev, test)"})
    n: int = field(default=500, metadata={"help": "number of prompts"})
    seed: int = field(
        default=0,
        metadata={
            "help": "eval-set seed; with --temperature > 0 each prompt samples from its own seed, derived from this and the prompt id"
        },
    )
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature (0 = greedy)"})
    samples: int = field(default=1, metadata={"help": "samples per prompt"})
    max_tokens: int = field(default=512, metadata={"help": "max generated tokens per sample"})
    out: str = field(default="eval-out", metadata={"help": "output folder for results.json, results.md, plot.png"})
    max_model_len: int = field(default=1024, metadata={"help": "engine max model length"})

    def __post_init__(self):
        if self.n < 1 or self.samples < 1 or self.max_tokens < 1:
            raise ValueError("--n, --samples and --max-tokens must be >= 1")
        if self.temperature < 0:
            raise ValueError("--temperature must be >= 0")
        self.parsed_settings: list[tuple[str | None, Setting]] = []
        for item in (x.strip() for x in self.settings.split(",")):
            if item:
                only, _, text = item.rpartition("@")
                self.parsed_settings.append((only or None, Setting.parse(text)))
        if not self.parsed_settings:
            raise ValueError("--settings is empty")


def lookup_adapter(spec: str, adapter_dir: str):
    """'base' → None; a registered adapter name or an adapter folder → registry.Adapter.
    Needs no engine, so a bad name fails before vLLM starts."""
    from effort_server.server.engine import default_adapter_dir
    from effort_server.server.registry import Adapter, load_adapter, scan

    from effort_server.contract.manifest import ManifestError

    if spec == "base":
        return None
    adapter_dir = adapter_dir or default_adapter_dir()
    registry = scan([adapter_dir]) if Path(adapter_dir).is_dir() else {}
    if spec in registry:
        return registry[spec]
    path = Path(spec)
    if not path.exists():
        known = ", ".join(["base", *registry]) or "base"
        raise ManifestError(f"unknown adapter {spec!r}: not a folder and not registered in {adapter_dir} ({known})")
    m = load_adapter(path)
    return Adapter(m.name, path.resolve(), m, lora_id=1000 + len(registry))


def sample_seed(seed: int, key: str) -> int:
    """The sampling seed of one prompt: `seed` and the prompt's id hashed to 31 bits."""
    return int.from_bytes(hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=4).digest(), "big") >> 1


class Evaluator:
    """Holds one offline vLLM engine; `run` evaluates problems under (adapter, setting) pairs."""

    def __init__(self, model: str = "", max_model_len: int = 1024, think: tuple[str, str, str] = ("", "", "")):
        """`max_model_len` 0: the model's own (see engine.model_len); `think`: the markers given as
        (start, end, reasoning-parser name), as `effort serve` takes them; by default the
        manifest's, else those found in the tokenizer."""
        from effort_server.server.engine import default_model, engine_kwargs, prepare_env
        from effort_server.server.lifecycle import model_manifest

        from effort_server.contract.markers import Markers

        prepare_env()
        from vllm import LLM

        settings = EngineSettings(model=model, max_model_len=max_model_len)
        self.model_path = model or default_model()
        self.manifest, self.measured = model_manifest(self.model_path, *think)
        self.think = (self.manifest.think_start, self.manifest.think_end)
        self.llm = LLM(**engine_kwargs(settings, *self.think))
        self.tokenizer = self.llm.get_tokenizer()
        self.markers = Markers.from_tokenizer(self.tokenizer, *self.think)
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len

    def _lora_id(self, adapter) -> int:
        """vLLM's integer id for an adapter's weights in this engine. vLLM caches a LoRA by that id
        for the engine's life, so it is unique per folder and file version here: adapters of
        different registries (each numbering from 1) and a folder rewritten in place never share
        one, which would run the first-loaded weights."""
        f = Path(adapter.path) / "adapter_model.safetensors"
        key = (str(Path(adapter.path).resolve()), f.stat().st_mtime_ns if f.exists() else 0)
        ids = self.__dict__.setdefault("_lora_ids", {})
        return ids.setdefault(key, len(ids) + 1)

    def prompt_ids(self, question: str, manifest=None, effort: float = 1.0) -> list[int]:
        """The chat prompt; an adapter with an effort control gets `effort` written in."""
        return chat_ids(self.tokenizer, question, control=manifest.control if manifest else None, effort=effort)

    def generate(
        self,
        problems,
        task,
        adapter,
        budgets,
        temperature=0.0,
        samples=1,
        max_tokens=512,
        seed=0,
        effort: float | list[float] = 1.0,
        keep_ids: bool = False,
        seed_per_prompt: bool = True,
    ):
        """One result dict per (problem, sample). `budgets`: per-problem int or None; `effort`: one
        for all or per problem; `keep_ids`: add the completion's token ids (``token_ids``).

        Sampling is seeded per problem, from `seed` and the problem's id (`sample_seed`): the
        draws of one prompt do not depend on what else is in the batch, and different prompts
        draw independently. With one seed on every request, sample j of each prompt used the same
        random numbers, so a mean over prompts kept the draw's luck: the e1 reference length (the
        upper quartile of 8 samples) moved the same adapter's realised ratio at effort 0.25 from
        0.349 to 0.382 between two seeds on 500 prompts. `seed_per_prompt=False` keeps that one
        seed (the e1 warm-up's draw, as its shipped adapter was trained)."""
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        from effort_server.contract.markers import open_thinking, split_ids

        lora = LoRARequest(adapter.name, self._lora_id(adapter), str(adapter.path)) if adapter else None
        manifest = adapter.manifest if adapter else None
        prompts, params, carried = [], [], []
        efforts = effort if isinstance(effort, list) else [effort] * len(problems)
        for p, b, e in zip(problems, budgets, efforts):
            ids = self.prompt_ids(p.question, manifest, e)
            # a prompt that opened the thinking (R1 distills): vLLM counts its open tokens against the budget
            carried.append(open_thinking(ids, self.markers))
            prompts.append({"prompt_token_ids": ids})
            params.append(
                SamplingParams(
                    temperature=temperature,
                    n=samples,
                    max_tokens=max_tokens,
                    seed=sample_seed(seed, p.id) if seed_per_prompt else seed,
                    thinking_token_budget=-1 if b is None else int(b) + (carried[-1] or 0),
                    skip_special_tokens=False,
                )
            )
        outs = self.llm.generate(prompts, params, lora_request=lora, use_tqdm=True)
        results = []
        for p, b, c, out in zip(problems, budgets, carried, outs):
            for o in out.outputs:
                sp = split_ids(o.token_ids, self.markers, in_think=c is not None)
                answer_text = self.tokenizer.decode(list(sp.answer_ids), skip_special_tokens=True)
                results.append(
                    dict(
                        id=p.id,
                        question=p.question,
                        answer=p.answer,
                        difficulty=p.difficulty,
                        bucket=task.bucket(p),
                        budget=b,
                        reasoning_tokens=sp.reasoning_tokens,
                        answer_tokens=sp.answer_tokens,
                        completion_tokens=len(o.token_ids),
                        thought=sp.started,
                        closed=sp.closed,
                        budget_hit=b is not None and sp.reasoning_tokens >= b,
                        correct=sp.closed and task.grade(answer_text, p),
                        finish_reason=o.finish_reason,
                        reasoning=self.tokenizer.decode(list(sp.reasoning_ids), skip_special_tokens=True),
                        answer_text=answer_text,
                    )
                )
                if keep_ids:
                    results[-1]["token_ids"] = list(o.token_ids)
        return results


def summarize(rows: list[dict]) -> dict:
    import numpy as np

    if not rows:
        return {}
    r = np.array([x["reasoning_tokens"] for x in rows], dtype=float)
    a = np.array([x["answer_tokens"] for x in rows], dtype=float)
    c = np.array([x["correct"] for x in rows], dtype=float)
    budgeted = [x for x in rows if x["budget"] is not None]
    return dict(
        n=len(rows),
        accuracy=float(c.mean()),
        mean_reasoning=float(r.mean()),
        p90_reasoning=float(np.percentile(r, 90)),
        mean_answer=float(a.mean()),
        tokens_per_correct=float((r.sum() + a.sum()) / c.sum()) if c.sum() else float("inf"),
        budget_hit_rate=float(np.mean([x["budget_hit"] for x in budgeted])) if budgeted else 0.0,
    )


BUCKETS = ("all", "easy", "mid", "hard")


def table(groups: dict[tuple[str, str], list[dict]]) -> str:
    lines = [
        "| adapter | setting | difficulty | n | accuracy | mean reasoning | p90 reasoning | mean answer | tokens / correct | budget hit |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (adapter, setting), rows in groups.items():
        for b in BUCKETS:
            sub = rows if b == "all" else [x for x in rows if x["bucket"] == b]
            if not sub:
                continue
            s = summarize(sub)
            lines.append(
                f"| {adapter} | {setting} | {b} | {s['n']} | {100 * s['accuracy']:.1f}% | "
                f"{s['mean_reasoning']:.1f} | {s['p90_reasoning']:.0f} | {s['mean_answer']:.1f} | "
                f"{s['tokens_per_correct']:.1f} | {100 * s['budget_hit_rate']:.0f}% |"
            )
    return "\n".join(lines) + "\n"


def plot(groups: dict[tuple[str, str], list[dict]], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    by_adapter: dict[str, list[tuple[float, float, str]]] = {}
    for (adapter, setting), rows in groups.items():
        s = summarize(rows)
        by_adapter.setdefault(adapter, []).append((s["mean_reasoning"], 100 * s["accuracy"], setting))
    for adapter, pts in by_adapter.items():
        pts.sort()
        if adapter.startswith("auto"):  # the router's choice: one point, drawn on top
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker="*",
                markersize=18,
                linestyle="none",
                label=adapter,
                zorder=5,
                markeredgecolor="black",
            )
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=adapter)
        for x, y, lab in pts:
            ax.annotate(lab, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel("mean reasoning tokens")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or "accuracy vs reasoning tokens")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def eval_policy(cfg: EvalConfig, resolved: dict):
    """The server's policy over the evaluated adapters (server defaults, the router if any)."""
    from effort_server.server.config import ServerSettings
    from effort_server.server.engine import default_adapter_dir, default_model

    from effort_server.contract.manifest import ModelManifest
    from effort_server.contract.scoring import Router

    adapters = {a.name: a for a in resolved.values() if a is not None}
    spec = cfg.router or str(Path(cfg.adapter_dir or default_adapter_dir()) / "router")
    router = None
    if cfg.router != "none" and (cfg.router or (Path(spec) / "router.json").is_file()):
        router = Router.load(spec)
    if router is None and any(s.kind == "auto" for _, s in cfg.parsed_settings):
        raise ValueError("setting auto needs a router: fit one with `effort router fit` and pass --router")
    try:
        manifest = ModelManifest.read(cfg.model or default_model())
    except Exception:
        manifest = None
    from effort_server.server.policy import Policy

    full = manifest.default_full_effort_tokens if manifest is not None else 512
    return Policy(ServerSettings(), adapters, "base", full, router, base_manifest=manifest)


def eval_decided(ev: Evaluator, policy, problems, task, name: str | None, effort, label: str, kw: dict) -> list[dict]:
    """A request with `effort` (a number or "auto") as the server runs it: the policy decides per
    prompt, then each chosen adapter's prompts are generated with their budgets and controls.
    `name`: the adapter the request names (None: the base's name, any adapter)."""
    decisions = [
        policy.decide(model=name, effort=effort, max_tokens=kw["max_tokens"], prompt=p.question) for p in problems
    ]
    by_adapter: dict[str | None, list[int]] = {}
    for i, d in enumerate(decisions):
        by_adapter.setdefault(d.adapter, []).append(i)
    rows: list[dict | None] = [None] * len(problems)
    for adapter_name, idx in by_adapter.items():
        adapter = policy.adapters[adapter_name] if adapter_name else None
        out = ev.generate(
            [problems[i] for i in idx],
            task,
            adapter,
            [decisions[i].thinking_budget for i in idx],
            effort=[decisions[i].control_effort for i in idx],
            **kw,
        )
        per = len(out) // len(idx)
        for j, i in enumerate(idx):
            d = decisions[i]
            rows[i] = out[j * per : (j + 1) * per]
            for r in rows[i]:
                r.update(
                    adapter=label,
                    setting="auto" if effort == "auto" else f"effort:{effort:g}",
                    route=d.predicted["route"],
                    choice=d.choice,
                    spend=d.spend,
                    predicted_tokens=d.predicted["tokens"],
                    predicted_full=d.predicted["full_effort_tokens"],
                    base_full=d.full_effort_tokens,
                )
    return [r for rs in rows for r in rs]


def run_eval(cfg: EvalConfig, evaluator: Evaluator | None = None, task=None) -> dict:
    """Evaluate and write results.json / results.md / plot.png into cfg.out (`task`: the loaded
    cfg.task, when the caller has it)."""
    from effort_server.training.tasks import load_task

    task = task or load_task(cfg.task)
    problems = task.problems(cfg.split, cfg.n, cfg.seed)
    adapters = [a.strip() for a in cfg.adapters.split(",") if a.strip()]
    if not adapters:
        raise ValueError("--adapters is empty")
    resolved = {a: lookup_adapter(a, cfg.adapter_dir) for a in adapters}  # fail before the engine starts
    policy = eval_policy(cfg, resolved)
    ev = evaluator or Evaluator(cfg.model, cfg.max_model_len)
    t0 = time.time()
    groups: dict[tuple[str, str], list[dict]] = {}
    kw = dict(temperature=cfg.temperature, samples=cfg.samples, max_tokens=cfg.max_tokens, seed=cfg.seed)
    for name, adapter in resolved.items():
        full_len: dict[str, float] | None = None
        mine = [s for only, s in cfg.parsed_settings if only in (None, name)]
        for s in sorted(dict.fromkeys(mine), key=lambda s: s.kind != "full"):
            effort: float | list[float] = 1.0
            if s.kind == "control" and (adapter is None or adapter.manifest.control.kind == "none"):
                continue  # no effort control: the same as `full`
            if s.kind in ("auto", "effort"):
                value = "auto" if s.kind == "auto" else float(s.value)
                label = (
                    ("auto" if adapter is None else f"auto@{name}")
                    if s.kind == "auto"
                    else ("server" if adapter is None else name)
                )
                groups[(label, s.label)] = eval_decided(
                    ev, policy, problems, task, adapter.name if adapter else None, value, label, kw
                )
                continue
            if s.kind == "full":
                budgets = [None] * len(problems)
            elif s.kind == "control":
                budgets, effort = [None] * len(problems), float(s.value)
            elif s.kind == "route":
                ds = [
                    policy.decide_route(
                        None if adapter is None else adapter.name,
                        float(s.value),
                        max_tokens=cfg.max_tokens,
                        prompt=p.question,
                    )
                    for p in problems
                ]
                budgets, effort = [d.thinking_budget for d in ds], [d.control_effort for d in ds]
            elif s.kind == "none":
                budgets = [0] * len(problems)
            elif s.kind == "budget":
                budgets = [int(s.value)] * len(problems)
            else:
                if full_len is None:
                    base_rows = groups.get((name, "full")) or ev.generate(
                        problems, task, adapter, [None] * len(problems), **kw
                    )
                    full_len = {}
                    for row in base_rows:
                        full_len.setdefault(row["id"], []).append(row["reasoning_tokens"])
                    full_len = {k: sum(v) / len(v) for k, v in full_len.items()}
                budgets = [max(0, math.ceil(s.value * full_len[p.id])) for p in problems]
            rows = ev.generate(problems, task, adapter, budgets, effort=effort, **kw)
            for row in rows:
                row.update(adapter=name, setting=s.label)
            groups[(name, s.label)] = rows
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        f"{a}|{s}": {b: summarize(rows if b == "all" else [x for x in rows if x["bucket"] == b]) for b in BUCKETS}
        for (a, s), rows in groups.items()
    }
    payload = dict(
        config={k: v for k, v in asdict(cfg).items()},
        wall_time_s=round(time.time() - t0, 1),
        summary=summary,
        results=[r for rows in groups.values() for r in rows],
    )
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(out / "results.json")
    (out / "results.md").write_text(table(groups))
    plot(groups, out / "plot.png", title=f"{task.name}: accuracy vs reasoning tokens")
    print(table(groups))
    print(f"wrote {out}/results.json, results.md, plot.png")
    return payload
