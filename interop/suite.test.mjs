// Bursar against the official x402 SDKs: every case is a real payment on a fresh local anvil.
// Run through ./run (it installs the pinned packages and builds bursar first).

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";

import { wrapFetchWithPayment, decodePaymentResponseHeader } from "@x402/fetch";
import { x402Client } from "@x402/core/client";
import { HTTPFacilitatorClient } from "@x402/core/server";
import { ExactEvmScheme } from "@x402/evm/exact/client";
import { wrapFetchWithPayment as wrapFetchWithPaymentV1, decodeXPaymentResponse } from "x402-fetch";
import { withBazaar } from "@x402/extensions/bazaar";
import { createWalletClient, publicActions } from "viem";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";

import {
  CHAIN_ID, INTEROP_DIR, NETWORK, PRICE, PYTHON_BIN, REPO_DIR, TOKEN_NAME, TOKEN_VERSION, V1_NETWORK, WORK_DIR,
  BURSAR_BIN, balances, freePort, run, start as startProcess, startBursarFacilitator, startBursarPaywall,
  startChain, startNodeServer, stopAll,
} from "./lib/harness.mjs";

const CASE_TIMEOUT_MS = 90_000;
const TRANSFER_ABI = [{
  type: "function", name: "transfer", stateMutability: "nonpayable",
  inputs: [{ name: "to", type: "address" }, { name: "amount", type: "uint256" }], outputs: [{ type: "bool" }],
}];
let net;
let bursarFacilitatorUrl;
let bursarPaywallUrl; // Bursar paywall settled by Bursar's facilitator
let paywallOnOfficialFacilitatorUrl; // Bursar paywall settled by the official facilitator
let expressUrl; // official @x402/express settled by Bursar's facilitator
let expressV1Url; // legacy x402-express 1.x settled by Bursar's facilitator
let officialMcpUrl; // the official Python x402 MCP server (FastMCP), settled by Bursar's facilitator

/// Asserts the payer lost and the seller gained exactly `price` between two balance snapshots.
function assertMoved(beforeBalances, afterBalances, price) {
  assert.equal(beforeBalances.payer - afterBalances.payer, price, "payer balance change");
  assert.equal(afterBalances.seller - beforeBalances.seller, price, "seller balance change");
}

function assertNothingMoved(beforeBalances, afterBalances) {
  assert.deepEqual(afterBalances, beforeBalances, "no money moved");
}

function assertSettled(receipt) {
  assert.equal(receipt.success, true, `settlement succeeded: ${JSON.stringify(receipt)}`);
  assert.match(receipt.transaction ?? "", /^0x[0-9a-fA-F]{64}$/, "transaction hash");
}

/// The official v2 TS client for the payer; spend controls allow the local token (not one of
/// the SDK's default assets).
function officialClient({ network = "eip155:*", spendControls = { allowedAssets: true } } = {}) {
  const signer = createWalletClient({
    account: net.keys.payer.account,
    chain: net.chain,
    transport: net.transport,
  }).extend(publicActions);
  const client = new x402Client().register(network, new ExactEvmScheme({ ...signer, address: signer.account.address }));
  if (spendControls !== undefined) client.setSpendControls(spendControls);
  return client;
}

/// fetch that records the payment headers it sends (for the replay case).
function recordingFetch(sent) {
  return (input, init) => {
    const headers = new Headers(input instanceof Request ? input.headers : undefined);
    new Headers(init?.headers).forEach((value, name) => headers.set(name, value));
    const payment = headers.get("payment-signature") ?? headers.get("x-payment");
    if (payment) sent.push({ name: headers.has("payment-signature") ? "PAYMENT-SIGNATURE" : "X-PAYMENT", value: payment });
    return fetch(input, init);
  };
}

async function bursarPay(url, extra = []) {
  return run(BURSAR_BIN, ["pay", url, "--max", "0.05", "--json", ...extra], {
    env: {
      BURSAR_PRIVATE_KEY: net.keys.payer.key,
      BURSAR_DATA_DIR: join(WORK_DIR, "no-dev-network"),
      BURSAR_LOG: "warn",
    },
    timeoutMs: 60_000,
  });
}

/// Calls a paid tool of Bursar's demo MCP server with the official Python x402 MCP client.
async function payTool(tool, args, env = {}) {
  return run(PYTHON_BIN, [join(INTEROP_DIR, "python/pay_mcp.py"), `${bursarPaywallUrl}/mcp`, tool, JSON.stringify(args)], {
    env: { X402_PAYER_KEY: net.keys.payer.key, ...env },
    timeoutMs: 60_000,
  });
}

