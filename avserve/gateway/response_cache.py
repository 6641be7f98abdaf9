"""Response cache: the same clip, asked the same question of the same models, is answered from memory.

Off by default, like Triton's: `AVSERVE_RESPONSE_CACHE_BYTES` (0) turns it on with a bound in
bytes. A hit answers without probing, decoding or inferring, and without an admission ticket
or a media worker; what it still costs is receiving the upload (it must be read to be hashed).

**The key** is a SHA-256 over

  * the upload's bytes, hashed while they are spooled (avserve.gateway.upload; SHA-256 runs at
    about 1.3 GB/s on this CPU with SHA-NI, faster than BLAKE2b here: under 1 ms per MB of clip),
    and the spooled file's extension, which FFmpeg's probing uses for raw formats (.aac, .ts);
  * the backend's name and the **served models of the requested family**: every one of the
    family's models (`_av`, `_audio`, `_video`) with its versions, plus the cache's generation of
    the repository. Which of those models answers is only known after probing the upload (the
    route follows the streams that decode), and a hit must need no probe: so the key covers the
    whole family. A family's models are exported together anyway, so nothing is lost by it.
    The generation counts the repository objects the backend has handed out: the embedded
    backend reads its repository once (a new export needs a restart, which empties this
    in-process cache), the Triton backend re-reads the model list and configs after every
    reconnection (a restarted Triton may serve a re-export, and the exporter always writes
    version 1), so a new repository object empties the cache and starts a new generation. The
    versions make the key say what the answer depends on, and cost nothing (fingerprinted once
    per generation and family);
  * every field of `ClassifyParams` (family, modality, top_k, start, duration, ...), as a
    canonical JSON object: a field added to ClassifyParams is in the key with no change here.
    Only parameters that change the answer belong in ClassifyParams (the deadline is not one).

**What is stored** is the 200 answer: the response body, whose `request_id` and `timings_ms` are
replaced on a hit by the new request's (upload and total measured, probe/decode/inference 0)
and `cache` set to `"hit"` (also the `X-Cache` header). Errors are never stored. Degraded
answers (a zero-filled modality) are: they are what the same upload gets every time, and a
recomputation would only cost the same decode again.

**Bounds**: LRU in bytes (an entry weighs its JSON body plus a fixed overhead); an entry larger
than the whole bound is not stored. An optional TTL (`AVSERVE_RESPONSE_CACHE_TTL_SECONDS`)
expires entries at lookup. Two identical requests in flight at once are both computed (no
coalescing): the second store replaces the first with the same answer. Coalescing would save
one decode per burst of duplicates at the price of tying one request's fate (deadline,
disconnect) to another's.

**The client's say**, standard HTTP request directives (RFC 9111): `Cache-Control: no-cache`
(or `Pragma: no-cache`) skips the lookup, computes the answer and stores it (a refresh);
`Cache-Control: no-store` neither looks up nor stores.

With the cache on, admission control runs after the lookup (a hit needs no media worker), so a
miss refused for overload has had its upload read first; with it off, requests are refused
before their upload is read, as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from avserve.repository import Repository

from .classifier import ClassifyParams
from .schemas import ClassifyResponse, Timings

# Weight of one entry beyond its JSON body: the key, the OrderedDict node, the pydantic objects.
ENTRY_OVERHEAD_BYTES = 1024
EVICTION_REASONS = ("capacity", "expired", "models_changed")


@dataclass(frozen=True)
class CachePolicy:
    """What one request lets the cache do (its Cache-Control / Pragma request directives)."""

    lookup: bool
    store: bool

    @property
    def active(self) -> bool:
        return self.lookup or self.store


@dataclass(frozen=True)
class CacheKey:
    digest: bytes
    generation: int


@dataclass(frozen=True)
class CachedAnswer:
    response: ClassifyResponse  # as first answered; request_id and timings are replaced on a hit
    model: str  # the served model and route, for the request metrics of a hit
    route: str
    size: int
    stored_at: float  # time.monotonic()

    def answer(self, request_id: str, *, upload_seconds: float, total_seconds: float) -> ClassifyResponse:
        timings = Timings(
            upload=round(upload_seconds * 1000, 3), probe=0.0, decode=0.0, inference=0.0,
            total=round(total_seconds * 1000, 3),
        )  # fmt: skip
        return self.response.model_copy(update={"request_id": request_id, "timings_ms": timings, "cache": "hit"})


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    bypasses: int = 0
    stores: int = 0
    evictions: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(EVICTION_REASONS, 0))


class ResponseCache:
    def __init__(self, max_bytes: int, *, ttl_seconds: float | None = None) -> None:
        self.max_bytes = max_bytes
        self.ttl_seconds = ttl_seconds
        self.stats = CacheStats()
        self.bytes = 0
        self.generation = 0
        self._entries: OrderedDict[bytes, CachedAnswer] = OrderedDict()
        self._repository: Repository | None = None
        self._family_fingerprints: dict[str, str] = {}
        # The event loop is the only user; the lock keeps a scrape (another thread) consistent.
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def entries(self) -> int:
        return len(self._entries)

    def policy(self, cache_control: str | None, pragma: str | None = None) -> CachePolicy:
        if not self.enabled:
            return CachePolicy(lookup=False, store=False)
        directives = {d.strip().split("=", 1)[0].lower() for d in (cache_control or "").split(",")}
        no_cache = "no-cache" in directives or (cache_control is None and "no-cache" in (pragma or "").lower())
        no_store = "no-store" in directives
        return CachePolicy(lookup=not (no_cache or no_store), store=not no_store)

    # ---- the key -------------------------------------------------------------------------------

    def key(self, upload_digest: bytes, suffix: str, backend: str, repository: Repository, params: ClassifyParams) -> CacheKey:
        models = self._fingerprint(repository, params.family)
        canonical = json.dumps(dataclasses.asdict(params), sort_keys=True, separators=(",", ":"))
        hasher = hashlib.sha256(upload_digest)
        for part in (suffix, backend, models, canonical):
            hasher.update(b"\0" + part.encode())
        return CacheKey(hasher.digest(), self.generation)

    def _fingerprint(self, repository: Repository, family: str) -> str:
        with self._lock:
            if repository is not self._repository:
                if self._repository is not None:
                    self.generation += 1
                    self._evict_all("models_changed")
                self._repository = repository
                self._family_fingerprints = {}
            fingerprint = self._family_fingerprints.get(family)
            if fingerprint is None:
                models = sorted(
                    (spec.name, list(spec.versions)) for spec in repository.models.values() if spec.family == family
                )
                fingerprint = json.dumps([self.generation, models], separators=(",", ":"))
                self._family_fingerprints[family] = fingerprint
            return fingerprint

    # ---- lookups and stores ------------------------------------------------------------------

    def get(self, key: CacheKey) -> CachedAnswer | None:
        with self._lock:
            entry = self._entries.get(key.digest)
            if entry is not None and self._expired(entry):
                self._remove(key.digest, "expired")
                entry = None
            if entry is None:
                self.stats.misses += 1
                return None
            self._entries.move_to_end(key.digest)
            self.stats.hits += 1
            return entry

    def count_bypass(self) -> None:
        with self._lock:
            self.stats.bypasses += 1

    def put(self, key: CacheKey, response: ClassifyResponse, *, model: str, route: str) -> bool:
        """Store a 200 answer; False when it is too large or was computed for replaced models."""
        stored = response.model_copy(update={"cache": None})
        size = len(stored.model_dump_json()) + len(key.digest) + ENTRY_OVERHEAD_BYTES
        with self._lock:
            if key.generation != self.generation or size > self.max_bytes:
                return False
            if key.digest in self._entries:
                self._remove(key.digest, None)
            self._entries[key.digest] = CachedAnswer(stored, model, route, size, time.monotonic())
            self.bytes += size
            self.stats.stores += 1
            while self.bytes > self.max_bytes:
                self._remove(next(iter(self._entries)), "capacity")
            return True

    # ---- internals (under the lock) ------------------------------------------------------------

    def _expired(self, entry: CachedAnswer) -> bool:
        return self.ttl_seconds is not None and time.monotonic() - entry.stored_at > self.ttl_seconds

    def _remove(self, digest: bytes, reason: str | None) -> None:
        entry = self._entries.pop(digest)
        self.bytes -= entry.size
        if reason is not None:
            self.stats.evictions[reason] += 1

    def _evict_all(self, reason: str) -> None:
        self.stats.evictions[reason] += len(self._entries)
        self._entries.clear()
        self.bytes = 0
