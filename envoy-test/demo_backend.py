#!/usr/bin/env python3
"""Demo backends for envoy-test: one tiny HTTP server per NAME=PORT argument,
all in this process, on 127.0.0.1. Each answers every request with JSON naming
itself and echoing the request headers it received, so the demo can show
where Envoy sent a request and which gray tag reached the upstream."""

import http.server
import json
import sys
import threading


def handler_for(name):
    class Echo(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes: without this, Nagle and
        # delayed ACKs cost 40 ms a request on a keep-alive connection.
        disable_nagle_algorithm = True

        def answer(self):
            body = json.dumps(
                {"backend": name, "headers": [[k.lower(), v] for k, v in self.headers.items()]}
            ).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("x-echo-backend", name)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = answer

        def log_message(self, *args):
            pass

    return Echo


def main(pairs):
    servers = []
    for pair in pairs:
        name, _, port = pair.partition("=")
        server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), handler_for(name))
        server.daemon_threads = True
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        print(f"demo backend {name} on 127.0.0.1:{port}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: demo_backend.py NAME=PORT...")
    main(sys.argv[1:])
