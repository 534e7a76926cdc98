"""The internal API on qubesd.internal.sock (trusted dom0 components only)."""

import json

from qubesd.dispatch import Call
from qubesd.registry import Access, Dest, Scope, api


@api("internal.GetSystemInfo", dest=Dest.ADMINVM, scope=Scope.GLOBAL, access=Access.READ,
     socket="internal")
async def get_system_info(call: Call) -> str:
    return json.dumps(call.daemon.system_info())
