"""A static HTTP server on 127.0.0.1 for a TUF repository, as a CDN or ``python -m http.server`` would serve it,
counting what each client fetches; ``tools/fleet_sim.py`` and the update tests run one.

``endless``: paths (suffixes) answered with an endless body, as a malicious mirror would (the client must stop
at the signed length). ``delay_s``: a pause before every answer (a slow link).
"""
from __future__ import annotations

import functools
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Set


class _Handler(SimpleHTTPRequestHandler):
    server_version = "edgecv-static/1"

    def log_message(self, fmt, *args):  # quiet: the server's own log is ``requests``
        pass

    def do_GET(self):
        srv = self.server
        time.sleep(srv.delay_s)
        if any(self.path.endswith(s) for s in srv.endless):
            self._endless()
            return
        sent = _Counting(self.wfile)
        self.wfile = sent
        try:
            super().do_GET()
        finally:
            srv.record(self.client_address[0], self.headers.get("User-Agent", ""), self.path, sent.n)

    def _endless(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        chunk = b"\0" * 65536
        try:
            for _ in range(16384):  # 1 GiB at most: bounded even when a client never stops reading
                self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.server.record(self.client_address[0], self.headers.get("User-Agent", ""), self.path, -1)


class _Counting:
    def __init__(self, f):
        self.f, self.n = f, 0

    def write(self, b):
        self.n += len(b)
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)


class StaticServer(ThreadingHTTPServer):
    """Serve ``directory`` on 127.0.0.1 (an ephemeral port unless given); ``requests`` holds (path, bytes) per GET."""

    daemon_threads = True

    def __init__(self, directory: str, port: int = 0, endless: Optional[Set[str]] = None, delay_s: float = 0.0):
        super().__init__(("127.0.0.1", port), functools.partial(_Handler, directory=str(directory)))
        self.endless, self.delay_s = set(endless or ()), delay_s
        self.requests: List[Dict] = []
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def record(self, client: str, agent: str, path: str, n: int) -> None:
        with self._lock:
            self.requests.append({"path": path, "bytes": n, "agent": agent})

    def start(self) -> "StaticServer":
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(5)
