"""Air-gapped for real: a bundle serves a chat inside a network namespace with only loopback.

`unshare --net` gives the bundle (and the HTTP client, which must share its loopback) a
network stack of their own with nothing but `lo`: no interface, no route, no DNS server.
Inside it the client first proves there is no way out (a connection to 1.1.1.1 fails at
once with ENETUNREACH), then waits for /health, asks for a greedy chat completion and prints
the result as JSON. The reply must equal what `python3 -m runtime.cli run` gives for the same
request on the same GGUF with the network available: nothing the bundle needs is fetched.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import BUNDLE_MODEL as MODEL
from tests.e2e.conftest import ROOT, bundle_cmd, bundle_env, session_bundle

REQUEST = {"messages": [{"role": "user", "content": "Say hello."}], "temperature": 0,
           "max_tokens": 12, "seed": 1}
PORT = 8080  # a fresh namespace has no other listener
START_TIMEOUT_S = 120

pytestmark = pytest.mark.slow

# Runs inside the namespace: argv = server pid, port, request JSON, start timeout.
CLIENT = r'''
import json, socket, sys, time, urllib.request
pid, port, request, timeout_s = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3]), float(sys.argv[4])
out = {"interfaces": [name for _, name in socket.if_nameindex()]}
t0 = time.monotonic()
try:
    socket.create_connection(("1.1.1.1", 80), timeout=5).close()
    out["outside"] = {"connected": True}
except OSError as e:
    out["outside"] = {"errno": e.errno, "error": str(e), "seconds": time.monotonic() - t0}

def server_alive():
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

base = f"http://127.0.0.1:{port}"
t0 = time.monotonic()
while True:
    try:
        with urllib.request.urlopen(base + "/health", timeout=2) as r:
            if r.status == 200:
                break
    except OSError:
        pass
    if not server_alive() or time.monotonic() - t0 > timeout_s:
        out["error"] = "the bundle exited" if not server_alive() else "no /health 200 in time"
        print(json.dumps(out))
        sys.exit(1)
    time.sleep(0.1)
out["startup_s"] = time.monotonic() - t0
req = urllib.request.Request(base + "/v1/chat/completions", json.dumps(request).encode(),
                             {"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=120) as r:
    out["reply"] = json.load(r)["choices"][0]["message"]["content"]
print(json.dumps(out))
'''

# Runs inside the namespace under sh: bring loopback up, start the bundle, run the client.
SHELL = r'''
ip link set lo up || exit 97
"$@" --no-browser --port "$PORT" > "$SERVER_LOG" 2>&1 &
srv=$!
"$PYTHON" "$CLIENT" "$srv" "$PORT" "$REQUEST" "$START_TIMEOUT_S"
rc=$?
kill "$srv" 2>/dev/null
wait "$srv"
exit $rc
'''


def _unshare_prefix() -> list[str]:
    """The command prefix that enters a new network namespace, or skip with the reason."""
    if not shutil.which("unshare"):
        pytest.skip("`unshare` (util-linux) is not installed: cannot make a network namespace")
    if not shutil.which("ip"):
        pytest.skip("`ip` (iproute2) is not installed: cannot bring loopback up in a namespace")
    # As root a plain network namespace will do; otherwise map ourselves to root in a user
    # namespace first (needs unprivileged user namespaces).
    prefix = ["unshare", "--net"] if os.geteuid() == 0 else \
        ["unshare", "--user", "--map-root-user", "--net"]
    probe = subprocess.run([*prefix, "ip", "link", "set", "lo", "up"], capture_output=True,
                           text=True, timeout=30)
    if probe.returncode:
        pytest.skip(f"cannot create a network namespace here ({' '.join(prefix)}): "
                    f"{probe.stderr.strip() or probe.returncode}")
    return prefix


@pytest.fixture(scope="module")
def reference_reply(reference_server):
    req = urllib.request.Request(reference_server.url + "/v1/chat/completions",
                                 json.dumps(REQUEST).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)["choices"][0]["message"]["content"]


@pytest.fixture(scope="module")
def reference_server(request):
    """`python3 -m runtime.cli run` on the same GGUF, with the network as it is."""
    if not (ROOT / "runtime" / "cli.py").is_file():
        pytest.skip("runtime/cli.py does not exist yet: no reference server")
    # start_server() of tests/e2e/conftest.py. `import conftest` could give another
    # directory's conftest, so take the module pytest loaded for this directory.
    here = Path(__file__).with_name("conftest.py")
    e2e = next(p for p in request.config.pluginmanager.get_plugins()
               if getattr(p, "__file__", None) and Path(p.__file__) == here)
    h = e2e.start_server(MODEL, "--ctx", "256")
    yield h
    h.stop()


@pytest.mark.parametrize("fmt", ["pyz", "exe"])
def test_bundle_chats_without_a_network(tmp_path_factory, tmp_path, fmt, reference_reply):
    prefix = _unshare_prefix()
    bundle = session_bundle(tmp_path_factory, fmt)
    client = tmp_path / "client.py"
    client.write_text(CLIENT)
    log = tmp_path / "server.log"
    env = dict(bundle_env(tmp_path_factory), PORT=str(PORT), SERVER_LOG=str(log),
               PYTHON=sys.executable, CLIENT=str(client), REQUEST=json.dumps(REQUEST),
               START_TIMEOUT_S=str(START_TIMEOUT_S))
    r = subprocess.run([*prefix, "sh", "-c", SHELL, "sh", *bundle_cmd(bundle, fmt)],
                       capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=START_TIMEOUT_S + 180)
    server_output = log.read_text(errors="replace") if log.exists() else "(no log)"
    assert r.returncode == 0, (f"exit {r.returncode}\nclient: {r.stdout}{r.stderr}\n"
                               f"bundle: {server_output[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"\n{fmt} air-gapped: exec -> /health 200 in {out['startup_s']:.2f} s; "
          f"outside connection: {out['outside']}")

    # The namespace really has no network: only loopback, and no route out.
    assert out["interfaces"] == ["lo"]
    assert out["outside"].get("errno") == errno.ENETUNREACH, out["outside"]
    assert out["outside"]["seconds"] < 1.0
    # ...and the bundle still answers, exactly as the runtime does with a network.
    assert out["reply"], "empty reply"
    assert out["reply"] == reference_reply
