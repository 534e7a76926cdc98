"""Shared code of qvm-prefs and qubes-prefs."""

from __future__ import annotations

import argparse
import textwrap

from qubesd import exc
from qubesd.client import VM, Qubes, error_message
from qubesd.tools import _common

#: Properties that name a qube; the word ``none`` sets them to None (as upstream).
VM_REF_NONE = {"default_dispvm", "netvm", "template", "guivm", "audiovm",
               "management_dispvm", "default_netvm", "default_template", "default_guivm",
               "default_audiovm", "clockvm", "updatevm"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--help-properties", "--help-property", action="store_true",
                        dest="help_properties",
                        help="list the properties with their descriptions (only PROPERTY's "
                             "if one is given) and exit")
    parser.add_argument("--hide-default", action="store_true",
                        help="do not show properties that have their default value")
    parser.add_argument("--get", "-g", action="store_true",
                        help="ignored; for compatibility with older scripts")
    parser.add_argument("--set", "-s", action="store_true",
                        help="ignored; for compatibility with older scripts")
    parser.add_argument("--default", "-D", dest="delete", action="store_true",
                        help="reset PROPERTY to its default value")
    parser.add_argument("property", metavar="PROPERTY", nargs="?",
                        help="name of the property to show or change")
    parser.add_argument("value", metavar="VALUE", nargs="?",
                        help="new value of the property ('none' clears a qube reference)")


def process(parser: argparse.ArgumentParser, args: argparse.Namespace,
            target: Qubes | VM) -> int:
    """List, get, set or reset properties of ``target``."""
    if args.help_properties:
        names = [args.property.replace("-", "_")] if args.property else target.property_list()
        if not names:
            return 0
        width = max(len(n) for n in names)
        wrapper = textwrap.TextWrapper(width=80, initial_indent="  ",
                                       subsequent_indent=" " * (width + 6))
        for name in sorted(names):
            try:
                text = target.property_help(name)
            except exc.QubesNoSuchPropertyError:
                raise _common.ToolError(f"no such property: {name!r}") from None
            print(wrapper.fill(f"{name:{width}s}  {text}"))
        return 0

    if args.property is None:
        if args.delete or args.value is not None:
            parser.error("--default and VALUE need a PROPERTY")
        names = target.property_list()
        props = target.get_all_properties()
        if not names:
            return 0
        width = max(len(n) for n in names)
        for name in sorted(names):
            prop = props.get(name)
            if prop is None:
                print(f"{name:{width}s}  U")
                continue
            value = "" if prop.value is None else str(prop.value)
            if not prop.is_default:
                print(f"{name:{width}s}  -  {value}".rstrip())
            elif not args.hide_default:
                print(f"{name:{width}s}  D  {value}".rstrip())
        return 0

    name = args.property.replace("-", "_")
    try:
        if args.value is not None:
            if args.delete:
                parser.error("--default cannot be combined with VALUE")
            value = args.value
            if value.lower() == "none" and name in VM_REF_NONE:
                value = ""
            target.set_property(name, value)
            return 0
        if args.delete:
            target.reset_property(name)
            return 0
        prop = target.get_property_info(name)
        if args.hide_default and prop.is_default:
            return 0
        if prop.value is not None:
            print(str(prop.value))
        return 0
    except exc.QubesNoSuchPropertyError:
        raise _common.ToolError(f"no such property: {name!r}") from None
    except exc.QubesException as err:
        raise _common.ToolError(error_message(err)) from None


def prefs_main(prog: str, argv: list[str] | None, with_vm: bool) -> int:
    description = (
        "List, get, set or reset the properties of a qube. With only VMNAME, every "
        "property is listed as 'name  FLAG  value', FLAG being '-' for an explicitly set "
        "value, 'D' for a default and 'U' for one that cannot be read."
        if with_vm else
        "List, get, set or reset global properties of the Qubes system. Without PROPERTY, "
        "every property is listed as 'name  FLAG  value' ('-' set, 'D' default).")
    parser = _common.ToolParser(prog=prog, description=description)
    if with_vm:
        parser.add_argument("domain", metavar="VMNAME", help="name of the qube")
    add_arguments(parser)
    args = parser.parse_intermixed_args(argv)

    def body() -> int:
        app = Qubes()
        target: Qubes | VM = app
        if with_vm:
            target = _common.resolve_vms(app, [args.domain])[0]
        return process(parser, args, target)

    return _common.run(prog, body)
