"""Runs the example agent (Strands Agents, scripted model) against a fresh `bursar dev` and checks what it paid on chain.

1. starts `bursar dev` (embedded chain, facilitator, demo API with paid MCP tools, runtime) on
   free loopback ports in a temporary directory;
2. opens a session with a 0.005 USDC budget through the runtime's operator API;
3. runs agent.py over stdio (it spawns `bursar mcp`): five paid calls of 0.001 (the demo API's
   /joke and the demo MCP tool `joke`, alternately), then a refusal when the budget is spent;
4. opens a second session (0.004) and runs the agent over streamable HTTP (`bursar mcp --listen`,
   the token as bearer): four paid calls, then a refusal; a forged token pays nothing;
5. checks the buyer and the seller balances moved by exactly what was paid.

Usage: test_agent.py --bursar path/to/bursar   (exit 0 when every check passes)
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
PRICE = 1_000  # the demo joke, in atomic units (0.001 USDC)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(method: str, url: str, token: str | None = None, body: dict | None = None) -> dict:
    request = urllib.request.Request(url, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, data=data, timeout=30) as response:
        return json.loads(response.read())


def start_dev(bursar: str, data_dir: str) -> tuple[subprocess.Popen, dict]:
    ports = [str(free_port()) for _ in range(3)]
    dev = subprocess.Popen(
        [bursar, "dev", "--data-dir", data_dir, "--facilitator-port", ports[0],
         "--api-port", ports[1], "--runtime-port", ports[2]],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if dev.poll() is not None:
            raise RuntimeError(f"bursar dev exited with {dev.returncode}")
        try:
            with open(os.path.join(data_dir, "dev.json")) as file:
                info = json.load(file)
            http("GET", f"{info['runtimeUrl']}/health")
            return dev, info
        except (OSError, ValueError):
            time.sleep(0.2)
    raise RuntimeError("bursar dev did not start within 60 s")


def open_session(info: dict, budget: str) -> str:
    key, runtime = info["operatorKey"], info["runtimeUrl"]
    grant = http("POST", f"{runtime}/v1/grants", key, {"walletId": "demo", "agent": "example-agent"})
    session = http("POST", f"{runtime}/v1/sessions", key,
                   {"grantId": grant["id"], "maxSpendAmount": budget, "currency": "USDC"})
    return session["token"]


def balance(info: dict, address: str) -> int:
    return int(http("GET", f"{info['facilitatorUrl']}/dev/balance/{address}")["balance"])


def run_agent(bursar: str, info: dict, token: str, mcp_url: str | None = None) -> dict:
    command = [sys.executable, os.path.join(HERE, "agent.py"), "--session", token,
               "--runtime-url", info["runtimeUrl"], "--bursar", bursar,
               "--resource", f"{info['apiUrl']}/joke", "--tools", f"{info['apiUrl']}/mcp",
               "--tool", "joke"]
    if mcp_url:
        command += ["--mcp-url", mcp_url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise AssertionError(f"agent failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_paid_until_refused(report: dict, paid_steps: int) -> None:
    assert report["tools"] == ["fetch", "call_tool", "search", "budget"], report
    steps = report["steps"]
    assert len(steps) == paid_steps + 1, report
    for step in steps[:paid_steps]:
        assert step["status"] == 200 and step["paidAtomic"] == str(PRICE), report
    assert steps[-1]["refused"], report
    assert "budget" in steps[-1]["refused"], report
    assert report["stopped"] == "refused", report


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bursar", default="bursar")
    args = parser.parse_args()
    processes = []
    with tempfile.TemporaryDirectory() as data_dir:
        try:
            dev, info = start_dev(args.bursar, data_dir)
            processes.append(dev)
            buyer, seller = info["buyer"], info["seller"]
            buyer_start, seller_start = balance(info, buyer), balance(info, seller)

            report = run_agent(args.bursar, info, open_session(info, "0.005"))
            check_paid_until_refused(report, 5)
            assert [step["tool"] for step in report["steps"][:2]] == ["fetch", "call_tool"], report

            port = free_port()
            server = subprocess.Popen(
                [args.bursar, "mcp", "--listen", f"127.0.0.1:{port}", "--runtime-url",
                 info["runtimeUrl"]],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )
            processes.append(server)
            announced = server.stderr.readline()
            match = re.search(r"(http://\S+/mcp)", announced)
            assert match, f"bursar mcp --listen said: {announced!r}"
            report_http = run_agent(args.bursar, info, open_session(info, "0.004"), match.group(1))
            check_paid_until_refused(report_http, 4)

            forged = open_session(info, "0.004")[:-8] + "00000000"
            report_forged = run_agent(args.bursar, info, forged, match.group(1))
            # The first call (the budget) is refused already, and the agent stops.
            assert report_forged["steps"] == [], report_forged
            assert "refused" in report_forged["answer"], report_forged
            assert "unauthorized" in (report_forged.get("budgetRefused") or ""), report_forged

            spent = 9 * PRICE
            assert balance(info, buyer) == buyer_start - spent, "the buyer paid exactly 9 calls"
            assert balance(info, seller) == seller_start + spent, "the seller got exactly 9 calls"
        finally:
            for process in processes:
                process.kill()
                process.wait()
    print(json.dumps({"passed": True, "stdio": report, "http": report_http}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
