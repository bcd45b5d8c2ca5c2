// The legacy x402-express 1.x server (x402 v1): one priced route settled by the facilitator at
// FACILITATOR_URL. Env: FACILITATOR_URL, V1_NETWORK, TOKEN, TOKEN_NAME, TOKEN_VERSION, PAY_TO, PRICE.
import express from "express";
import { paymentMiddleware } from "x402-express";

const env = process.env;
const app = express();
app.use(
  paymentMiddleware(
    env.PAY_TO,
    {
      "GET /weather": {
        price: {
          amount: env.PRICE,
          asset: {
            address: env.TOKEN,
            decimals: 6,
            eip712: { name: env.TOKEN_NAME, version: env.TOKEN_VERSION },
          },
        },
        network: env.V1_NETWORK,
        config: { description: "Current weather for a city", mimeType: "application/json" },
      },
    },
    { url: env.FACILITATOR_URL },
  ),
);
app.get("/weather", (_req, res) => res.json({ city: "Faro", temperatureC: 24, conditions: "clear" }));
const server = app.listen(0, "127.0.0.1", () => {
  console.log(`legacy x402-express server listening on http://127.0.0.1:${server.address().port}`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
