"""Pays for one URL with the official x402 Python client (httpx) and prints the outcome as JSON.

Usage: pay.py URL  (the payer's private key in the environment variable X402_PAYER_KEY)
Optional: X402_NETWORK (the network to register the exact EVM scheme for, default "eip155:*").
"""

import asyncio
import json
import os
import sys

from eth_account import Account
from x402 import x402Client
from x402.http.clients import x402HttpxClient
from x402.mechanisms.evm.exact import ExactEvmScheme
from x402.mechanisms.evm.signers import EthAccountSigner


async def main(url: str) -> int:
    account = Account.from_key(os.environ["X402_PAYER_KEY"])
    client = x402Client()
    client.register(os.environ.get("X402_NETWORK", "eip155:*"), ExactEvmScheme(EthAccountSigner(account)))
    # The local chain's token is not one of the SDK's default assets: allow it explicitly.
    client.set_spend_controls({"allowed_assets": True})
    try:
        async with x402HttpxClient(client, timeout=30) as http:
            response = await http.get(url)
    except Exception as error:  # the outcome is reported, not raised
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
        return 2
    print(
        json.dumps(
            {
                "status": response.status_code,
                "body": response.text,
                "paymentResponse": response.headers.get("payment-response"),
                "xPaymentResponse": response.headers.get("x-payment-response"),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))
