"""Every qubesd method, declared once.

A declaration says where the method may go (destination class), what it takes (argument
and payload presence), what it does (scope and access, which the default policy and the
multi-user gate read), and which domain a write names besides its destination (the
gate's value constraints). The dispatcher enforces the generic rules for all methods, so
no handler repeats them.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum


class Dest(Enum):
    ADMINVM = "dom0"   # must be the AdminVM ("expected destination to be AdminVM")
    VM = "vm"          # must not be the AdminVM
    ANY = "any"


class Presence(Enum):
    NONE = "none"          # must be empty
    REQUIRED = "required"  # must be non-empty
    OPTIONAL = "optional"  # anything


class Scope(Enum):
    LOCAL = "local"
    GLOBAL = "global"


class Access(Enum):
    READ = "ro"
    WRITE = "rw"
    EXECUTE = "x"


class NamesDomain(Enum):
    """Where a call names a domain other than its destination (value constraints)."""
    NONE = "none"
    PROPERTY_VALUE = "property-value"  # payload of property.Set when the property is a VM ref
    TEMPLATE_ARG = "template-arg"      # the argument of admin.vm.Create.* (template)
    DISPVM_TEMPLATE = "dispvm-template"  # CreateDisposable: dest, or src.default_dispvm
    MEMBERSHIP_TAG = "membership-tag"  # tag.Set/Remove: the tag may decide set membership


Handler = Callable[["object"], Awaitable[str | None]]


@dataclass(frozen=True)
class Method:
    name: str
    handler: Handler
    dest: Dest
    arg: Presence
    payload: Presence
    scope: Scope
    access: Access
    socket: str = "admin"        # "admin" -> qubesd.sock, "internal" -> qubesd.internal.sock
    stream: bool = False         # event-producing; cancelled when the client goes away
    names_domain: NamesDomain = NamesDomain.NONE
    #: listing methods whose output the gate filters per domain instead of refusing
    filtered: bool = False

    @property
    def dest_adminvm(self) -> bool | None:
        return {Dest.ADMINVM: True, Dest.VM: False, Dest.ANY: None}[self.dest]

    @property
    def mutating(self) -> bool:
        return self.access is not Access.READ


class Registry:
    def __init__(self) -> None:
        self.methods: dict[str, Method] = {}

    def add(self, method: Method) -> None:
        if method.name in self.methods:
            raise ValueError(f"method {method.name} declared twice")
        self.methods[method.name] = method

    def get(self, name: str) -> Method | None:
        return self.methods.get(name)

    def for_socket(self, socket: str) -> dict[str, Method]:
        return {n: m for n, m in self.methods.items() if m.socket == socket}

    def __iter__(self):
        return iter(self.methods.values())

    def __len__(self) -> int:
        return len(self.methods)


REGISTRY = Registry()


def api(name: str, *, dest: Dest, arg: Presence = Presence.NONE,
        payload: Presence = Presence.NONE, scope: Scope, access: Access,
        socket: str = "admin", stream: bool = False,
        names_domain: NamesDomain = NamesDomain.NONE, filtered: bool = False,
        registry: Registry = REGISTRY):
    """Decorator declaring a handler; every argument of the declaration is mandatory
    except the ones with safe defaults, so the gate always has what it needs."""
    def register(handler: Handler) -> Handler:
        registry.add(Method(name, handler, dest, arg, payload, scope, access, socket,
                            stream, names_domain, filtered))
        return handler
    return register
