#!/usr/bin/env python3
"""A misbehaving HTTP server on 127.0.0.1 for the download tests; standard library only.

Prints "port N" on the first line of stdout once it listens, then serves until killed.

  /bytes/N?seed=S        200, N bytes: byte i is (i * 7 + S) % 251, with Content-Length
  /status/CODE           that status, a short body
  /flaky/KEY/N           500 for the first N requests of KEY, then 200 "recovered KEY"
  /redirect?to=URL       302 to URL (file:///etc/passwd, ftp://..., or a relative path)
  /loop/N                302 to /loop/N+1, for ever
  /stall                 200 with Content-Length 100000, 10 bytes, then silence
  /stall-headers         reads the request, then never answers
  /drip                  200 with Content-Length 100000, then one byte a second
  /truncated             200 with Content-Length 100000, 5000 bytes, then hangs up
  /huge?length=N         200, N bytes with Content-Length
  /huge-chunked?length=N 200, N bytes without Content-Length (chunked)
  /huge-close?length=N   200, N bytes without Content-Length, ended by closing (HTTP/1.0 style)
  /named?cd=VALUE        200 "named body" with Content-Disposition: VALUE (raw, as given)
  /count/KEY             how many requests KEY has seen: /flaky/KEY/N, or any URL with ?key=KEY
  /peer                  200, the client's port: the same on a kept-alive connection
  /any/...               200 "any body", whatever the rest of the path
"""

import http.server
import sys
import threading
import time
import urllib.parse

counts = {}
counts_lock = threading.Lock()


def count(key):
    with counts_lock:
        counts[key] = counts.get(key, 0) + 1
        return counts[key]


def pattern(n, seed):
    return bytes((i * 7 + seed) % 251 for i in range(n))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_body(self, code, body, headers=()):
        self.send_response(code)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def stream(self, length, chunk=65536):
        sent = 0
        block = b"x" * chunk
        while sent < length:
            part = block[: min(chunk, length - sent)]
            self.wfile.write(part)
            sent += len(part)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        parts = url.path.strip("/").split("/")
        try:
            self.route(parts, query)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def route(self, parts, query):
        head = parts[0]
        if "key" in query and head != "count":
            count(query["key"][0])
        if head == "bytes":
            seed = int(query.get("seed", ["0"])[0])
            self.send_body(200, pattern(int(parts[1]), seed))
        elif head == "status":
            self.send_body(int(parts[1]), b"status body\n")
        elif head == "peer":
            self.send_body(200, str(self.client_address[1]).encode())
        elif head == "any":
            self.send_body(200, b"any body")
        elif head == "flaky":
            key, failures = parts[1], int(parts[2])
            if count(key) <= failures:
                self.send_body(500, b"try again\n")
            else:
                self.send_body(200, b"recovered " + key.encode())
        elif head == "count":
            with counts_lock:
                self.send_body(200, str(counts.get(parts[1], 0)).encode())
        elif head == "redirect":
            self.send_body(302, b"", [("Location", query["to"][0])])
        elif head == "loop":
            self.send_body(302, b"", [("Location", "/loop/%d" % (int(parts[1]) + 1))])
        elif head == "stall":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.wfile.flush()
            time.sleep(120)
        elif head == "stall-headers":
            time.sleep(120)
        elif head == "drip":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            for _ in range(120):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(1)
        elif head == "truncated":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"t" * 5000)
            self.wfile.flush()
            self.close_connection = True
        elif head == "huge":
            length = int(query["length"][0])
            self.send_response(200)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.stream(length)
        elif head == "huge-chunked":
            length = int(query["length"][0])
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            sent = 0
            while sent < length:
                n = min(65536, length - sent)
                self.wfile.write(b"%x\r\n" % n + b"c" * n + b"\r\n")
                sent += n
            self.wfile.write(b"0\r\n\r\n")
        elif head == "huge-close":
            length = int(query["length"][0])
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.stream(length)
            self.close_connection = True
        elif head == "named":
            self.send_body(200, b"named body", [("Content-Disposition", query["cd"][0])])
        else:
            self.send_body(404, b"no such thing\n")


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # clients hanging up mid-response is what the tests do on purpose


def main():
    server = Server(("127.0.0.1", 0), Handler)
    print("port", server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
