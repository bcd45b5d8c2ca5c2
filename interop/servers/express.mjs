// The official @x402/express server: priced routes settled by the facilitator at
// FACILITATOR_URL. /forecast/:city declares the bazaar discovery extension (the official
// @x402/extensions helpers), so a facilitator that catalogs payments lists it. Env: FACILITATOR_URL, NETWORK, TOKEN, TOKEN_NAME, TOKEN_VERSION, PAY_TO, PRICE.
import express from "express";
import { paymentMiddleware, x402ResourceServer } from "@x402/express";
import { ExactEvmScheme } from "@x402/evm/exact/server";
import { HTTPFacilitatorClient } from "@x402/core/server";
import { bazaarResourceServerExtension, declareDiscoveryExtension } from "@x402/extensions/bazaar";

const env = process.env;
const resourceServer = new x402ResourceServer(new HTTPFacilitatorClient({ url: env.FACILITATOR_URL }))
  .register(env.NETWORK, new ExactEvmScheme());
resourceServer.registerExtension(bazaarResourceServerExtension);

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
      "GET /forecast/:city": {
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
        description: "Three-day forecast for a city",
        mimeType: "application/json",
        extensions: {
          ...declareDiscoveryExtension({
            output: { example: { city: "Lisbon", days: [{ day: 1, highC: 21 }] } },
          }),
        },
      },
    },
    resourceServer,
  ),
);
app.get("/weather", (_req, res) => res.json({ city: "Porto", temperatureC: 18, conditions: "cloudy" }));
app.get("/forecast/:city", (req, res) =>
  res.json({ city: req.params.city, days: [{ day: 1, highC: 21 }, { day: 2, highC: 19 }, { day: 3, highC: 22 }] }),
);
const server = app.listen(0, "127.0.0.1", () => {
  console.log(`official express server listening on http://127.0.0.1:${server.address().port}`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
