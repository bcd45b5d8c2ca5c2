"""A paid MCP tool served by the official x402 Python MCP server (FastMCP + x402.mcp).

The tool `forecast` costs PRICE atomic units of TOKEN on CHAIN_ID, paid to PAY_TO and verified
and settled through the facilitator at FACILITATOR_URL (all from the environment). It is served
over MCP's streamable HTTP transport on 127.0.0.1 (a free port, bound before it is announced) and
prints "listening on http://127.0.0.1:<port>/mcp".
"""

import asyncio
import json
import os
import socket

import uvicorn
from mcp.server.fastmcp import FastMCP
from x402 import x402ResourceServer
from x402.http import FacilitatorConfig, HTTPFacilitatorClient
from x402.mcp import create_payment_wrapper
from x402.mechanisms.evm.exact import ExactEvmServerScheme
from x402.schemas import PaymentRequirements, ResourceInfo


async def main() -> None:
    network = f"eip155:{os.environ['CHAIN_ID']}"
    facilitator = HTTPFacilitatorClient(FacilitatorConfig(url=os.environ["FACILITATOR_URL"]))
    server = x402ResourceServer(facilitator)
    server.register(network, ExactEvmServerScheme())
    server.initialize()
    accepts = [
        PaymentRequirements(
            scheme="exact",
            network=network,
            asset=os.environ["TOKEN"],
            amount=os.environ["PRICE"],
            pay_to=os.environ["PAY_TO"],
            max_timeout_seconds=300,
            extra={"name": os.environ["TOKEN_NAME"], "version": os.environ["TOKEN_VERSION"]},
        )
    ]
    paid = create_payment_wrapper(
        server,
        accepts=accepts,
        resource=ResourceInfo(url="mcp://tool/forecast", description="Tomorrow's forecast"),
    )
    # Bound (and so accepting connections) before the address is announced.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    mcp = FastMCP("x402-forecast", host="127.0.0.1", port=port)

    @mcp.tool(name="forecast", description="Tomorrow's forecast for a city")
    @paid
    async def forecast(city: str) -> str:
        return json.dumps({"city": city, "sky": "clear", "highC": 24})

    config = uvicorn.Config(mcp.streamable_http_app(), host="127.0.0.1", port=port, log_level="warning")
    print(f"listening on http://127.0.0.1:{port}/mcp", flush=True)
    await uvicorn.Server(config).serve(sockets=[sock])


if __name__ == "__main__":
    asyncio.run(main())
