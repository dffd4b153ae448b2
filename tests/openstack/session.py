"""An OpenStack user's session against an atoll, with unmodified clients.

Run by tests/openstack.rs: the `openstack` command of python-openstackclient
(next to this Python), then the same flow through openstacksdk. Arguments:
AUTH_URL ADMIN_PASSWORD IMAGE_FILE HOME_REGION FAR_REGION OTHER_REGION
(IMAGE_FILE: a process image, Atoll's tar with a manifest).
Exits non-zero, saying which step failed, at the first surprise.
"""

import json
import os
import subprocess
import sys
import time

import openstack

auth_url, password, image_file, home, far, other = sys.argv[1:7]
image = "hello"
cli = os.path.join(os.path.dirname(sys.executable), "openstack")
env = dict(
    os.environ,
    OS_AUTH_URL=auth_url,
    OS_USERNAME="admin",
    OS_PASSWORD=password,
    OS_PROJECT_NAME="default",
    OS_USER_DOMAIN_NAME="Default",
    OS_PROJECT_DOMAIN_NAME="Default",
    OS_IDENTITY_API_VERSION="3",
)


def step(what):
    print(f"== {what}", flush=True)


def run(*args, region=None, ok=True, extra_env=None):
    cmd = [cli] + (["--os-region-name", region] if region else []) + list(args)
    out = subprocess.run(cmd, env=dict(env, **(extra_env or {})), capture_output=True, text=True, timeout=120)
    if ok and out.returncode != 0:
        sys.exit(f"`openstack {' '.join(args)}` failed:\n{out.stdout}{out.stderr}")
    if not ok and out.returncode == 0:
        sys.exit(f"`openstack {' '.join(args)}` succeeded but should not have:\n{out.stdout}")
    return out


def js(*args, region=None):
    return json.loads(run(*args, "-f", "json", region=region).stdout)


def until(what, check, secs=60):
    deadline = time.time() + secs
    while time.time() < deadline:
        if check():
            return
        time.sleep(1)
    sys.exit(f"timed out waiting for {what}")


step("login and catalog: one region per site")
token = js("token", "issue")
assert token["project_id"] == "default", token
catalog = run("catalog", "list").stdout
for site in (home, far, other):
    assert site in catalog, f"{site} missing from the catalog:\n{catalog}"

step("flavor")
run("flavor", "create", "--vcpus", "1", "--ram", "64", "--disk", "0", "m1.tiny")
assert any(f["Name"] == "m1.tiny" for f in js("flavor", "list")), "m1.tiny not listed"

step("image upload on the home region; the peer computes its digest")
run("image", "create", "--file", image_file, "--disk-format", "raw", "--container-format", "ova", image, region=home)
shown = js("image", "show", image, region=home)
assert shown["status"] == "active" and home in shown["properties"]["stores"], shown

step("a server on the far region, through this peer")
server = js("server", "create", "--image", image, "--flavor", "m1.tiny", "--wait", "web", region=far)
assert server["status"] == "ACTIVE", server
listed = js("server", "list", region=far)
assert [s["Name"] for s in listed] == ["web"], listed
assert js("server", "list", region=home) == [], "the home region lists the far server"

step("console log")
until("the server's output", lambda: "hello" in run("console", "log", "show", "web", region=far).stdout)

step("stop and start")
run("server", "stop", "web", region=far)
until("SHUTOFF", lambda: js("server", "show", "web", region=far)["status"] == "SHUTOFF")
run("server", "start", "web", region=far)
until("ACTIVE", lambda: js("server", "show", "web", region=far)["status"] == "ACTIVE")

step("limits and quota")
limits = {r["Name"]: r["Value"] for r in js("limits", "show", "--absolute")}
assert limits["instances"] >= 1 and limits["instances_used"] >= 1, limits
run("flavor", "create", "--vcpus", "1", "--ram", "4000000", "m1.huge")
refused = run("server", "create", "--image", image, "--flavor", "m1.huge", "big", region=far, ok=False)
assert "403" in refused.stderr and "quota" in refused.stderr, refused.stderr

step("projects, users and roles")
run("project", "create", "lab")
run("user", "create", "--password", "carol-password-1", "carol")
run("role", "add", "--project", "lab", "--user", "carol", "member")
carol = {"OS_USERNAME": "carol", "OS_PASSWORD": "carol-password-1", "OS_PROJECT_NAME": "lab"}
out = run("server", "list", "-f", "json", region=far, extra_env=carol)
assert json.loads(out.stdout) == [], "carol sees servers of another project"

step("what is not supported says so")
out = run("keypair", "list", ok=False)
assert "not supported" in out.stderr, out.stderr

step("delete")
run("server", "delete", "--wait", "web", region=far)
assert js("server", "list", region=far) == [], "the server is still listed"

step("openstacksdk: the same flow on another region")
conn = openstack.connect(
    auth_url=auth_url,
    username="admin",
    password=password,
    project_name="default",
    user_domain_name="Default",
    project_domain_name="Default",
    region_name=other,
)
uploaded = conn.image.create_image("sdk-image", filename=image_file, disk_format="raw", container_format="ova")
assert "sdk-image" in [i.name for i in conn.image.images()], "the sdk's upload is not listed"
conn.image.delete_image(uploaded)
img = conn.image.find_image(image, ignore_missing=False)
flavor = conn.compute.find_flavor("m1.tiny", ignore_missing=False)
srv = conn.compute.create_server(name="sdk", image_id=img.id, flavor_id=flavor.id)
srv = conn.compute.wait_for_server(srv, status="ACTIVE", wait=60)
assert [s.name for s in conn.compute.servers()] == ["sdk"]
until("the sdk server's output", lambda: "hello" in (conn.compute.get_server_console_output(srv).get("output") or ""))
conn.compute.stop_server(srv)
conn.compute.wait_for_server(srv, status="SHUTOFF", wait=60)
conn.compute.delete_server(srv)
conn.compute.wait_for_delete(srv, wait=60)
print("the OpenStack session passed", flush=True)
