#!/usr/bin/env python3
"""A logging smart-HTTP server for finding out how git clients authenticate.

Serves the repositories under ROOT with stock `git http-backend` (pushes
allowed) on 127.0.0.1:PORT and logs every request on stderr as one JSON line
(method, path, User-Agent, whether and how it carried credentials, the
status sent). It applies the rule planned for guts-node push tokens:

  * a receive-pack request (discovery GET or POST) without an Authorization
    header gets 401 with `WWW-Authenticate: Basic realm="guts"`, except a
    discovery GET whose User-Agent starts with `git/` or `JGit/` (--ua-rule);
    without --ua-rule every unauthenticated receive-pack request gets 401;
  * credentials are accepted when the Basic password (any user) or the
    Bearer token equals TOKEN, otherwise 401.

Usage: auth_probe.py ROOT PORT TOKEN [--ua-rule]
Not run by the test suite: a tool for the server-side design of push tokens.
"""

import base64
import json
import os
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT, PORT, TOKEN = sys.argv[1], int(sys.argv[2]), sys.argv[3]
UA_RULE = "--ua-rule" in sys.argv


def credentials(header):
    """(scheme, user, token-matches) of an Authorization header."""
    if not header:
        return None, None, False
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic":
        user, _, password = base64.b64decode(value).decode().partition(":")
        return "Basic", user, password == TOKEN
    if scheme.lower() == "bearer":
        return "Bearer", None, value.strip() == TOKEN
    return scheme, None, False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def decide(self):
        """None to serve the request, else the reason for a 401."""
        receive = "git-receive-pack" in self.path
        scheme, _, good = credentials(self.headers.get("Authorization"))
        if scheme is not None:
            return None if good else "wrong credentials"
        if not receive:
            return None
        ua = self.headers.get("User-Agent") or ""
        exempt = ua.startswith("git/") or ua.startswith("JGit/")
        if UA_RULE and self.command == "GET" and exempt:
            return None
        return "receive-pack without credentials"

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if not length and self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self.read_chunked()
        scheme, user, good = credentials(self.headers.get("Authorization"))
        reason = self.decide()
        entry = {
            "method": self.command,
            "path": self.path,
            "ua": self.headers.get("User-Agent"),
            "auth": scheme,
            "user": user,
            "token_ok": good,
            "git_protocol": self.headers.get("Git-Protocol"),
        }
        if reason:
            entry["status"] = 401
            entry["why"] = reason
            self.reply(401, {"WWW-Authenticate": 'Basic realm="guts"'}, b"auth needed\n")
        else:
            entry["status"] = self.cgi(body)
        print(json.dumps(entry), file=sys.stderr, flush=True)

    do_GET = handle_any
    do_POST = handle_any

    def read_chunked(self):
        out = b""
        while True:
            size = int(self.rfile.readline().split(b";")[0], 16)
            chunk = self.rfile.read(size + 2)
            if size == 0:
                return out
            out += chunk[:-2]

    def reply(self, status, headers, body):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def cgi(self, body):
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ["PATH"],
            "GIT_PROJECT_ROOT": ROOT,
            "GIT_HTTP_EXPORT_ALL": "1",
            "REMOTE_USER": "probe",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
        }
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = 200, {}
        for line in head.decode().split("\r\n"):
            k, _, v = line.partition(": ")
            if k.lower() == "status":
                status = int(v.split()[0])
            elif k:
                headers[k] = v
        self.reply(status, headers, payload)
        return status


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
