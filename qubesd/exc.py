"""Exception classes of the Admin API.

The class *name* is what travels on the wire (``2\\0<Name>\\0<tb>\\0<msg>\\0``) and what
the stock client library maps back to its own classes, so names and bases follow
upstream qubesd exactly (spec/admin-api.md section 2.5).
"""


class QubesException(Exception):
    """A user-visible error; sent to the caller as EXCEPTION."""


class ProtocolError(AssertionError):
    """Malformed request (bad argument, payload or destination)."""


class PermissionDenied(PermissionError):
    """The request was refused."""


class QubesVMNotFoundError(QubesException, KeyError):
    def __init__(self, vmname: str):
        super().__init__(f"No such domain: {vmname!r}")
        self.vmname = vmname

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return Exception.__str__(self)


class QubesVMInvalidUUIDError(QubesException):
    def __init__(self, uuid: str):
        super().__init__(f"VM UUID is not valid: {uuid!r}")


class QubesVMAlreadyExistsError(QubesException):
    pass


class QubesVMError(QubesException):
    def __init__(self, vm=None, msg: str = ""):
        super().__init__(msg)
        self.vm = vm


class QubesVMInUseError(QubesVMError):
    pass


class QubesVMNotStartedError(QubesVMError):
    def __init__(self, vm, msg: str | None = None):
        super().__init__(vm, msg or f"Domain is powered off: {vm.name!r}")


class QubesVMNotRunningError(QubesVMNotStartedError):
    def __init__(self, vm, msg: str | None = None):
        super().__init__(
            vm, msg or f"Domain not running (either powered off or paused): {vm.name!r}")


class QubesVMNotPausedError(QubesVMNotStartedError):
    def __init__(self, vm, msg: str | None = None):
        super().__init__(vm, msg or f"Domain is not paused: {vm.name!r}")


class QubesVMNotSuspendedError(QubesVMError):
    def __init__(self, vm, msg: str | None = None):
        super().__init__(vm, msg or f"Domain is not suspended: {vm.name!r}")


class QubesVMNotHaltedError(QubesVMError):
    def __init__(self, vm, msg: str | None = None):
        super().__init__(vm, msg or f"Domain is not powered off: {vm.name!r}")


class QubesVMShutdownTimeoutError(QubesVMError):
    def __init__(self, vm, msg: str | None = None):
        super().__init__(vm, msg or f"Domain shutdown timed out: {vm.name!r}")


class QubesNoTemplateError(QubesVMError):
    def __init__(self, vm, msg: str | None = None):
        super().__init__(vm, msg or f"Template for the domain {vm.name!r} not found")


class QubesValueError(QubesException, ValueError):
    pass


class QubesPropertyValueError(QubesValueError):
    def __init__(self, holder, prop, value, msg: str | None = None):
        super().__init__(msg or f"Invalid value {value!r} for property {prop!r} of {holder}")
        self.holder, self.prop, self.value = holder, prop, value


class QubesNoSuchPropertyError(QubesException, AttributeError):
    def __init__(self, holder, prop: str, msg: str | None = None):
        super().__init__(msg or f"Invalid property {prop!r} of {holder}")


class QubesNotImplementedError(QubesException, NotImplementedError):
    pass


class QubesFeatureNotFoundError(QubesException, KeyError):
    def __init__(self, domain, feature: str):
        super().__init__(f"Feature not set for domain {domain}: {feature}")

    def __str__(self) -> str:
        return Exception.__str__(self)


class QubesTagNotFoundError(QubesException, KeyError):
    def __init__(self, domain, tag: str):
        super().__init__(f"Tag not set for domain {domain}: {tag}")

    def __str__(self) -> str:
        return Exception.__str__(self)


class QubesLabelNotFoundError(QubesException, KeyError):
    def __init__(self, label):
        super().__init__(f"Label does not exist: {label}")

    def __str__(self) -> str:
        return Exception.__str__(self)


class QubesInvalidTagError(ProtocolError):
    pass


class QubesInvalidLabelError(ProtocolError):
    pass


class QubesInvalidLabelValueError(ProtocolError):
    pass


class QubesLabelInUseError(QubesException):
    def __init__(self, label: str):
        super().__init__(f"Label is still in use: {label!r}")


class QubesPoolInUseError(QubesException):
    pass


class StoragePoolException(QubesException):
    pass


#: Exceptions sent to the caller as EXCEPTION replies; anything else is an internal
#: error, logged with its traceback and reported as a plain ``QubesException``.
WIRE_EXCEPTIONS = (QubesException, ProtocolError, PermissionDenied)
