// The official @x402/express server: one priced route settled by the facilitator at
// FACILITATOR_URL. Env: FACILITATOR_URL, NETWORK, TOKEN, TOKEN_NAME, TOKEN_VERSION, PAY_TO, PRICE.
import express from "express";
import { paymentMiddleware, x402ResourceServer } from "@x402/express";
import { ExactEvmScheme } from "@x402/evm/exact/server";
import { HTTPFacilitatorClient } from "@x402/core/server";

const env = process.env;
const resourceServer = new x402ResourceServer(new HTTPFacilitatorClient({ url: env.FACILITATOR_URL }))
  .register(env.NETWORK, new ExactEvmScheme());

const app = express();
app.use(
  paymentMiddleware(
    {
      "GET /weather": {
        accepts: {
          scheme: "exact",
          network: env.NETWORK,
          payTo: env.PAY_TO,
          price: {
            amount: env.PRICE,
            asset: env.TOKEN,
            extra: { name: env.TOKEN_NAME, version: env.TOKEN_VERSION },
          },
        },
        description: "Current weather for a city",
        mimeType: "application/json",
      },
    },
    resourceServer,
  ),
);
app.get("/weather", (_req, res) => res.json({ city: "Porto", temperatureC: 18, conditions: "cloudy" }));
const server = app.listen(0, "127.0.0.1", () => {
  console.log(`official express server listening on http://127.0.0.1:${server.address().port}`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
