#!/usr/bin/env python3
"""Smart HTTP git server for the Argo CD tests: serves every bare repository under ROOT
at http://127.0.0.1:PORT/<name>.git through git's own git-http-backend (CGI), read-only.

    git-http.py ROOT PORT_FILE

Listens on a free loopback port and writes it to PORT_FILE once it accepts connections.
"""
import http.server
import os
import subprocess
import sys
import urllib.parse

BACKEND = os.path.join(
    subprocess.run(["git", "--exec-path"], check=True, capture_output=True, text=True).stdout.strip(),
    "git-http-backend",
)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: no keep-alive bookkeeping

    def do_GET(self):
        self.cgi()

    def do_POST(self):
        self.cgi()

    def cgi(self):
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": self.server.root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": urllib.parse.unquote(url.path),
            "QUERY_STRING": url.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
        }
        done = subprocess.run([BACKEND], input=body, env=env, capture_output=True)
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = done.stdout.partition(b"\n\n")
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        if done.returncode != 0 and status == 200:
            status = 500
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: git-http.py ROOT PORT_FILE")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.root = os.path.abspath(sys.argv[1])
    port_file = sys.argv[2]
    with open(port_file + ".partial", "w") as f:
        f.write("%d\n" % server.server_address[1])
    os.rename(port_file + ".partial", port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
