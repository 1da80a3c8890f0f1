#!/usr/bin/env python3
"""A push handler: a plain HTTP server that Warren POSTs a queue's messages to.

Standard library only (no Warren client, no gRPC). Run it beside a Warren
whose config has a [[push]] entry pointing at it, such as
config/examples/push.toml (queue "jobs", url http://127.0.0.1:8080/):

    python3 push_handler.py --port 8080 &
    warren --config config/examples/push.toml      # from the repository's root
    curl -s localhost:5680/v1/publish --json '{"exchange": "amq.direct", "routing_key": "jobs", "body": "hello"}'

Each POST carries the body as published, its Content-Type, the message's
properties as CloudEvents headers (ce-id, ce-type, ce-source...) and
x-warren-attempt. The answer settles the message: 200 acks it. A body
"retry" is answered 503 with Retry-After: 1 on its first attempt (Warren
pushes it again a second later, as attempt 2) and 200 after; a body "poison"
is answered 400 (Warren dead-letters it, to jobs.dlq). Prints one JSON line
per POST.
"""

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HEADER_PREFIX = "x-warren-header-"  # a message's string-valued application headers


def answer(body: str, attempt: int) -> int:
    """The status for one push; Warren settles the message by it."""
    if body == "poison":
        return 400  # any 4xx but 429: dead-lettered
    if body == "retry" and attempt == 1:
        return 503  # 429 or 5xx: retried, after Retry-After
    return 200  # 2xx: acked


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: Warren reuses its connections

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        text = body.decode("utf-8", "replace")
        attempt = int(self.headers.get("x-warren-attempt", "1"))
        status = answer(text, attempt)
        self.send_response(status)
        if status == 503:
            self.send_header("Retry-After", "1")  # seconds
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.server.received({
            "id": self.headers.get("ce-id"),
            "attempt": attempt,
            "body": text,
            "content_type": self.headers.get("Content-Type"),
            "ce": {k.lower(): v for k, v in self.headers.items() if k.lower().startswith("ce-")},
            "headers": {k.lower()[len(HEADER_PREFIX):]: v for k, v in self.headers.items()
                        if k.lower().startswith(HEADER_PREFIX)},
            "status": status,
            "at": time.time(),
        })

    def log_message(self, format, *args) -> None:
        pass  # the JSON lines say it all


class PushServer(ThreadingHTTPServer):
    """Counts the messages settled for good (answered other than 503)."""

    def __init__(self, address, count: int):
        super().__init__(address, Handler)
        self.count, self.settled = count, 0
        self.lock = threading.Lock()
        self.done = threading.Event()

    def received(self, push: dict) -> None:
        with self.lock:
            print(json.dumps(push), flush=True)
            if push["status"] != 503:
                self.settled += 1
                if self.settled == self.count:
                    self.done.set()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="0 picks a free port (default: %(default)s)")
    p.add_argument("--count", type=int, default=0, help="exit after N messages acked or dead-lettered")
    p.add_argument("--timeout", type=float, help="exit with an error after this many seconds")
    args = p.parse_args()

    server = PushServer((args.host, args.port), args.count)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}/", file=sys.stderr, flush=True)
    try:
        finished = server.done.wait(args.timeout)
    except KeyboardInterrupt:
        finished = True
    server.shutdown()
    server.server_close()
    if not finished:
        sys.exit(f"error: timed out after {args.timeout}s with {server.settled} message(s) settled")


if __name__ == "__main__":
    main()
