"""Run a container's command the way the container runs it, without a container engine.

Started by tests inside a private network and mount namespace (`unshare --net --mount --map-root-user`),
so the command can bind the ports its policy names (0.0.0.0:8080 and so on) without meeting anything
else on this machine, and the service names of a compose file resolve (an /etc/hosts of our own,
bind-mounted only inside the namespace). Optionally starts redis-server for the `redis` service.

    python netns_run.py SPEC.json   ->   prints one JSON object: what each probe got, and the exit code

SPEC: {"argv": [...], "env": {...}, "cwd": "...", "hosts": ["redis", ...], "redis_port": 6379 | null,
       "wait_for": "http://127.0.0.1:8080/healthz", "probes": [{"name", "method", "url", "headers", "body"}],
       "commands": {"name": [argv...]} run once the command answers (their exit code is the probe's status),
       "log": "path for the command's output"}
"""

import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def _request(method: str, url: str, headers: dict[str, str], body: bytes | None) -> tuple[int, str]:
    req = urllib.request.Request(url, method=method, headers=headers, data=body)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:
        return 0, repr(exc)


def _wait_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    hosts = Path(tempfile.mkdtemp()) / "hosts"
    hosts.write_text("127.0.0.1 localhost\n" + "".join(f"127.0.0.1 {h}\n" for h in spec["hosts"]))
    subprocess.run(["mount", "--bind", str(hosts), "/etc/hosts"], check=True)
    helpers: list[subprocess.Popen[bytes]] = []
    result: dict[str, object] = {"probes": {}}
    try:
        if spec.get("redis_port"):
            port = spec["redis_port"]
            helpers.append(
                subprocess.Popen(
                    ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
                    stdout=subprocess.DEVNULL,
                )
            )
            _wait_port(port, time.monotonic() + 10)
        with Path(spec["log"]).open("wb") as log:
            proc = subprocess.Popen(spec["argv"], env=spec["env"], cwd=spec["cwd"], stdout=log, stderr=log)
            deadline = time.monotonic() + 30
            status = 0
            while time.monotonic() < deadline and proc.poll() is None:
                status, _ = _request("GET", spec["wait_for"], {}, None)
                if status:
                    break
                time.sleep(0.1)
            result["started"] = bool(status)
            for probe in spec["probes"]:
                body = probe.get("body")
                data = json.dumps(body).encode() if body is not None else None
                headers = {**probe.get("headers", {}), **({"content-type": "application/json"} if data else {})}
                result["probes"][probe["name"]] = _request(probe.get("method", "GET"), probe["url"], headers, data)
            for name, argv in spec.get("commands", {}).items():
                done = subprocess.run(argv, env=spec["env"], capture_output=True, timeout=30, check=False)
                result["probes"][name] = (done.returncode, done.stderr.decode(errors="replace")[-2000:])
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                result["exit_code"] = proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                result["exit_code"] = "killed after 40 s"
    finally:
        for helper in helpers:
            helper.terminate()
            helper.wait(timeout=10)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
