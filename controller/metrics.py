"""Prometheus metrics of the controller (served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Per-category cache metrics in a registry of their own (no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.lookups = Counter("adaptive_cache_lookups", "Cache lookups", ["category"], registry=r)
        self.hits = Counter("adaptive_cache_hits", "Cache hits served", ["category"], registry=r)
        self.misses = Counter("adaptive_cache_misses", "Cache misses", ["category"], registry=r)
        self.bypass = Counter(
            "adaptive_cache_bypass", "Requests not looked up (uncacheable or no-cache)",
            ["category", "reason"], registry=r,
        )
        self.stores = Counter("adaptive_cache_stores", "Answers stored", ["category"], registry=r)
        self.assignments = Counter(
            "adaptive_category_assignments", "Requests per category and how it was chosen "
            "(header, keyword, model, low_confidence, centroid, default)", ["category", "source"], registry=r,
        )
        self.low_confidence = Counter(
            "adaptive_classifier_low_confidence", "Requests sent to the default category because the "
            "classifier's top probability was below classifier.confidence_floor", registry=r,
        )
        self.hit_similarity = Histogram(
            "adaptive_cache_hit_similarity", "Cosine similarity of served hits", ["category"],
            buckets=(0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 0.99, 1.0), registry=r,
        )
        self.lookup_seconds = Histogram(
            "adaptive_cache_lookup_seconds", "Cache lookup latency, embedding excluded",
            ["category", "result"],
            buckets=(0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1), registry=r,
        )
        self.embed_seconds = Histogram(
            "adaptive_embedding_seconds", "Query embedding latency (queue wait included)",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25), registry=r,
        )
        self.embed_batch_size = Histogram(
            "adaptive_embedding_batch_size", "Queries encoded together (controller.embed_batch)",
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=r,
        )
        self.embed_misses = Counter(
            "adaptive_embedding_deadline_misses", "Queries not embedded by the deadline (or the encoder "
            "failed): served without the cache", registry=r,
        )
        self.entries = Gauge("adaptive_cache_entries", "Entries indexed", ["category"], registry=r)
        self.evictions = Gauge(
            "adaptive_cache_evictions", "Quota evictions since start", ["category"], registry=r
        )
        self.shadow_checks = Gauge("adaptive_shadow_checks", "Served hits also checked against the backend",
                                   ["category"], registry=r)
        self.shadow_false_hits = Gauge("adaptive_shadow_false_hits", "Shadow checks whose answers disagreed",
                                       ["category"], registry=r)
        self.shadow_false_hit_rate = Gauge(
            "adaptive_shadow_false_hit_rate", "False-hit estimate since the last threshold change", ["category"], registry=r)
        self.shadow_false_hit_upper = Gauge(
            "adaptive_shadow_false_hit_upper", "Its one-sided 95 % upper confidence limit", ["category"], registry=r)
        self.shadow_threshold_offset = Gauge(
            "adaptive_shadow_threshold_offset", "Similarity-threshold raise earned by shadow checks", ["category"], registry=r)
        self.verifier_rejections = Gauge(
            "adaptive_cache_verifier_rejections", "Lookups with candidates above the threshold that the "
            "verifier all refused (near-misses not served), since start", ["category"], registry=r
        )
        self.effective_threshold = Gauge(
            "adaptive_effective_similarity_threshold", "Threshold in force (load-adjusted)", ["category"], registry=r
        )
        self.effective_ttl = Gauge("adaptive_effective_ttl_seconds", "TTL in force (load-adjusted)", ["category"], registry=r)
        self.effective_profile = Gauge(
            "adaptive_effective_compute_profile", "1 for the compute profile in force", ["category", "profile"], registry=r
        )
        self.load_level = Gauge("adaptive_load_level", "Fleet load level (0 = normal)", registry=r)
        self.fleet_pressure = Gauge("adaptive_fleet_pressure", "Load pressure of the least-loaded backend (0..1)", registry=r)
        self.backend_score = Gauge("adaptive_backend_load_score", "Load score per backend (inf: dead or silent)", ["backend"], registry=r)
        self.upstream_errors = Counter(
            "adaptive_upstream_errors", "Backend connection failures", ["backend"], registry=r
        )
        self.redis_breaker_open = Gauge(
            "adaptive_redis_breaker_open", "1 while Redis is bypassed (controller.breaker)", registry=r
        )
        self.redis_breaker_trips = Counter(
            "adaptive_redis_breaker_trips", "Times Redis failed and the cache was bypassed", registry=r
        )
        self.redis_fast_failures = Gauge(
            "adaptive_redis_fast_failures", "Redis operations refused at once by the open breaker", registry=r
        )
