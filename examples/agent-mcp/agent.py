"""An agent that pays for what it uses through `bursar mcp`, built on Strands Agents.

The agent knows nothing about keys, signatures or x402: Strands connects it to `bursar mcp` (over
stdio, or streamable HTTP with `--mcp-url`) as an MCP tool provider, and its model checks the
budget and calls `fetch` (paid HTTP resources) and `call_tool` (paid tools of an MCP server) until
a call is refused because the session's budget is spent. Every payment is made below it, by the
Bursar runtime, within the session its token names.

The model is `ScriptedModel`, a Strands model provider that follows a fixed plan instead of asking
an LLM, so the run needs no model key and is repeatable; put a real provider (Bedrock, OpenAI,
Ollama, ...) in its place and the same agent decides for itself.

Usage:
  agent.py --session bst_... --runtime-url http://127.0.0.1:4030 \
           --resource http://127.0.0.1:4021/joke --tools http://127.0.0.1:4021/mcp --tool joke
  agent.py ... --mcp-url http://127.0.0.1:4040/mcp   (bursar mcp --listen, instead of stdio)
Prints one JSON line: the tools it saw, what each step paid, and why it stopped.
"""

import argparse
import json
import os
import sys
import uuid

from mcp import StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamablehttp_client
from strands import Agent
from strands.models.model import Model
from strands.tools.mcp import MCPClient


class ScriptedModel(Model):
    """A Strands model provider that answers with the next tool call of a plan, and stops (with a
    text answer) when the plan is done or the last tool call was refused."""

    def __init__(self, plan: list[tuple[str, dict]]) -> None:
        self.plan = list(plan)
        self.config: dict = {}

    def update_config(self, **model_config) -> None:
        self.config.update(model_config)

    def get_config(self) -> dict:
        return self.config

    async def structured_output(self, output_model, prompt, system_prompt=None, **kwargs):
        raise NotImplementedError("the scripted model answers with tool calls and text only")
        yield {}  # an async generator, as the interface requires

    async def stream(self, messages, tool_specs=None, system_prompt=None, **kwargs):
        refused = any(
            block.get("toolResult", {}).get("status") == "error"
            for block in messages[-1].get("content", [])
        )
        yield {"messageStart": {"role": "assistant"}}
        if refused or not self.plan:
            answer = "Stopped: the runtime refused to pay." if refused else "Done."
            yield {"contentBlockDelta": {"delta": {"text": answer}}}
            yield {"contentBlockStop": {}}
            yield {"messageStop": {"stopReason": "end_turn"}}
            return
        name, arguments = self.plan.pop(0)
        yield {"contentBlockStart": {"start": {"toolUse": {"toolUseId": uuid.uuid4().hex, "name": name}}}}
        yield {"contentBlockDelta": {"delta": {"toolUse": {"input": json.dumps(arguments)}}}}
        yield {"contentBlockStop": {}}
        yield {"messageStop": {"stopReason": "tool_use"}}


def plan(args) -> list[tuple[str, dict]]:
    """Check the budget, then alternate a paid resource and a paid tool."""
    steps = [("budget", {})]
    for step in range(1, args.steps_max + 1):
        if step % 2 == 1:
            steps.append(("fetch", {"url": args.resource, "step": f"step-{step}"}))
        else:
            steps.append(("call_tool", {"server": args.tools, "tool": args.tool, "arguments": {}}))
    return steps + [("budget", {})]


def transport(args):
    if args.mcp_url:
        headers = {"Authorization": f"Bearer {args.session}"}
        return lambda: streamablehttp_client(args.mcp_url, headers=headers)
    server = StdioServerParameters(
        command=args.bursar,
        args=["mcp", "--session", args.session, "--runtime-url", args.runtime_url],
        env={**os.environ, "BURSAR_LOG": "warn"},
    )
    return lambda: stdio_client(server)


def outcome(result: dict) -> dict:
    """A tool result's JSON (bursar mcp answers with a JSON document), or its text."""
    text = " ".join(block.get("text", "") for block in result.get("content", []))
    try:
        return json.loads(text)
    except ValueError:
        return {"text": text}


def run(args) -> dict:
    client = MCPClient(transport(args))
    with client:
        tools = client.list_tools_sync()
        agent = Agent(model=ScriptedModel(plan(args)), tools=tools, callback_handler=None)
        answer = agent("Use paid resources and tools until the budget is spent.")
        uses = {b["toolUse"]["toolUseId"]: b["toolUse"]["name"]
                for m in agent.messages for b in m["content"] if "toolUse" in b}
        results = [b["toolResult"] for m in agent.messages for b in m["content"] if "toolResult" in b]
    report = {"tools": [tool.tool_name for tool in tools], "steps": [], "answer": str(answer).strip()}
    budgets = []
    for result in results:
        name = uses.get(result["toolUseId"])
        found = outcome(result)
        if name == "budget":
            budgets.append(found.get("remainingAtomic"))
            if result.get("status") == "error":
                report["budgetRefused"] = found.get("text")
            continue
        payment = found.get("payment") or {}
        refused = result.get("status") == "error"
        report["steps"].append({
            "tool": name,
            "status": found.get("status"),
            "paidAtomic": payment.get("amountAtomic"),
            "state": payment.get("state"),
            "refused": found.get("text") if refused else None,
        })
    report["stopped"] = "refused" if report["steps"] and report["steps"][-1]["refused"] else "plan finished"
    report["budgetAtStart"] = budgets[0] if budgets else None
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--session", default=os.environ.get("BURSAR_SESSION_TOKEN"))
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
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
