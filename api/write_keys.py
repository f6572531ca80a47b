"""Who may send events: write keys checked against their stored digests, cached briefly."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable, Mapping

from projections.write_keys import WriteKeyStore, digest, key_id_of

log = logging.getLogger(__name__)

# The development key from settings (JOURNEYS_WRITE_KEY) arrives as this source.
DEV_SOURCE = "dev"
# An unknown key id reloads the cache when it is older than this.
MISS_RELOAD_S = 1.0


class WriteKeyRegistry:
    """Answers "which source is this write key?" from a cache of the active keys.

    The cache is the whole (small) table of active digests, reloaded at most
    every ``cache_seconds``: a key created or revoked through another API
    replica takes effect here within that time, through this one at once.
    """

    def __init__(
        self,
        store: WriteKeyStore | None,
        static_keys: Mapping[str, str],
        cache_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        # key → source id, for keys from settings (the development key).
        self._static = dict(static_keys)
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._digests: dict[str, tuple[str, str, tuple[str, ...]]] = {}
        self._loaded_at: float | None = None
        self._lock = asyncio.Lock()

    async def source_of(self, key: str | None) -> str | None:
        """The source id (key id) of a valid, active write key; None otherwise."""
        if not key:
            return None
        for known, source in self._static.items():
            if hmac.compare_digest(key.encode(), known.encode()):
                return source
        key_id = key_id_of(key)
        if key_id is None or self.store is None:
            return None
        await self._refresh_if_stale()
        found = self._digests.get(key_id)
        if found is None and self._cache_seconds > MISS_RELOAD_S:
            # A key made a moment ago through another replica (the node, for a gateway)
            # works at once; a flood of unknown keys reloads at most once a second.
            await self._refresh_if_stale(MISS_RELOAD_S)
            found = self._digests.get(key_id)
        if found is None or not hmac.compare_digest(found[0], digest(key)):
            return None
        return key_id

    def static_sources(self) -> list[str]:
        """The sources of the keys from settings (the development key)."""
        return sorted(set(self._static.values()))

    async def origins_of(self, source: str) -> tuple[str, ...]:
        """The browser origins a source's key accepts; empty: the gateway's default."""
        if self.store is None or source in self._static.values():
            return ()
        await self._refresh_if_stale()
        found = self._digests.get(source)
        return found[2] if found is not None else ()

    async def any_key_accepts(self, origin: str) -> bool:
        """True when some active key lists ``origin``: a preflight, which carries
        no key, is answered for the origins any key may send from."""
        if self.store is None:
            return False
        await self._refresh_if_stale()
        return any(origin in origins for _, _, origins in self._digests.values())

    def invalidate(self) -> None:
        """Reload on the next check (after this replica created or revoked a key)."""
        self._loaded_at = None

    async def _refresh_if_stale(self, max_age: float | None = None) -> None:
        max_age = self._cache_seconds if max_age is None else max_age
        now = self._clock()
        if self._loaded_at is not None and now - self._loaded_at < max_age:
            return
        async with self._lock:
            if self._loaded_at is not None and self._clock() - self._loaded_at < max_age:
                return  # another request reloaded meanwhile
            assert self.store is not None
            try:
                self._digests = await asyncio.to_thread(self.store.active_digests)
            except Exception:
                # Keep answering from the last good copy rather than refuse every event.
                log.exception("could not reload write keys; using the cached ones")
            # Also after a failure: a broken store is retried per period, not per request.
            self._loaded_at = self._clock()
