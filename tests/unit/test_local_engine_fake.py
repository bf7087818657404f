"""A stand-in for vLLM, to test the supervisor in milliseconds: /health, /metrics, a chat answer.

    python tests/unit/test_local_engine_fake.py --model M --host H --port P [options]

(The module also tests itself: its /metrics must parse the way vLLM's does.)

It takes the flags escalade's build_argv produces (`--model` comes from the command prefix
`[python, this file, --model]`) plus these, which a test puts in `engine.args`:

    --ready-after S      listen only after S seconds (vLLM does not answer while it loads)
    --exit-after S       exit with --exit-code after S seconds (a crash)
    --ignore-term        ignore SIGTERM (an engine that needs SIGKILL)
    --child              start a helper process in the same process group (like vLLM's workers)
    --state-dir D        D/waiting holds the queue depth to report; D/unhealthy makes /health 500;
                         every chat request body is appended to D/requests.jsonl
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--served-model-name")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ready-after", type=float, default=0.0)
    p.add_argument("--exit-after", type=float)
    p.add_argument("--exit-code", type=int, default=3)
    p.add_argument("--ignore-term", action="store_true")
    p.add_argument("--child", action="store_true")
    p.add_argument("--state-dir", type=Path)
    return p.parse_args(argv)


def _handler(args: argparse.Namespace) -> type[BaseHTTPRequestHandler]:
    state = args.state_dir

    def read(name: str, default: str) -> str:
        try:
            return (state / name).read_text().strip() if state else default
        except OSError:
            return default

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            pass

        def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/health":
                unhealthy = state is not None and (state / "unhealthy").exists()
                self._send(500 if unhealthy else 200, b"")
            elif self.path == "/metrics":
                waiting = read("waiting", "0")
                text = (
                    "# TYPE vllm:num_requests_waiting gauge\n"
                    f'vllm:num_requests_waiting{{engine="0",model_name="{args.model}"}} {waiting}\n'
                    f'vllm:num_requests_waiting_by_reason{{engine="0",reason="capacity"}} 99\n'
                    f'vllm:num_requests_running{{engine="0",model_name="{args.model}"}} 1.0\n'
                    f'vllm:kv_cache_usage_perc{{engine="0",model_name="{args.model}"}} 0.25\n'
                )
                self._send(200, text.encode(), "text/plain; version=0.0.4")
            else:
                self._send(404, b'{"error":"not found"}')

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            if state is not None:
                with (state / "requests.jsonl").open("ab") as f:
                    f.write(body + b"\n")
            answer = {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": 0,
                "model": json.loads(body).get("model", "fake"),
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "fake engine"}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            }
            self._send(200, json.dumps(answer).encode())

    return Handler


def main(argv: list[str]) -> None:
    args = _args(argv)
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.child:
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    if args.exit_after is not None:
        threading.Timer(args.exit_after, lambda: os._exit(args.exit_code)).start()
    time.sleep(args.ready_after)
    server = ThreadingHTTPServer((args.host, args.port), _handler(args))
    server.serve_forever()


FAKE_ENGINE = str(Path(__file__).resolve())
"""`engine.command: [sys.executable, FAKE_ENGINE, --model]` runs this fake as an engine."""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_fake_serves_what_the_supervisor_reads(tmp_path: Path) -> None:
    import httpx

    from local_engine.metrics import parse_metrics

    (tmp_path / "waiting").write_text("4")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, FAKE_ENGINE, "--model", "m", "--port", str(port), "--state-dir", str(tmp_path)]
    )
    try:
        for _ in range(200):
            try:
                metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.02)
        load = parse_metrics(metrics.text)
        assert (load.waiting, load.running, load.kv_cache_usage) == (4.0, 1.0, 0.25)
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main(sys.argv[1:])
