"""Prometheus metrics, in one module with its own registry (design §6).

Names start with ``effort_`` and carry their unit; labels are low-cardinality: effort bucket
(none/low/medium/high/full), adapter (registered names only), route (fixed/auto), finish
reason, endpoint, and the option the policy chose (a few per model: ``dler``, ``e1@control``,
``base@budget``, ``base@none``). Token counts come from `effort_server.contract.markers`, the same numbers as `usage`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LAT = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TPOT = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
FRACTION = (0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9, 1, 1.25, 1.5, 2, 3)
TOK = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
LABELS = ("effort_bucket", "adapter", "route")


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "effort_requests_total", "Finished requests", ("endpoint", *LABELS, "finish_reason"), registry=r
        )
        self.errors = Counter(
            "effort_request_errors_total", "Requests answered with an error", ("endpoint", "status"), registry=r
        )
        self.e2e = Histogram(
            "effort_e2e_request_latency_seconds",
            "Request latency, arrival to last token",
            LABELS,
            buckets=LAT,
            registry=r,
        )
        self.ttft = Histogram(
            "effort_time_to_first_token_seconds", "Arrival to first generated token", LABELS, buckets=LAT, registry=r
        )
        self.tpot = Histogram(
            "effort_time_per_output_token_seconds",
            "Mean time per generated token after the first",
            LABELS,
            buckets=TPOT,
            registry=r,
        )
        self.prompt_tokens = Histogram(
            "effort_prompt_tokens", "Prompt tokens per request", LABELS, buckets=TOK, registry=r
        )
        self.reasoning_tokens = Histogram(
            "effort_reasoning_tokens", "Reasoning tokens per choice", LABELS, buckets=TOK, registry=r
        )
        self.answer_tokens = Histogram(
            "effort_answer_tokens", "Answer tokens per choice", LABELS, buckets=TOK, registry=r
        )
        self.budget = Histogram(
            "effort_thinking_budget_tokens", "Thinking budget applied per request", LABELS, buckets=TOK, registry=r
        )
        self.budget_hits = Counter(
            "effort_budget_hits_total", "Choices whose thinking was cut by the budget", LABELS, registry=r
        )
        self.spend = Histogram(
            "effort_spend_tokens", "Reasoning tokens the request's effort allows", LABELS, buckets=TOK, registry=r
        )
        self.fraction = Histogram(
            "effort_realised_fraction",
            "Reasoning tokens per choice / the base's predicted full-effort reasoning",
            LABELS,
            buckets=FRACTION,
            registry=r,
        )
        self.choices = Counter(
            "effort_route_choices_total",
            "Options the policy chose to answer with",
            ("effort_bucket", "route", "choice"),
            registry=r,
        )
        self.saved = Counter(
            "effort_tokens_saved_total",
            "Reasoning tokens saved versus the predicted full-effort length",
            LABELS,
            registry=r,
        )
        self.router = Counter(
            "effort_router_decisions_total",
            "Decisions of the difficulty router (effort auto)",
            ("effort_bucket", "adapter"),
            registry=r,
        )
        self.rejections = Counter(
            "effort_rejections_total", "Requests refused by a limit or the API key check", ("reason",), registry=r
        )
        self.router_error = Histogram(
            "effort_router_length_error_tokens",
            "|reasoning tokens - the router's prediction| per choice of an auto request",
            LABELS,
            buckets=TOK,
            registry=r,
        )
        self.running = Gauge("effort_requests_running", "Requests the engine is running", registry=r)
        self.waiting = Gauge("effort_requests_waiting", "Requests queued in the engine", registry=r)
        self.in_flight = Gauge("effort_requests_in_flight", "Requests the server is handling", registry=r)
        for name in ("running", "waiting", "in_flight"):
            getattr(self, name).set(0)

    def observe(
        self,
        endpoint: str,
        decision,
        adapter_label: str,
        finish_reasons: list[str],
        prompt_tokens: int,
        reasoning: list[int],
        answer: list[int],
        hits: list[bool],
        e2e: float,
        ttft: float | None,
        completion_tokens: int,
    ) -> None:
        lab = (decision.bucket, adapter_label, decision.route)
        for fr in finish_reasons:
            self.requests.labels(endpoint, *lab, fr or "unknown").inc()
        self.e2e.labels(*lab).observe(e2e)
        if ttft is not None:
            self.ttft.labels(*lab).observe(ttft)
            per_choice = completion_tokens / max(1, len(reasoning))
            if per_choice > 1:
                self.tpot.labels(*lab).observe((e2e - ttft) / (per_choice - 1))
        self.prompt_tokens.labels(*lab).observe(prompt_tokens)
        if decision.thinking_budget is not None:
            self.budget.labels(*lab).observe(decision.thinking_budget)
        if decision.spend is not None:
            self.spend.labels(*lab).observe(decision.spend)
        self.choices.labels(decision.bucket, decision.route, decision.family or "unknown").inc()
        for r, a, h in zip(reasoning, answer, hits):
            self.reasoning_tokens.labels(*lab).observe(r)
            self.answer_tokens.labels(*lab).observe(a)
            if h:
                self.budget_hits.labels(*lab).inc()
            if decision.full_effort_tokens:
                self.saved.labels(*lab).inc(max(0.0, decision.full_effort_tokens - r))
                self.fraction.labels(*lab).observe(r / decision.full_effort_tokens)
        if decision.route == "auto":
            self.router.labels(decision.bucket, adapter_label).inc()
            for r in reasoning:
                self.router_error.labels(*lab).observe(abs(r - decision.predicted["tokens"]))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def stat_logger_factory(metrics: Metrics):
    """A vLLM stat logger that mirrors the scheduler's running / waiting counts into our gauges."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _Logger(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0):
            pass

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
            if scheduler_stats is not None:
                metrics.running.set(scheduler_stats.num_running_reqs)
                metrics.waiting.set(scheduler_stats.num_waiting_reqs)

        def log_engine_initialized(self):
            pass

    return _Logger
