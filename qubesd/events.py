"""Event bus: every holder (the app, each domain) fires named events through it.

Handlers subscribe to an exact name or an fnmatch pattern (``property-set:*``). A handler
of a *pre* event may veto the action by raising. Handlers are called as
``handler(subject, event, **kwargs)``; the subject is a domain or the app.
"""

import fnmatch
import logging
from collections.abc import Callable

log = logging.getLogger("qubesd.events")

Handler = Callable[..., object]


class EventBus:
    def __init__(self) -> None:
        self._exact: dict[str, list[Handler]] = {}
        self._patterns: list[tuple[str, Handler]] = []
        self._cache: dict[str, tuple[Handler, ...]] = {}
        self.enabled = True

    def subscribe(self, pattern: str, handler: Handler) -> None:
        if any(c in pattern for c in "*?["):
            self._patterns.append((pattern, handler))
        else:
            self._exact.setdefault(pattern, []).append(handler)
        self._cache.clear()

    def unsubscribe(self, pattern: str, handler: Handler) -> None:
        if any(c in pattern for c in "*?["):
            self._patterns.remove((pattern, handler))
        else:
            self._exact[pattern].remove(handler)
        self._cache.clear()

    def _handlers(self, event: str) -> tuple[Handler, ...]:
        found = self._cache.get(event)
        if found is None:
            found = tuple(self._exact.get(event, ())) + tuple(
                h for p, h in self._patterns if fnmatch.fnmatchcase(event, p))
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[event] = found
        return found

    def fire(self, subject, event: str, pre_event: bool = False, **kwargs) -> list:
        """Call every matching handler; returns their non-None results.

        For a pre-event an exception propagates (veto); for a normal event a failing
        handler is logged and the others still run, so one broken extension cannot
        leave the model half-notified.
        """
        if not self.enabled:
            return []
        results = []
        for handler in self._handlers(event):
            if pre_event:
                result = handler(subject, event, **kwargs)
            else:
                try:
                    result = handler(subject, event, **kwargs)
                except Exception:
                    log.exception("handler %r of %s failed", handler, event)
                    continue
            if result is not None:
                results.append(result)
        return results
