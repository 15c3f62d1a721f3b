#!/usr/bin/env python3
"""A loopback HTTP server whose every answer takes DELAY seconds, like a remote host's.

    python3 slow_server.py [DELAY]     prints "port N", then serves http://127.0.0.1:N/<anything>
"""
import http.server
import sys
import time

DELAY = float(sys.argv[1]) if len(sys.argv) > 1 else 0.2


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(DELAY)
        body = (self.path + "\n").encode() * 100
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default 5 drops connections that 8 workers open at once (1 s SYN retry)


server = Server(("127.0.0.1", 0), Handler)
print("port", server.server_address[1], flush=True)
server.serve_forever()
