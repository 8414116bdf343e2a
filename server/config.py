"""Server settings: a dataclass with help texts; `effort serve` exposes every field as a flag,
and `--config FILE` (JSON) sets any of them. Precedence: flag > config file > default."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

OPENAI_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")  # OpenAI's names, and "max"


@dataclass
class ServerSettings:
    # the flags `effort ... --help` lists (all of them with --help-all)
    HELP_MAIN = (
        "host",
        "port",
        "adapters",
        "default_effort",
        "full_effort_tokens",
        "router",
        "upstream",
        "api_key",
        "log_level",
        "config",
    )

    host: str = field(default="127.0.0.1", metadata={"help": "address to bind"})
    port: int = field(default=8000, metadata={"help": "port to bind"})
    served_model_name: str = field(
        default="", metadata={"help": "name of the base model in the API (default: the model folder's name)"}
    )
    adapters: str = field(
        default="",
        metadata={"help": "comma list of adapter folders or folders of adapters (default: the repo's adapters/)"},
    )
    think_start: str = field(
        default="",
        metadata={"help": "think start marker of a model without a manifest (default: found in its tokenizer)"},
    )
    think_end: str = field(default="", metadata={"help": "think end marker (with --think-start)"})
    reasoning_parser: str = field(
        default="", metadata={"help": "vLLM reasoning-parser name whose markers to use (e.g. qwen3, deepseek_r1)"}
    )
    default_effort: str = field(
        default="high", metadata={"help": "effort when a request names none: a level or a number"}
    )
    effort_low: float = field(default=0.25, metadata={"help": "number for effort 'low'"})
    effort_medium: float = field(default=0.5, metadata={"help": "number for effort 'medium'"})
    effort_high: float = field(default=1.0, metadata={"help": "number for effort 'high'"})
    effort_minimal: float = field(default=0.1, metadata={"help": "number for 'minimal'"})
    effort_xhigh: float = field(default=1.0, metadata={"help": "number for 'xhigh'"})
    effort_max: float = field(default=1.0, metadata={"help": "number for 'max'"})
    effort_tie: float = field(
        default=0.005,
        metadata={
            "help": "predicted accuracies within this of the best are tied; a tie goes to the option with fewer predicted reasoning tokens"
        },
    )
    budget_slack: float = field(default=1.2, metadata={"help": "budget = ceil(effort x predicted length x slack)"})
    min_budget: int = field(
        default=16, metadata={"help": "smallest spend and thinking budget of an effort > 0, in tokens"}
    )
    max_budget: int = field(default=0, metadata={"help": "hard cap on any thinking budget (0: none)"})
    answer_reserve: int = field(default=16, metadata={"help": "tokens of max_tokens kept for the answer"})
    full_effort_tokens: int = field(
        default=0, metadata={"help": "predicted full-effort reasoning length (0: from the model manifest)"}
    )
    effort_adapters: str = field(
        default="",
        metadata={
            "help": "JSON list of [max_effort, model] rules: efforts <= max_effort choose only among that model's options ('base': the base model alone), e.g. '[[1, \"base\"]]' for plain budget forcing"
        },
    )
    router: str = field(
        default="",
        metadata={
            "help": "difficulty router folder for effort 'auto' and per-prompt budgets (default: <first adapters folder>/router when present; 'none': no router)"
        },
    )
    router_margin: float = field(
        default=-1.0,
        metadata={
            "help": "auto takes the cheapest route predicted within this accuracy of the best (-1: the router's calibrated margin)"
        },
    )
    router_history: int = field(
        default=10000,
        metadata={"help": "prompts whose measured full-effort length is remembered for repeats (0: off)"},
    )
    upstream: str = field(
        default="",
        metadata={
            "help": "gateway mode: URL of an OpenAI-compatible vLLM server or fleet to send generations to (no local engine)"
        },
    )
    upstream_model: str = field(
        default="", metadata={"help": "the upstream's base model name (default: the first model it lists)"}
    )
    upstream_models: str = field(
        default="", metadata={"help": "JSON map of adapter name -> upstream LoRA model name (default: the same name)"}
    )
    upstream_timeout: float = field(
        default=600.0, metadata={"help": "seconds an upstream request may take (then 504)"}
    )
    api_key: str = field(
        default="",
        metadata={
            "help": "API key(s), comma list, required as 'Authorization: Bearer KEY' on /v1 (default: none, or $EFFORT_API_KEYS)"
        },
    )
    api_keys_file: str = field(default="", metadata={"help": "file of API keys, one per line"})
    protect_health: bool = field(default=False, metadata={"help": "require the API key on /health too"})
    protect_metrics: bool = field(default=False, metadata={"help": "require the API key on /metrics too"})
    max_body_bytes: int = field(default=1 << 20, metadata={"help": "largest request body (413 above)"})
    max_prompt_tokens: int = field(default=0, metadata={"help": "longest prompt in tokens (0: the model's context)"})
    max_n: int = field(default=16, metadata={"help": "largest n (choices per request)"})
    max_output_tokens: int = field(
        default=0, metadata={"help": "largest max_tokens a request may ask for (0: the context)"}
    )
    max_concurrent: int = field(default=64, metadata={"help": "requests generating at once (0: no limit)"})
    max_queue: int = field(default=256, metadata={"help": "requests waiting for a slot; beyond: 429 with Retry-After"})
    request_timeout: float = field(
        default=600.0, metadata={"help": "seconds a request may take, queue included (then 504)"}
    )
    drain_timeout: float = field(
        default=30.0,
        metadata={
            "help": "on SIGTERM: stop accepting, let in-flight requests finish for up to this many seconds, then exit"
        },
    )
    log_level: str = field(default="info", metadata={"help": "log level"})
    config: str = field(default="", metadata={"help": "JSON file of any of these settings"})

    def __post_init__(self):
        for name in ("effort_low", "effort_medium", "effort_high", "effort_minimal", "effort_xhigh", "effort_max"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.budget_slack <= 0 or self.min_budget < 0 or self.max_budget < 0 or self.answer_reserve < 0:
            raise ValueError("budget_slack must be > 0; min_budget, max_budget and answer_reserve >= 0")
        if not 0 <= self.effort_tie < 1:
            raise ValueError("effort_tie must be in [0, 1)")
        if self.router_margin > 1 or self.router_history < 0:
            raise ValueError("router_margin must be <= 1 (-1: calibrated) and router_history >= 0")
        if (
            min(self.max_body_bytes, self.max_n) < 1
            or min(self.max_prompt_tokens, self.max_output_tokens, self.max_concurrent, self.max_queue) < 0
        ):
            raise ValueError(
                "max_body_bytes and max_n must be >= 1; max_prompt_tokens, max_output_tokens, "
                "max_concurrent and max_queue >= 0"
            )
        if self.request_timeout <= 0 or self.drain_timeout < 0:
            raise ValueError("request_timeout must be > 0 and drain_timeout >= 0")
        if self.upstream and not self.upstream.startswith(("http://", "https://")):
            raise ValueError("upstream must be an http:// or https:// URL")
        if self.upstream_timeout <= 0:
            raise ValueError("upstream_timeout must be > 0")
        self.upstream_names()  # validate
        if not 0 < self.port < 65536:
            raise ValueError("port must be in 1..65535")
        self.effort_rules()  # validate

    def levels(self) -> dict[str, float]:
        """Every effort name and its number (`effort`, `reasoning_effort` and `reasoning.effort`)."""
        return {
            "none": 0.0,
            "minimal": self.effort_minimal,
            "low": self.effort_low,
            "medium": self.effort_medium,
            "high": self.effort_high,
            "xhigh": self.effort_xhigh,
            "max": self.effort_max,
        }

    def upstream_names(self) -> dict[str, str]:
        if not self.upstream_models:
            return {}
        try:
            names = json.loads(self.upstream_models)
            if not isinstance(names, dict):
                raise ValueError
            return {str(k): str(v) for k, v in names.items()}
        except ValueError:
            raise ValueError("upstream_models must be a JSON object of adapter name -> upstream model name") from None

    def effort_rules(self) -> list[tuple[float, str]]:
        if not self.effort_adapters:
            return []
        try:
            rules = json.loads(self.effort_adapters)
            return sorted((float(e), str(a)) for e, a in rules)
        except (ValueError, TypeError):
            raise ValueError("effort_adapters must be a JSON list of [max_effort, adapter] pairs") from None


def load_config_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"config file {path} is not valid JSON: {e.msg}") from None
    known = {f.name for f in fields(ServerSettings)}
    unknown = set(data) - known - {"engine"}
    if unknown:
        raise ValueError(f"config file {path}: unknown setting(s) {', '.join(sorted(unknown))}")
    return data
