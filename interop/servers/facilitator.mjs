// The official TypeScript facilitator (@x402/core x402Facilitator + @x402/evm exact scheme) as a
// small HTTP server settling on the interop anvil. Env: RPC_URL, CHAIN_ID, FACILITATOR_KEY.
import express from "express";
import { x402Facilitator } from "@x402/core/facilitator";
import { registerExactEvmScheme } from "@x402/evm/exact/facilitator";
import { toFacilitatorEvmSigner } from "@x402/evm";
import { createWalletClient, defineChain, http, publicActions } from "viem";
import { privateKeyToAccount } from "viem/accounts";

const chainId = Number(process.env.CHAIN_ID);
const chain = defineChain({
  id: chainId,
  name: "interop anvil",
  nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
  rpcUrls: { default: { http: [process.env.RPC_URL] } },
});
const account = privateKeyToAccount(process.env.FACILITATOR_KEY);
const client = createWalletClient({
  account,
  chain,
  transport: http(process.env.RPC_URL, { timeout: 10_000 }),
  pollingInterval: 50,
}).extend(publicActions);
const signer = toFacilitatorEvmSigner({ ...client, address: account.address }, { confirmationTimeoutMs: 20_000 });

const facilitator = new x402Facilitator();
registerExactEvmScheme(facilitator, { signer, networks: `eip155:${chainId}` });

const app = express();
app.use(express.json());
app.get("/supported", (_req, res) => res.json(facilitator.getSupported()));
for (const operation of ["verify", "settle"]) {
  app.post(`/${operation}`, async (req, res) => {
    const { paymentPayload, paymentRequirements } = req.body ?? {};
    try {
      res.json(await facilitator[operation](paymentPayload, paymentRequirements));
    } catch (error) {
      res.status(400).json({ error: String(error?.message ?? error) });
    }
  });
}
const server = app.listen(0, "127.0.0.1", () => {
  console.log(`official facilitator listening on http://127.0.0.1:${server.address().port}`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
