"""Calls one paid MCP tool with the official x402 Python MCP client and prints the outcome as JSON.

The client is `x402.mcp.x402MCPSession` over the `mcp` SDK's ClientSession on the streamable HTTP
transport: it calls the tool, reads the payment-required result, signs, and calls again with the
payment in `_meta["x402/payment"]`.

Usage: pay_mcp.py SERVER_URL TOOL [JSON_ARGUMENTS]  (the payer's key in X402_PAYER_KEY)
Optional: X402_NETWORK (the network to register the exact EVM scheme for, default "eip155:*").
"""

import asyncio
import json
import os
import sys

from eth_account import Account
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from x402 import x402Client
from x402.mcp import x402MCPSession
from x402.mechanisms.evm.exact import ExactEvmScheme
from x402.mechanisms.evm.signers import EthAccountSigner


def text_of(content) -> list:
    return [getattr(item, "text", None) for item in content]


async def main(url: str, tool: str, arguments: dict) -> int:
    account = Account.from_key(os.environ["X402_PAYER_KEY"])
    client = x402Client()
    client.register(os.environ.get("X402_NETWORK", "eip155:*"), ExactEvmScheme(EthAccountSigner(account)))
    # The local chain's token is not one of the SDK's default assets: allow it explicitly.
    client.set_spend_controls({"allowed_assets": True})
    try:
        async with streamablehttp_client(url) as (read, write, _):
            async with ClientSession(read, write) as session:
                paid = x402MCPSession(session, client)
                await paid.initialize()
                tools = await paid.list_tools()
                result = await paid.call_tool(tool, arguments)
    except BaseException as error:  # the outcome is reported, not raised
        while isinstance(error, BaseExceptionGroup) and error.exceptions:
            error = error.exceptions[0]
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
        return 2
    receipt = result.payment_response
    if receipt is not None and hasattr(receipt, "model_dump"):
        receipt = receipt.model_dump(by_alias=True, exclude_none=True)
    print(
        json.dumps(
            {
                "tools": [t.name for t in tools.tools],
                "isError": bool(result.is_error),
                "paymentMade": result.payment_made,
                "content": text_of(result.content),
                "paymentResponse": receipt,
            }
        )
    )
    return 0


if __name__ == "__main__":
    arguments = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], arguments)))
