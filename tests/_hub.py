"""A local HTTP server that answers like the Hugging Face Hub's file URLs
(``/{repo}/resolve/{revision}/{path}``: HEAD with X-Repo-Commit, ETag and Content-Length,
GET with Range), serving folders as repositories. ``stablecodec download`` is tested against
it through ``HF_ENDPOINT``, with the real huggingface_hub client."""

import hashlib
import http.server
import re
import threading
from pathlib import Path

class Hub(http.server.BaseHTTPRequestHandler):
    repos = {}  # "org/name" -> folder
    log = []
    def _file(self):
        m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", self.path.split("?")[0])
        if not m or m.group(1) not in self.repos:
            return None
        p = Path(self.repos[m.group(1)]) / m.group(3)
        return p if p.is_file() else None
    def _headers(self, p, status=200, start=0, end=None):
        data = p.read_bytes()
        end = len(data) - 1 if end is None else end
        self.send_response(status)
        self.send_header("X-Repo-Commit", "a" * 40)
        self.send_header("ETag", '"%s"' % hashlib.sha256(data).hexdigest())
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        return data[start : end + 1]
    def do_HEAD(self):
        self.log.append(("HEAD", self.path))
        p = self._file()
        if p is None:
            self.send_response(404); self.send_header("X-Error-Code", "EntryNotFound"); self.end_headers(); return
        self._headers(p)
    def do_GET(self):
        self.log.append(("GET", self.path))
        p = self._file()
        if p is None:
            self.send_response(404); self.send_header("Content-Length", "0"); self.end_headers(); return
        rng = self.headers.get("Range")
        if rng:
            a, b = re.match(r"bytes=(\d*)-(\d*)", rng).groups()
            n = p.stat().st_size
            data = self._headers(p, 206, int(a or 0), int(b) if b else n - 1)
        else:
            data = self._headers(p)
        self.wfile.write(data)
    def log_message(self, *a): pass

def serve(repos):
    Hub.repos = repos
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv
