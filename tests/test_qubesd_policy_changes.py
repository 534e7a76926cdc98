"""Every policy change is audited and swapped in whole; a refused one changes nothing."""

import json
import time

from qubesd_harness import QubesdProcess

USERS = """\
roles:
  viewer: [admin.vm.List]
users:
  alice:
    management: [alice-admin]
    grants: [{role: viewer, sets: [mine]}]
sets:
  mine: {domains: [work]}
"""


def audit(q: QubesdProcess) -> list[dict]:
    path = q.state_dir / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def changes(q: QubesdProcess) -> list[dict]:
    return [r for r in audit(q) if r["method"] == "policy-change"]


def test_api_and_file_changes_are_audited(tmp_path):
    with QubesdProcess(tmp_path / "q") as q:
        q.ok("policy.Replace", "dom0", "40-x", b"new\nadmin.vm.List * work @adminvm deny\n")
        (record,) = changes(q)
        assert (record["source"], record["argument"]) == ("dom0", "policy.Replace+40-x")
        assert record["previous_snapshot"] != record["snapshot"]
        q.ok("policy.acl.Replace", "dom0", "", b"new\n" + USERS.encode())
        assert changes(q)[-1]["argument"] == "policy.acl.Replace"
        (q.config_dir / "policy.d" / "41-y.policy").write_text(
            "admin.vm.List * work @adminvm deny\n")
        deadline = time.monotonic() + 10
        while len(changes(q)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert changes(q)[-1]["source"] == "file watcher"


def test_refused_change_leaves_files_snapshot_and_behaviour(tmp_path):
    with QubesdProcess(tmp_path / "q") as q:
        q.ok("admin.vm.Create.TemplateVM", "dom0", "", b"name=tpl label=black")
        q.ok("admin.property.Set", "dom0", "default_template", b"tpl")
        for name in ("work", "alice-admin"):
            q.ok("admin.vm.Create.AppVM", "dom0", "", f"name={name} label=red".encode())
        q.ok("policy.Replace", "dom0", "30-alice",
             b"new\nadmin.vm.List * alice-admin @adminvm allow target=dom0\n"
             b"admin.vm.List * alice-admin @anyvm allow target=dom0\n")
        q.ok("policy.acl.Replace", "dom0", "", b"new\n" + USERS.encode())
        seen = q.ok("admin.vm.List", "dom0", src="alice-admin")
        assert seen.startswith("work ") and seen.count("\n") == 1
        users_file = (q.config_dir / "userdomains.yaml").read_bytes()
        before = len(changes(q))
        token = q.ok("policy.acl.Get").split("\n", 1)[0]
        name, message = q.error("policy.acl.Replace", "dom0", "",
                                f"{token}\nroles: {{viewer: [admin.vm.List]}}\nusers: "
                                "{bob: {grants: [{role: nosuch, sets: [mine]}]}}\nsets: {mine: {}}\n".encode())
        assert name == "PolicyAdminSyntaxException" and ":2:" in message and "nosuch" in message
        name, message = q.error("policy.Replace", "dom0", "30-alice",
                                b"any\nadmin.vm.List * alice-admin @anyvm allow target=\n")
        assert name == "PolicyAdminSyntaxException" and "30-alice.policy:1" in message
        assert (q.config_dir / "userdomains.yaml").read_bytes() == users_file
        assert len(changes(q)) == before
        assert q.ok("admin.vm.List", "dom0", src="alice-admin") == seen


QUARANTINE = """\
roles:
  owner: [admin.vm.List, admin.vm.Start, admin.vm.tag.Set, admin.vm.tag.Remove,
          admin.vm.tag.List]
  run: [admin.vm.Start]
users:
  alice:
    management: [alice-admin]
    grants:
      - {role: owner, sets: [mine]}
      - {role: run, sets: [quarantine], effect: deny}
sets:
  mine: {domains: [work]}
  quarantine: {tags: [quarantine]}
"""


def test_a_deny_set_cannot_be_escaped_by_removing_its_tag(tmp_path):
    policy = tmp_path / "q" / "etc" / "policy.d"
    policy.mkdir(parents=True)
    (policy / "30-alice.policy").write_text(
        "".join(f"{m} * alice-admin @anyvm allow target=dom0\n" for m in (
            "admin.vm.Start", "admin.vm.tag.Set", "admin.vm.tag.Remove", "admin.vm.tag.List")))
    (tmp_path / "q" / "etc" / "userdomains.yaml").write_text(QUARANTINE)
    with QubesdProcess(tmp_path / "q") as q:
        q.ok("admin.vm.Create.TemplateVM", "dom0", "", b"name=tpl label=black")
        q.ok("admin.property.Set", "dom0", "default_template", b"tpl")
        for name in ("work", "alice-admin"):
            q.ok("admin.vm.Create.AppVM", "dom0", "", f"name={name} label=red".encode())
        q.ok("admin.vm.tag.Set", "work", "quarantine")  # dom0 quarantines it
        assert q.error("admin.vm.Start", "work", src="alice-admin")[0] == "PermissionDenied"
        before = q.xml.read_bytes()
        assert q.error("admin.vm.tag.Remove", "work", "quarantine",
                       src="alice-admin")[0] == "PermissionDenied"
        assert q.xml.read_bytes() == before
        assert q.error("admin.vm.Start", "work", src="alice-admin")[0] == "PermissionDenied"
        q.ok("admin.vm.tag.Set", "work", "harmless", src="alice-admin")  # others are hers
        refusal = next(r for r in audit(q) if r["method"] == "admin.vm.tag.Remove")
        assert "decides membership of set(s) quarantine" in refusal["reasons"]["value"]
