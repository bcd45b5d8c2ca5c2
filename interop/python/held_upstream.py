"""The example forecast service (examples/paywall-python/service.py) with one addition for tests:
a GET whose query has `hold` waits, before it is answered, for as long as the file
HOLD_DIR/hold exists (at most a minute), after writing HOLD_DIR/arrived. A test uses it to act
between a paywall's verification and its settlement.

Usage: held_upstream.py HOLD_DIR  (prints "forecast service on http://HOST:PORT" first)
"""

import importlib.util
import os
import sys
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "paywall-python" / "service.py"
spec = importlib.util.spec_from_file_location("forecast_service", EXAMPLE)
service = importlib.util.module_from_spec(spec)
spec.loader.exec_module(service)

HOLD_DIR = Path(sys.argv[1])


class Held(service.Handler):
    def do_GET(self):
        if "hold" in self.path.partition("?")[2]:
            (HOLD_DIR / "arrived").write_text("1")
            deadline = time.monotonic() + 60
            while (HOLD_DIR / "hold").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        super().do_GET()


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Held)
    host, port = server.server_address[:2]
    print(f"forecast service on http://{host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
