"""An agent that pays for what it uses through `bursar mcp`, with the official MCP Python SDK.

The agent knows nothing about keys, signatures or x402: it lists the tools of `bursar mcp`, checks
its budget, and calls `fetch` (paid HTTP resources) and `call_tool` (paid tools of an MCP server)
until the runtime refuses because the session's budget is spent. Every payment is made below it,
by the Bursar runtime, within the session its token names.

The decisions come from a scripted model (a fixed plan instead of an LLM), so the run needs no
model key and is repeatable; an agent framework would put its model where `ScriptedModel` is.

Usage:
  agent.py --session bst_... --runtime-url http://127.0.0.1:4030 \
           --resource http://127.0.0.1:4021/joke --tools http://127.0.0.1:4021/mcp --tool joke
  agent.py ... --mcp-url http://127.0.0.1:4040/mcp   (bursar mcp --listen, instead of stdio)
Prints one JSON line: the tools it saw, what each step paid, and why it stopped.
"""

import argparse
import asyncio
import json
import os
import sys
from contextlib import asynccontextmanager

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamablehttp_client


class ScriptedModel:
    """Chooses the next tool call: alternate a paid resource and a paid tool, until refused."""

    def __init__(self, resource: str, tools_server: str, tool: str, steps_max: int) -> None:
        self.resource, self.tools_server, self.tool = resource, tools_server, tool
        self.steps_max = steps_max
        self.step = 0

    def next_call(self, last_refused: bool):
        if last_refused or self.step >= self.steps_max:
            return None
        self.step += 1
        if self.step % 2 == 1:
            return "fetch", {"url": self.resource, "step": f"step-{self.step}"}
        return "call_tool", {"server": self.tools_server, "tool": self.tool, "arguments": {}}


@asynccontextmanager
async def connect(args):
    if args.mcp_url:
        headers = {"Authorization": f"Bearer {args.session}"}
        async with streamablehttp_client(args.mcp_url, headers=headers) as (read, write, _):
            async with ClientSession(read, write) as session:
                yield session
        return
    server = StdioServerParameters(
        command=args.bursar,
        args=["mcp", "--session", args.session, "--runtime-url", args.runtime_url],
        env={**os.environ, "BURSAR_LOG": "warn"},
    )
    async with stdio_client(server) as (read, write):
        async with ClientSession(read, write) as session:
            yield session


def structured(result):
    if result.structuredContent is not None:
        return result.structuredContent
    return {"text": " ".join(getattr(block, "text", "") for block in result.content)}


async def run(args) -> dict:
    model = ScriptedModel(args.resource, args.tools, args.tool, args.steps_max)
    report = {"tools": [], "steps": [], "stopped": None}
    async with connect(args) as session:
        await session.initialize()
        report["tools"] = [tool.name for tool in (await session.list_tools()).tools]
        budget = structured(await session.call_tool("budget", {}))
        report["budgetAtStart"] = budget.get("remainingAtomic")
        refused = False
        while (call := model.next_call(refused)) is not None:
            name, arguments = call
            result = await session.call_tool(name, arguments)
            outcome = structured(result)
            payment = outcome.get("payment") or {}
            refused = bool(result.isError)
            report["steps"].append(
                {
                    "tool": name,
                    "status": outcome.get("status"),
                    "paidAtomic": payment.get("amountAtomic"),
                    "state": payment.get("state"),
                    "refused": outcome.get("text") if refused else None,
                }
            )
        report["stopped"] = "refused" if refused else "plan finished"
        budget = structured(await session.call_tool("budget", {}))
        report["budgetAtEnd"] = budget.get("remainingAtomic")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--session", default=os.environ.get("BURSAR_SESSION_TOKEN"), required=False)
    parser.add_argument("--runtime-url", default="http://127.0.0.1:4030")
    parser.add_argument("--bursar", default="bursar", help="the bursar command (stdio mode)")
    parser.add_argument("--mcp-url", help="a `bursar mcp --listen` endpoint instead of stdio")
    parser.add_argument("--resource", required=True, help="a paid HTTP resource")
    parser.add_argument("--tools", required=True, help="an MCP server with paid tools")
    parser.add_argument("--tool", required=True, help="the paid tool to call there")
    parser.add_argument("--steps-max", type=int, default=20)
    args = parser.parse_args()
    if not args.session:
        parser.error("--session (or BURSAR_SESSION_TOKEN) is required")
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