/// A `bursar runtime` on the anvil chain (its own SQLite database in WORK_DIR/`name`), with a
/// wallet it creates (minted 1 token), a grant and a session of `budget`; `api(method, path,
/// credential, body)` calls it.
async function anvilRuntimeSession(name, budget = "0.50") {
  const dataDir = join(WORK_DIR, name);
  rmSync(dataDir, { recursive: true, force: true });
  mkdirSync(dataDir, { recursive: true });
  const databaseUrl = `sqlite://${join(dataDir, "runtime.sqlite")}?mode=rwc`;
  const keys = await run(BURSAR_BIN, ["operator-keys", "create", "--name", "interop", "--database-url", databaseUrl, "--data-dir", dataDir], {
    env: { BURSAR_LOG: "warn" },
    timeoutMs: 60_000,
  });
  assert.equal(keys.code, 0, `operator-keys create: ${keys.stdout}\n${keys.stderr}`);
  const operatorKey = keys.stdout.split("\n").find((line) => line.startsWith("key: ")).slice(5).trim();
  const port = await freePort();
  const { match } = await startProcess(`bursar-${name}`, BURSAR_BIN, [
    "runtime", "--listen", `127.0.0.1:${port}`, "--rpc-url", net.rpcUrl, "--token", net.token,
    "--database-url", databaseUrl, "--data-dir", dataDir, "--light-kdf",
    "--egress-allow", "127.0.0.0/8",
  ], { env: { BURSAR_PASSPHRASE: "interop runtime passphrase", BURSAR_LOG: "warn" }, ready: /listening on (http:\/\/\S+)/ });
  const runtimeUrl = match[1];
  const api = async (method, path, token, body) => {
    const response = await fetch(`${runtimeUrl}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, "content-type": body === undefined || typeof body === "object" ? "application/json" : "text/plain" },
      body: body === undefined ? undefined : typeof body === "object" ? JSON.stringify(body) : body,
    });
    const text = await response.text();
    let parsed;
    try { parsed = JSON.parse(text); } catch { parsed = text; }
    return { status: response.status, body: parsed };
  };
  const wallet = await api("POST", "/v1/wallets", operatorKey, { name: "agent-wallet" });
  assert.equal(wallet.status, 201, JSON.stringify(wallet.body));
  await net.mint(wallet.body.address, 1_000_000n);
  const grant = await api("POST", "/v1/grants", operatorKey, { walletId: wallet.body.id, agent: "interop" });
  assert.equal(grant.status, 201, JSON.stringify(grant.body));
  const newSession = async (maxSpendAmount) => {
    const created = await api("POST", "/v1/sessions", operatorKey, { grantId: grant.body.id, maxSpendAmount });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    return created.body;
  };
  const session = await newSession(budget);
  return { api, operatorKey, wallet: wallet.body, session, newSession };
}

before(async () => {
  net = await startChain();
  bursarFacilitatorUrl = await startBursarFacilitator(net);
  bursarPaywallUrl = await startBursarPaywall(net, "bursar-paywall", bursarFacilitatorUrl);
  const officialFacilitatorUrl = await startNodeServer("official-facilitator", "facilitator.mjs", {
    RPC_URL: net.rpcUrl,
    CHAIN_ID: String(CHAIN_ID),
    FACILITATOR_KEY: net.keys.officialFacilitator.key,
  });
  paywallOnOfficialFacilitatorUrl = await startBursarPaywall(
    net, "bursar-paywall-official-facilitator", officialFacilitatorUrl,
  );
  expressUrl = await startNodeServer("official-express", "express.mjs", {
    FACILITATOR_URL: bursarFacilitatorUrl,
    NETWORK,
    TOKEN: net.token,
    TOKEN_NAME,
    TOKEN_VERSION,
    PAY_TO: net.keys.seller.address,
    PRICE: String(PRICE.weather),
  });
  expressV1Url = await startNodeServer("legacy-express-v1", "express-v1.mjs", {
    FACILITATOR_URL: bursarFacilitatorUrl,
    V1_NETWORK,
    TOKEN: net.token,
    TOKEN_NAME,
    TOKEN_VERSION,
    PAY_TO: net.keys.seller.address,
    PRICE: String(PRICE.weather),
  });
  const { match } = await startProcess("official-python-mcp", PYTHON_BIN, [join(INTEROP_DIR, "python/mcp_server.py")], {
    env: {
      FACILITATOR_URL: bursarFacilitatorUrl,
      CHAIN_ID: String(CHAIN_ID),
      TOKEN: net.token,
      TOKEN_NAME,
      TOKEN_VERSION,
      PAY_TO: net.keys.seller.address,
      PRICE: String(PRICE.weather),
    },
    ready: /listening on (http:\/\/\S+)/,
  });
  officialMcpUrl = match[1];
}, { timeout: 120_000 });

after(async () => {
  await stopAll();
});

describe("interop with the official x402 SDKs", { concurrency: false }, () => {
  let replayable; // a PAYMENT-SIGNATURE the official client already paid with

  test("1. @x402/fetch + @x402/evm exact client -> Bursar paywall -> Bursar facilitator (v2)", { timeout: CASE_TIMEOUT_MS }, async () => {
    const sent = [];
    const pay = wrapFetchWithPayment(recordingFetch(sent), officialClient());
    const start = await balances(net);
    const response = await pay(`${bursarPaywallUrl}/weather`);
    assert.equal(response.status, 200, await response.clone().text());
    const body = await response.json();
    assert.equal(body.city, "Lisbon");
    const header = response.headers.get("PAYMENT-RESPONSE");
    assert.ok(header, "PAYMENT-RESPONSE header");
    const receipt = decodePaymentResponseHeader(header);
    assertSettled(receipt);
    assert.equal(receipt.network, NETWORK);
    assertMoved(start, await balances(net), PRICE.weather);
    assert.equal(sent.length, 1);
    assert.equal(sent[0].name, "PAYMENT-SIGNATURE", "the official v2 client pays with the v2 header");
    replayable = sent[0];
  });

  test("1b. replaying the official client's payment header against Bursar is rejected; no money moves", { timeout: CASE_TIMEOUT_MS }, async (t) => {
    assert.ok(replayable, "case 1 recorded a payment header");
    const start = await balances(net);
    const response = await fetch(`${bursarPaywallUrl}/weather`, { headers: { [replayable.name]: replayable.value } });
    assert.equal(response.status, 402);
    const text = await response.text();
    assert.ok(!text.includes("Lisbon"), "no content for a replayed payment");
    const required = response.headers.get("PAYMENT-REQUIRED");
    const reason = required ? JSON.parse(Buffer.from(required, "base64").toString("utf8")).error : text;
    t.diagnostic(`rejected: ${reason}`);
    assertNothingMoved(start, await balances(net));
  });

  test("1c. official client offered a price above its spend cap fails cleanly without paying", { timeout: CASE_TIMEOUT_MS }, async (t) => {
    const client = officialClient({
      spendControls: { allowedAssets: [{ network: NETWORK, asset: net.token, maxAmountPerPayment: String(PRICE.weather - 1n) }] },
    });
    const sent = [];
    const pay = wrapFetchWithPayment(recordingFetch(sent), client);
    const start = await balances(net);
    const error = await pay(`${bursarPaywallUrl}/weather`).then(() => null, (e) => e);
    assert.ok(error instanceof Error, "the client refuses to pay");
    t.diagnostic(`refused: ${error.message}`);
    assert.equal(sent.length, 0, "no payment header was sent");
    assertNothingMoved(start, await balances(net));
  });

  test("1d. official client registered only for another network fails cleanly without paying", { timeout: CASE_TIMEOUT_MS }, async (t) => {
    const sent = [];
    const pay = wrapFetchWithPayment(recordingFetch(sent), officialClient({ network: "eip155:8453" }));
    const start = await balances(net);
    const error = await pay(`${bursarPaywallUrl}/joke`).then(() => null, (e) => e);
    assert.ok(error instanceof Error, "the client refuses to pay");
    t.diagnostic(`refused: ${error.message}`);
    assert.equal(sent.length, 0, "no payment header was sent");
    assertNothingMoved(start, await balances(net));
  });

  test("2. x402-fetch 1.x (legacy v1) -> Bursar paywall -> Bursar facilitator (v1)", { timeout: CASE_TIMEOUT_MS }, async () => {
    const wallet = createWalletClient({ account: net.keys.payer.account, chain: net.chain, transport: net.transport })
      .extend(publicActions);
    const sent = [];
    const pay = wrapFetchWithPaymentV1(recordingFetch(sent), wallet, 50_000n);
    const start = await balances(net);
    const response = await pay(`${bursarPaywallUrl}/joke`);
    assert.equal(response.status, 200, await response.clone().text());
    assert.match(await response.text(), /binary/);
    const header = response.headers.get("X-PAYMENT-RESPONSE");
    assert.ok(header, "X-PAYMENT-RESPONSE header");
    const receipt = decodeXPaymentResponse(header);
    assertSettled(receipt);
    assert.equal(receipt.network, V1_NETWORK);
    assertMoved(start, await balances(net), PRICE.joke);
    assert.equal(sent[0]?.name, "X-PAYMENT", "the legacy client pays with the v1 header");
  });

  test("2b. x402-fetch 1.x refuses a price above its maxValue without paying", { timeout: CASE_TIMEOUT_MS }, async (t) => {
    const wallet = createWalletClient({ account: net.keys.payer.account, chain: net.chain, transport: net.transport })
      .extend(publicActions);
    const sent = [];
    const pay = wrapFetchWithPaymentV1(recordingFetch(sent), wallet, PRICE.weather - 1n);
    const start = await balances(net);
    const error = await pay(`${bursarPaywallUrl}/weather`).then(() => null, (e) => e);
    assert.ok(error instanceof Error, "the client refuses to pay");
    t.diagnostic(`refused: ${error.message}`);
    assert.equal(sent.length, 0, "no payment header was sent");
    assertNothingMoved(start, await balances(net));
  });

  test("3. x402 (Python, httpx) -> Bursar paywall -> Bursar facilitator (v2)", { timeout: CASE_TIMEOUT_MS }, async () => {
    const start = await balances(net);
    const result = await run(PYTHON_BIN, [join(INTEROP_DIR, "python/pay.py"), `${bursarPaywallUrl}/weather`], {
      env: { X402_PAYER_KEY: net.keys.payer.key },
      timeoutMs: 60_000,
    });
    assert.equal(result.code, 0, `python client: ${result.stdout}\n${result.stderr}`);
    const outcome = JSON.parse(result.stdout.trim().split("\n").pop());
    assert.equal(outcome.status, 200, outcome.body);
    assert.equal(JSON.parse(outcome.body).city, "Lisbon");
    assert.ok(outcome.paymentResponse, "PAYMENT-RESPONSE header");
    const receipt = decodePaymentResponseHeader(outcome.paymentResponse);
    assertSettled(receipt);
    assertMoved(start, await balances(net), PRICE.weather);
  });

  test("7. x402 (Python, x402.mcp + mcp, streamable HTTP) -> Bursar paid MCP tool -> Bursar facilitator", { timeout: CASE_TIMEOUT_MS }, async () => {
    const start = await balances(net);
    const result = await payTool("weather", { city: "Porto" });
    assert.equal(result.code, 0, `python MCP client: ${result.stdout}\n${result.stderr}`);
    const outcome = JSON.parse(result.stdout.trim().split("\n").pop());
    assert.deepEqual(outcome.tools, ["weather", "joke", "report"], "the tools are listed");
    assert.equal(outcome.isError, false, JSON.stringify(outcome));
    assert.equal(outcome.paymentMade, true);
    assert.equal(JSON.parse(outcome.content[0]).city, "Porto");
    assertSettled(outcome.paymentResponse);
    assertMoved(start, await balances(net), PRICE.weather);
  });

  test("7b. the official MCP client registered only for another network signs nothing; no money moves", { timeout: CASE_TIMEOUT_MS }, async (t) => {
    const start = await balances(net);
    const result = await payTool("weather", { city: "Porto" }, { X402_NETWORK: "eip155:8453" });
    const outcome = JSON.parse(result.stdout.trim().split("\n").pop());
    assert.ok(outcome.error, `the client refuses to pay: ${result.stdout}`);
    t.diagnostic(`refused: ${outcome.error}`);
    assertNothingMoved(start, await balances(net));
  });

  test("8. bursar pay --tool (the runtime's MCP client) -> official Python x402 MCP server -> Bursar facilitator", { timeout: CASE_TIMEOUT_MS }, async () => {
    const start = await balances(net);
    const result = await bursarPay(officialMcpUrl, ["--tool", "forecast", "--arguments", JSON.stringify({ city: "Braga" })]);
    assert.equal(result.code, 0, `bursar pay --tool: ${result.stdout}\n${result.stderr}`);
    const outcome = JSON.parse(result.stdout);
    assert.equal(outcome.status, 200);
    assert.equal(JSON.parse(outcome.body).city, "Braga");
    assert.equal(outcome.receipt.settled, true);
    assert.match(outcome.receipt.transaction ?? "", /^0x[0-9a-fA-F]{64}$/);
    assert.equal(outcome.receipt.x402Version, 2);
    assertMoved(start, await balances(net), PRICE.weather);
  });

  test("8b. bursar pay --tool with a maximum below the tool's price signs nothing; no money moves", { timeout: CASE_TIMEOUT_MS }, async () => {
    const start = await balances(net);
    const result = await run(BURSAR_BIN, ["pay", officialMcpUrl, "--tool", "forecast", "--arguments", JSON.stringify({ city: "Braga" }), "--max", "0.001", "--json"], {
      env: { BURSAR_PRIVATE_KEY: net.keys.payer.key, BURSAR_DATA_DIR: join(WORK_DIR, "no-dev-network"), BURSAR_LOG: "warn" },
      timeoutMs: 60_000,
    });
    assert.equal(result.code, 3, `refused as not payable: ${result.stdout}\n${result.stderr}`);
    assert.match(result.stderr, /exceeds your maximum/);
    assertNothingMoved(start, await balances(net));
  });

  test("9. example agent (Strands Agents, scripted model, mcp SDK) -> bursar mcp (stdio and HTTP) -> runtime of bursar dev", { timeout: 240_000 }, async (t) => {
    // Its own `bursar dev` (embedded chain): the agent pays through a session; see the script.
    const result = await run(PYTHON_BIN, [join(REPO_DIR, "examples/agent-mcp/test_agent.py"), "--bursar", BURSAR_BIN], {
      timeoutMs: 200_000,
    });
    assert.equal(result.code, 0, `example agent: ${result.stdout}\n${result.stderr}`);
    const outcome = JSON.parse(result.stdout.trim().split("\n").pop());
    assert.equal(outcome.passed, true);
    t.diagnostic(`stdio: ${outcome.stdio.steps.length - 1} paid, then ${outcome.stdio.steps.at(-1).refused.split(":")[0]}`);
  });

  test("10. Bursar's runtime (a session of bursar dev) -> official Python x402 MCP server -> Bursar facilitator", { timeout: 180_000 }, async () => {
    // bursar dev (embedded chain, facilitator, runtime with its demo wallet) and the official
    // server settled by that facilitator; the agent calls the tool through its session.
    const dataDir = join(WORK_DIR, "dev-runtime");
    rmSync(dataDir, { recursive: true, force: true });
    {
      const ports = [await freePort(), await freePort(), await freePort()];
      await startProcess("bursar-dev-runtime", BURSAR_BIN, [
        "dev", "--data-dir", dataDir, "--facilitator-port", String(ports[0]),
        "--api-port", String(ports[1]), "--runtime-port", String(ports[2]),
      ], { env: { BURSAR_LOG: "warn" }, ready: /session token\s+bst_/ });
      const dev = JSON.parse(readFileSync(join(dataDir, "dev.json"), "utf8"));
      const price = 20_000n;
      const { match } = await startProcess("official-python-mcp-dev", PYTHON_BIN, [join(INTEROP_DIR, "python/mcp_server.py")], {
        env: {
          FACILITATOR_URL: dev.facilitatorUrl, CHAIN_ID: String(dev.chainId), TOKEN: dev.token,
          TOKEN_NAME: dev.tokenName, TOKEN_VERSION: dev.tokenVersion, PAY_TO: dev.seller,
          PRICE: String(price),
        },
        ready: /listening on (http:\/\/\S+)/,
      });
      const api = async (method, path, token, body) => {
        const response = await fetch(`${dev.runtimeUrl}${path}`, {
          method,
          headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
          body: body === undefined ? undefined : JSON.stringify(body),
        });
        return { status: response.status, body: await response.json() };
      };
      const balanceOf = async (address) => {
        const response = await fetch(`${dev.facilitatorUrl}/dev/balance/${address}`);
        return BigInt((await response.json()).balance);
      };
      const grant = await api("POST", "/v1/grants", dev.operatorKey, { walletId: "demo", agent: "interop" });
      assert.equal(grant.status, 201, JSON.stringify(grant.body));
      const session = await api("POST", "/v1/sessions", dev.operatorKey, { grantId: grant.body.id, maxSpendAmount: "0.50" });
      assert.equal(session.status, 201, JSON.stringify(session.body));
      const [buyerStart, sellerStart] = [await balanceOf(dev.buyer), await balanceOf(dev.seller)];
      const called = await api("POST", `/v1/sessions/${session.body.id}/tools/call`, session.body.token, {
        server: match[1], tool: "forecast", arguments: { city: "Coimbra" },
      });
      assert.equal(called.status, 200, JSON.stringify(called.body));
      assert.equal(called.body.status, 200, JSON.stringify(called.body));
      assert.equal(JSON.parse(called.body.body).city, "Coimbra");
      assert.equal(called.body.payment.amountAtomic, String(price));
      assert.equal(called.body.payment.state, "posted", JSON.stringify(called.body));
      assert.match(called.body.payment.txHash ?? "", /^0x[0-9a-fA-F]{64}$/);
      assert.equal(buyerStart - (await balanceOf(dev.buyer)), price, "buyer balance change");
      assert.equal((await balanceOf(dev.seller)) - sellerStart, price, "seller balance change");
    }
  });

  test("11. bursar runtime (on anvil, a session) -> official Python x402 MCP server -> Bursar facilitator", { timeout: 180_000 }, async () => {
    // A `bursar runtime` on the anvil chain with its own SQLite database and a wallet it creates
    // (funded by minting); the agent calls the official server's tool through its session.
    const { api, wallet, session } = await anvilRuntimeSession("runtime-anvil");
    const [walletStart, sellerStart] = [await net.balanceOf(wallet.address), await net.balanceOf(net.keys.seller.address)];
    const called = await api("POST", `/v1/sessions/${session.id}/tools/call`, session.token, {
      server: officialMcpUrl, tool: "forecast", arguments: { city: "Aveiro" },
    });
    assert.equal(called.status, 200, JSON.stringify(called.body));
    assert.equal(called.body.status, 200, JSON.stringify(called.body));
    assert.equal(JSON.parse(called.body.body).city, "Aveiro");
    assert.equal(called.body.payment.amountAtomic, String(PRICE.weather));
    assert.match(called.body.payment.txHash ?? "", /^0x[0-9a-fA-F]{64}$/, JSON.stringify(called.body));
    assert.equal(walletStart - (await net.balanceOf(wallet.address)), PRICE.weather, "wallet balance change");
    assert.equal((await net.balanceOf(net.keys.seller.address)) - sellerStart, PRICE.weather, "seller balance change");
  });

  test("13. bursar paywall in front of a Python service: paid by the official Python client and by bursar runtime, catalogued with its price and schema, reputation after a failed settlement, and a [reputation] policy refusing it with nothing signed", { timeout: 240_000 }, async (t) => {
    // The example Python service (stdlib only), with a hook to act between verify and settle.
    const holdDir = join(WORK_DIR, "hold");
    mkdirSync(holdDir, { recursive: true });
    const { match: upstreamMatch } = await startProcess("python-forecast-service", PYTHON_BIN, [join(INTEROP_DIR, "python/held_upstream.py"), holdDir], {
      ready: /forecast service on (http:\/\/\S+)/,
    });
    const outputSchema = { type: "object", required: ["city", "days"], properties: { city: { type: "string" }, days: { type: "array" } } };
    const config = join(WORK_DIR, "paywall.toml");
    writeFileSync(config, [
      `[defaults]`,
      `network = "${NETWORK}"`,
      `asset = "${net.token}"`,
      `asset_name = "${TOKEN_NAME}"`,
      `asset_version = "${TOKEN_VERSION}"`,
      `pay_to = "${net.keys.seller.address}"`,
      `[[route]]`,
      `path = "/forecast/:city"`,
      `price = "${PRICE.weather}"`,
      `description = "Forecast for a city"`,
      `mime_type = "application/json"`,
      `output_schema = '''${JSON.stringify(outputSchema)}'''`,
      ``,
    ].join("\n"));
    const { match: paywallMatch } = await startProcess("bursar-paywall-python", BURSAR_BIN, [
      "paywall", "--upstream", upstreamMatch[1], "--config", config, "--listen", "127.0.0.1:0", "--facilitator-url", bursarFacilitatorUrl,
    ], { env: { BURSAR_LOG: "warn" }, ready: /(http:\/\/127\.0\.0\.1:\d+)/ });
    const paywall = paywallMatch[1];
    const route = `${paywall}/forecast/lisbon`;

    // 1. The official Python client pays.
    const start = await balances(net);
    const paid = await run(PYTHON_BIN, [join(INTEROP_DIR, "python/pay.py"), route], { env: { X402_PAYER_KEY: net.keys.payer.key }, timeoutMs: 60_000 });
    const paidOutcome = JSON.parse(paid.stdout.trim().split("\n").pop());
    assert.equal(paidOutcome.status, 200, paid.stdout + paid.stderr);
    assert.equal(JSON.parse(paidOutcome.body).source, "forecast-service");
    assertMoved(start, await balances(net), PRICE.weather);

    // 2. Bursar's runtime pays, in a session.
    const { api, operatorKey, wallet, session, newSession } = await anvilRuntimeSession("runtime-paywall");
    let walletStart = await net.balanceOf(wallet.address);
    let sellerStart = await net.balanceOf(net.keys.seller.address);
    const fetched = await api("POST", `/v1/sessions/${session.id}/fetch`, session.token, { url: route });
    assert.equal(fetched.status, 200, JSON.stringify(fetched.body));
    assert.equal(JSON.parse(fetched.body.body).city, "lisbon");
    assert.equal(fetched.body.payment.amountAtomic, String(PRICE.weather));
    assert.equal(walletStart - (await net.balanceOf(wallet.address)), PRICE.weather, "wallet balance change");
    assert.equal((await net.balanceOf(net.keys.seller.address)) - sellerStart, PRICE.weather, "seller balance change");

    // 3. Catalogued by Bursar's facilitator under the route's template, with price and schema.
    const lookup = async () => {
      const page = await (await fetch(`${bursarFacilitatorUrl}/discovery/resources?resource=${encodeURIComponent(route)}`)).json();
      assert.equal(page.items.length, 1, JSON.stringify(page));
      return page.items[0];
    };
    let listing = await lookup();
    assert.equal(listing.resource, `${paywall}/forecast/:city`);
    assert.equal(listing.routeTemplate, "/forecast/:city");
    assert.equal(listing.accepts[0].amount, String(PRICE.weather));
    assert.equal(listing.description, "Forecast for a city");
    assert.deepEqual(listing.extensions.bazaar.schema.properties.output.properties.example, outputSchema);
    assert.deepEqual([listing.reputation.settledCount, listing.reputation.distinctPayers, listing.reputation.settlementFailures], [2, 2, 0]);

    // 4. A failed settlement: a payer verified valid, then empty when the paywall settles.
    const failingKey = generatePrivateKey();
    const failing = privateKeyToAccount(failingKey);
    await net.publicClient.request({ method: "anvil_setBalance", params: [failing.address, "0x3635C9ADC5DEA00000"] });
    await net.mint(failing.address, PRICE.weather);
    writeFileSync(join(holdDir, "hold"), "1");
    const sellerBefore = await net.balanceOf(net.keys.seller.address);
    const held = run(PYTHON_BIN, [join(INTEROP_DIR, "python/pay.py"), `${route}?hold=1`], { env: { X402_PAYER_KEY: failingKey }, timeoutMs: 90_000 });
    const arrived = join(holdDir, "arrived");
    const deadline = Date.now() + 60_000;
    while (!existsSync(arrived)) {
      assert.ok(Date.now() < deadline, "the verified request never reached the service");
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const drainer = createWalletClient({ account: failing, chain: net.chain, transport: net.transport });
    const drained = await drainer.writeContract({
      address: net.token, abi: TRANSFER_ABI, functionName: "transfer", args: [net.keys.deployer.address, PRICE.weather],
    });
    await net.publicClient.waitForTransactionReceipt({ hash: drained, timeout: 10_000 });
    rmSync(join(holdDir, "hold"));
    const heldOutcome = JSON.parse((await held).stdout.trim().split("\n").pop());
    assert.notEqual(heldOutcome.status, 200, JSON.stringify(heldOutcome));
    assert.equal(await net.balanceOf(net.keys.seller.address), sellerBefore, "nothing was settled");
    listing = await lookup();
    assert.equal(listing.reputation.settlementFailures, 1, JSON.stringify(listing.reputation));
    assert.equal(listing.reputation.failureRateBps, 3333);

    // 5. A session whose policy wants at most 10% failures refuses it before signing.
    const careful = await newSession("0.50");
    const attached = await api("PUT", `/v1/sessions/${careful.id}/policy`, operatorKey,
      `[reputation]\ncatalog = "${bursarFacilitatorUrl}"\nmin_settled = 1\nmax_failure_rate_percent = 10\n`);
    assert.equal(attached.status, 200, JSON.stringify(attached.body));
    walletStart = await net.balanceOf(wallet.address);
    sellerStart = await net.balanceOf(net.keys.seller.address);
    const refused = await api("POST", `/v1/sessions/${careful.id}/fetch`, careful.token, { url: route });
    assert.equal(refused.status, 403, JSON.stringify(refused.body));
    assert.equal(refused.body.error.code, "reputation_too_low", JSON.stringify(refused.body));
    assert.equal(await net.balanceOf(wallet.address), walletStart, "nothing signed or paid");
    assert.equal(await net.balanceOf(net.keys.seller.address), sellerStart);
    t.diagnostic(`listing ${listing.resource}: ${JSON.stringify(listing.reputation)}; refused: ${refused.body.error.message}`);
  });

  test("4. bursar pay -> official @x402/express -> Bursar facilitator (v2)", { timeout: CASE_TIMEOUT_MS }, async () => {
    const start = await balances(net);
    const result = await bursarPay(`${expressUrl}/weather`);
    assert.equal(result.code, 0, `bursar pay: ${result.stdout}\n${result.stderr}`);
    const outcome = JSON.parse(result.stdout);
    assert.equal(outcome.status, 200);
    assert.equal(JSON.parse(outcome.body).city, "Porto");
    assert.equal(outcome.receipt.settled, true);
    assert.match(outcome.receipt.transaction ?? "", /^0x[0-9a-fA-F]{64}$/);
    assert.equal(outcome.receipt.x402Version, 2);
    assertMoved(start, await balances(net), PRICE.weather);
  });

  test("12. official @x402/express route declaring the bazaar extension, paid by the official client through Bursar's facilitator, is catalogued; the official bazaar clients (npm and PyPI) list and search Bursar's catalog", { timeout: CASE_TIMEOUT_MS }, async (t) => {
    const start = await balances(net);
    const paying = wrapFetchWithPayment(fetch, officialClient());
    const response = await paying(`${expressUrl}/forecast/lisbon`);
    assert.equal(response.status, 200);
    assert.equal((await response.json()).city, "lisbon");
    assertMoved(start, await balances(net), PRICE.weather);

    const template = `${expressUrl}/forecast/:city`;
    const catalog = withBazaar(new HTTPFacilitatorClient({ url: bursarFacilitatorUrl }));
    const page = await catalog.extensions.bazaar.listResources({ type: "http", limit: 100 });
    assert.equal(page.x402Version, 2);
    const listing = page.items.find((item) => item.resource === template);
    assert.ok(listing, `catalogued under its route template: ${JSON.stringify(page.items.map((item) => item.resource))}`);
    assert.equal(page.pagination.total, page.items.length);
    assert.equal(listing.type, "http");
    assert.equal(listing.routeTemplate, "/forecast/:city");
    assert.equal(listing.accepts[0].amount, String(PRICE.weather));
    assert.equal(listing.accepts[0].payTo.toLowerCase(), net.keys.seller.address.toLowerCase());
    assert.equal(listing.description, "Three-day forecast for a city");
    assert.equal(listing.extensions.bazaar.info.output.example.city, "Lisbon");
    assert.equal(typeof listing.lastUpdated, "string");
    assert.equal(listing.reputation.settled, true);
    assert.equal(listing.reputation.settledCount, 1);
    assert.equal(listing.reputation.distinctPayers, 1);
    const found = await catalog.extensions.bazaar.search({ query: "forecast" });
    assert.ok(found.resources.some((item) => item.resource === template), "found by the official search client");

    const python = await run(PYTHON_BIN, [join(INTEROP_DIR, "python/bazaar_list.py"), bursarFacilitatorUrl, "forecast"], { timeoutMs: 60_000 });
    assert.equal(python.code, 0, `${python.stdout}\n${python.stderr}`);
    const listed = JSON.parse(python.stdout.trim().split("\n").pop());
    assert.equal(listed.x402Version, 2);
    const pythonListing = listed.items.find((item) => item.resource === template);
    assert.ok(pythonListing, "listed by x402.extensions.bazaar");
    assert.equal(pythonListing.accepts[0].amount, String(PRICE.weather));
    assert.ok(listed.found.includes(template), "searched by x402.extensions.bazaar");
    t.diagnostic(`catalogued ${template}: settled ${listing.reputation.settledCount}, ${page.pagination.total} listing(s)`);
  });

  test("4b. bursar pay --v1 -> legacy x402-express 1.x -> Bursar facilitator (v1)", { timeout: CASE_TIMEOUT_MS }, async () => {
    const start = await balances(net);
    const result = await bursarPay(`${expressV1Url}/weather`, ["--v1"]);
    assert.equal(result.code, 0, `bursar pay: ${result.stdout}\n${result.stderr}`);
    const outcome = JSON.parse(result.stdout);
    assert.equal(outcome.status, 200);
    assert.equal(JSON.parse(outcome.body).city, "Faro");
    assert.equal(outcome.receipt.settled, true);
    assert.match(outcome.receipt.transaction ?? "", /^0x[0-9a-fA-F]{64}$/);
    assert.equal(outcome.receipt.x402Version, 1);
    assertMoved(start, await balances(net), PRICE.weather);
  });

  test("5. bursar pay -> Bursar paywall -> official @x402/core + @x402/evm facilitator (v2 and v1)", { timeout: CASE_TIMEOUT_MS }, async () => {
    for (const [extra, version] of [[[], 2], [["--v1"], 1]]) {
      const start = await balances(net);
      const result = await bursarPay(`${paywallOnOfficialFacilitatorUrl}/weather`, extra);
      assert.equal(result.code, 0, `bursar pay ${extra.join(" ")}: ${result.stdout}\n${result.stderr}`);
      const outcome = JSON.parse(result.stdout);
      assert.equal(outcome.status, 200);
      assert.equal(JSON.parse(outcome.body).city, "Lisbon");
      assert.equal(outcome.receipt.settled, true);
      assert.match(outcome.receipt.transaction ?? "", /^0x[0-9a-fA-F]{64}$/);
      assert.equal(outcome.receipt.x402Version, version);
      assertMoved(start, await balances(net), PRICE.weather);
    }
  });

  test("6. official HTTPFacilitatorClient -> Bursar facilitator: /supported, /verify, /settle", { timeout: CASE_TIMEOUT_MS }, async (t) => {
    const facilitator = new HTTPFacilitatorClient({ url: bursarFacilitatorUrl });
    const supported = await facilitator.getSupported();
    const kinds = supported.kinds.map((k) => `${k.x402Version}/${k.scheme}/${k.network}`);
    assert.ok(kinds.includes(`2/exact/${NETWORK}`), `v2 kind in ${kinds}`);
    assert.ok(kinds.includes(`1/exact/${V1_NETWORK}`), `v1 kind in ${kinds}`);

    const requirements = {
      scheme: "exact",
      network: NETWORK,
      amount: String(PRICE.joke),
      asset: net.token,
      payTo: net.keys.seller.address,
      maxTimeoutSeconds: 60,
      extra: { name: TOKEN_NAME, version: TOKEN_VERSION },
    };
    const paymentRequired = {
      x402Version: 2,
      resource: { url: "http://127.0.0.1/direct", description: "direct facilitator call", mimeType: "text/plain" },
      accepts: [requirements],
    };
    const payload = await officialClient().createPaymentPayload(paymentRequired);

    const start = await balances(net);
    const verified = await facilitator.verify(payload, requirements);
    assert.equal(verified.isValid, true, JSON.stringify(verified));
    assert.equal(verified.payer?.toLowerCase(), net.keys.payer.address.toLowerCase());
    assertNothingMoved(start, await balances(net));

    const settled = await facilitator.settle(payload, requirements);
    assertSettled(settled);
    assert.equal(settled.network, NETWORK);
    assertMoved(start, await balances(net), PRICE.joke);

    // The same authorization again: refused by verify and by settle, and nothing moves.
    const afterFirst = await balances(net);
    const again = await facilitator.verify(payload, requirements).catch((error) => error);
    assert.notEqual(again.isValid, true, "a used authorization does not verify again");
    t.diagnostic(`verify again: ${again.invalidReason ?? again.message}`);
    const settledAgain = await facilitator.settle(payload, requirements).catch((error) => error);
    t.diagnostic(`settle again: ${settledAgain.success === true ? `same transaction ${settledAgain.transaction}` : (settledAgain.errorReason ?? settledAgain.message)}`);
    if (settledAgain.success === true) {
      // An idempotent answer is fine: the same settlement, not a second one.
      assert.equal(settledAgain.transaction, settled.transaction, "a duplicate settle names the first transaction");
    }
    assertNothingMoved(afterFirst, await balances(net));
  });
});
