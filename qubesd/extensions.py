"""Extensions: plugins that subscribe to qubesd's events.

An extension is a class registered under the ``qubesd.extensions`` entry-point group.
qubesd instantiates each one with the daemon at start-up; the constructor subscribes
handlers with ``daemon.app.bus.subscribe(pattern, handler)``. Patterns may use fnmatch
wildcards (``property-set:*``). A handler of a pre-event (``property-pre-set:*``,
``domain-pre-start``, ``admin-permission:*``...) may veto the action by raising; the
caller then gets that exception.
"""

import logging
from importlib.metadata import entry_points

log = logging.getLogger("qubesd.extensions")

GROUP = "qubesd.extensions"


def load_extensions(daemon) -> list:
    loaded = []
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            cls = ep.load()
            loaded.append(cls(daemon))
        except Exception:
            log.exception("extension %s failed to load", ep.name)
            continue
        log.info("loaded extension %s", ep.name)
    return loaded
