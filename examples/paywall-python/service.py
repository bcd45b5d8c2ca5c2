"""A small forecast API, written with the Python standard library only, knowing nothing of payments.

`bursar paywall` sells its routes (see paywall.toml):

    GET  /forecast/<city>[?days=N]   a made-up forecast (paid)
    POST /summarize                  a JSON body {"text": ...} summarized (paid)
    GET  /broken                     always fails with 500 (paid: the failure is never charged)
    GET  /echo-headers               the request headers this service received (free)
    POST /echo-headers               the same, for a POST (paid in the tests)
    GET  /health                     {"ok": true} (free)

Run: python3 service.py [--host 127.0.0.1] [--port 8000]. With --port 0 the system picks a free
port. The first line printed is "forecast service on http://HOST:PORT".
"""

import argparse
import json
import sys
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

CONDITIONS = ["sunny", "cloudy", "rain", "windy", "snow"]
BODY_BYTES_MAX = 1 << 20


def forecast(city, days):
    """The same made-up forecast for the same city, every time."""
    seed = zlib.crc32(city.lower().encode("utf-8"))
    return {
        "city": city,
        "days": [
            {
                "day": day + 1,
                "highC": 10 + (seed >> (day % 16)) % 20,
                "conditions": CONDITIONS[(seed + day) % len(CONDITIONS)],
            }
            for day in range(days)
        ],
        "source": "forecast-service",
    }


class Handler(BaseHTTPRequestHandler):
    server_version = "forecast-service/1"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        sys.stderr.write("%s %s\n" % (self.address_string(), format % args))

    def answer(self, status, document):
        body = json.dumps(document).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def read_body(self):
        """The request body, by Content-Length or chunked; None if it is too large."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > BODY_BYTES_MAX:
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > BODY_BYTES_MAX:
            return None
        return self.rfile.read(length)

    def do_GET(self):
        url = urlsplit(self.path)
        segments = url.path.split("/")[1:]
        if len(segments) == 2 and segments[0] == "forecast" and segments[1]:
            query = parse_qs(url.query)
            try:
                days = max(1, min(7, int(query.get("days", ["3"])[0])))
            except ValueError:
                return self.answer(400, {"error": "days must be a number"})
            return self.answer(200, forecast(unquote(segments[1]), days))
        if url.path == "/broken":
            return self.answer(500, {"error": "the forecast model is down"})
        if url.path == "/echo-headers":
            return self.answer(200, {"headers": {k.lower(): v for k, v in self.headers.items()}})
        if url.path == "/health":
            return self.answer(200, {"ok": True})
        return self.answer(404, {"error": "not found"})

    def do_HEAD(self):
        self.do_GET()

    def do_POST(self):
        path = urlsplit(self.path).path
        if path not in ("/summarize", "/echo-headers"):
            return self.answer(404, {"error": "not found"})
        body = self.read_body()
        if body is None:
            self.close_connection = True
            return self.answer(413, {"error": "body too large"})
        if path == "/echo-headers":
            return self.answer(200, {"headers": {k.lower(): v for k, v in self.headers.items()}})
        try:
            text = json.loads(body)["text"]
            if not isinstance(text, str):
                raise TypeError("text is not a string")
        except (ValueError, KeyError, TypeError):
            return self.answer(400, {"error": 'send a JSON body {"text": "..."}'})
        words = text.split()
        return self.answer(
            200,
            {
                "words": len(words),
                "characters": len(text),
                "summary": " ".join(words[:8]) + (" ..." if len(words) > 8 else ""),
                "shouted": text.upper(),
            },
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    host, port = server.server_address[:2]
    print(f"forecast service on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
