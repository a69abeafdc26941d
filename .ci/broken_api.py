"""A known-bad HTTP API for checking the checker: serves the given OpenAPI document at
/openapi.json and answers every other request with a 500 JSON error.

    python3 .ci/broken_api.py PORT OPENAPI.json
"""

import http.server
import sys

PORT = int(sys.argv[1])
with open(sys.argv[2], "rb") as f:
    DOCUMENT = f.read()
BROKEN = b'{"error": {"code": "INTERNAL", "message": "broken on purpose"}}'


class Handler(http.server.BaseHTTPRequestHandler):
    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path == "/openapi.json":
            status, body = 200, DOCUMENT
        else:
            status, body = 500, BROKEN
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = answer

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
