// The interop network: a fresh anvil on loopback, Bursar's token deployed there, a funded payer,
// and the servers under test (Bursar's facilitator and paywall, the official facilitator and
// express server), each a child process stopped at the end.

import { spawn, execFile } from "node:child_process";
import { createServer } from "node:net";
import { appendFileSync, mkdirSync, readFileSync, createWriteStream } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  createPublicClient,
  createWalletClient,
  defineChain,
  http,
  parseAbi,
} from "viem";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";

export const INTEROP_DIR = dirname(dirname(fileURLToPath(import.meta.url)));
export const REPO_DIR = dirname(INTEROP_DIR);
export const WORK_DIR = process.env.INTEROP_WORK_DIR ?? join(INTEROP_DIR, ".work");
const LOG_DIR = join(WORK_DIR, "logs");

/// Base Sepolia's chain id, so the legacy v1 packages (which know networks only by name) map it
/// to "base-sepolia". The chain itself is a private anvil: nothing leaves this machine.
export const CHAIN_ID = 84532;
export const NETWORK = `eip155:${CHAIN_ID}`;
export const V1_NETWORK = "base-sepolia";
export const TOKEN_NAME = "Bursar USD";
export const TOKEN_SYMBOL = "BUSD";
export const TOKEN_VERSION = "2";
export const PAYER_START = 100_000_000n; // 100 tokens (6 decimals)
/// The demo API's prices (crates/cli/src/pay.rs, DEMO_ROUTES).
export const PRICE = { weather: 10_000n, joke: 1_000n, report: 250_000n };

const STARTUP_TIMEOUT_MS = 30_000;
const ERC20 = parseAbi(["function balanceOf(address) view returns (uint256)"]);
const TOKEN_ABI_EXTRA = parseAbi(["function mint(address to, uint256 amount)"]);

export const BURSAR_BIN = process.env.BURSAR_BIN ?? join(REPO_DIR, "target/debug/bursar");
export const ANVIL_BIN =
  process.env.BURSAR_ANVIL ??
  join(REPO_DIR, "tools/anvil/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
export const PYTHON_BIN = process.env.INTEROP_PYTHON ?? join(INTEROP_DIR, ".venv/bin/python");

const children = [];

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/// Starts a child process, logs its output to .work/logs/<name>.log and records its PID (for the
/// runner's trap). Resolves with the first match of `ready` in its stdout, or rejects on exit or
/// timeout.
export function start(name, command, args, { env = {}, ready, timeoutMs = STARTUP_TIMEOUT_MS } = {}) {
  mkdirSync(LOG_DIR, { recursive: true });
  const log = createWriteStream(join(LOG_DIR, `${name}.log`));
  const child = spawn(command, args, {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push({ name, child });
  if (process.env.INTEROP_PIDFILE && child.pid) {
    appendFileSync(process.env.INTEROP_PIDFILE, `${child.pid}\n`);
  }
  child.stderr.pipe(log);
  let stdout = "";
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`${name} did not become ready within ${timeoutMs} ms (see ${LOG_DIR}/${name}.log)`));
    }, timeoutMs);
    child.on("error", (error) => {
      clearTimeout(timer);
      reject(new Error(`${name} could not start: ${error.message}`));
    });
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited (${code ?? signal}) before it was ready (see ${LOG_DIR}/${name}.log)`));
    });
    child.stdout.on("data", (chunk) => {
      log.write(chunk);
      stdout += chunk.toString();
      const match = ready ? stdout.match(ready) : [stdout];
      if (match) {
        clearTimeout(timer);
        resolve({ child, match });
      }
    });
  });
}

/// Stops every child started here: SIGTERM, then SIGKILL after a grace period.
export async function stopAll() {
  await Promise.all(
    children.map(
      ({ child }) =>
        new Promise((resolve) => {
          if (child.exitCode !== null || child.signalCode !== null) return resolve();
          const kill = setTimeout(() => child.kill("SIGKILL"), 3_000);
          child.once("exit", () => {
            clearTimeout(kill);
            resolve();
          });
          child.kill("SIGTERM");
        }),
    ),
  );
  children.length = 0;
}

/// Runs a command to completion with a hard timeout; resolves with {code, stdout, stderr}.
export function run(command, args, { env = {}, timeoutMs = 60_000 } = {}) {
  return new Promise((resolve) => {
    execFile(
      command,
      args,
      { env: { ...process.env, ...env }, timeout: timeoutMs, killSignal: "SIGKILL", maxBuffer: 4 << 20 },
      (error, stdout, stderr) => {
        resolve({ code: error ? (error.code ?? error.signal ?? 1) : 0, stdout, stderr });
      },
    );
  });
}

function account() {
  const key = generatePrivateKey();
  return { key, account: privateKeyToAccount(key), address: privateKeyToAccount(key).address };
}

/// Starts anvil and deploys the token; returns the network handles.
export async function startChain() {
  const port = await freePort();
  await start(
    "anvil",
    ANVIL_BIN,
    ["--host", "127.0.0.1", "--port", String(port), "--chain-id", String(CHAIN_ID), "--accounts", "1"],
    { ready: /Listening on/ },
  );
  const rpcUrl = `http://127.0.0.1:${port}`;
  const chain = defineChain({
    id: CHAIN_ID,
    name: "interop anvil",
    nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
    rpcUrls: { default: { http: [rpcUrl] } },
  });
  const transport = http(rpcUrl, { timeout: 10_000 });
  const publicClient = createPublicClient({ chain, transport, pollingInterval: 50 });

  const keys = {
    deployer: account(),
    bursarFacilitator: account(),
    officialFacilitator: account(),
    payer: account(),
    seller: account(),
  };
  for (const { address } of Object.values(keys)) {
    await publicClient.request({ method: "anvil_setBalance", params: [address, "0x3635C9ADC5DEA00000"] });
  }
  const deployer = createWalletClient({ account: keys.deployer.account, chain, transport, pollingInterval: 50 });
  const artifact = JSON.parse(readFileSync(join(REPO_DIR, "contracts/artifacts/BursarUSD.json"), "utf8"));
  const bytecode = artifact.bytecode.startsWith("0x") ? artifact.bytecode : `0x${artifact.bytecode}`;
  const deployHash = await deployer.deployContract({
    abi: artifact.abi,
    bytecode,
    args: [TOKEN_NAME, TOKEN_SYMBOL, keys.deployer.address],
  });
  const deployed = await publicClient.waitForTransactionReceipt({ hash: deployHash, timeout: 10_000 });
  const token = deployed.contractAddress;
  const mintHash = await deployer.writeContract({
    address: token,
    abi: TOKEN_ABI_EXTRA,
    functionName: "mint",
    args: [keys.payer.address, PAYER_START],
  });
  await publicClient.waitForTransactionReceipt({ hash: mintHash, timeout: 10_000 });

  const balanceOf = (address) =>
    publicClient.readContract({ address: token, abi: ERC20, functionName: "balanceOf", args: [address] });
  const mint = async (to, amount) => {
    const hash = await deployer.writeContract({
      address: token,
      abi: TOKEN_ABI_EXTRA,
      functionName: "mint",
      args: [to, amount],
    });
    await publicClient.waitForTransactionReceipt({ hash, timeout: 10_000 });
  };
  return { rpcUrl, chain, transport, publicClient, keys, token, balanceOf, mint };
}

/// `bursar facilitator` on the anvil chain; resolves with its URL.
export async function startBursarFacilitator(net) {
  const { match } = await start(
    "bursar-facilitator",
    BURSAR_BIN,
    ["facilitator", "--listen", "127.0.0.1:0", "--open-verify", "--open-settle", "--rpc-url", net.rpcUrl, "--chain-id", String(CHAIN_ID),
     "--asset", net.token],
    { env: { BURSAR_FACILITATOR_KEY: net.keys.bursarFacilitator.key, BURSAR_LOG: "warn,bursar=info" },
      ready: /Bursar facilitator on (http:\/\/\S+)/ },
  );
  return match[1];
}

/// `bursar demo-api` charging in the anvil token, settled by `facilitatorUrl`; resolves with its URL.
export async function startBursarPaywall(net, name, facilitatorUrl) {
  const { match } = await start(
    name,
    BURSAR_BIN,
    ["demo-api", "--listen", "127.0.0.1:0", "--facilitator-url", facilitatorUrl,
     "--chain-id", String(CHAIN_ID), "--token", net.token, "--token-name", TOKEN_NAME,
     "--token-version", TOKEN_VERSION, "--pay-to", net.keys.seller.address],
    { ready: /Bursar demo API on (http:\/\/\S+)/ },
  );
  return match[1];
}

/// A node server of this suite (servers/*.mjs); it prints "listening on <url>" when ready.
export async function startNodeServer(name, script, env) {
  const { match } = await start(name, process.execPath, [join(INTEROP_DIR, "servers", script)], {
    env,
    ready: /listening on (http:\/\/\S+)/,
  });
  return match[1];
}

/// Balances of the payer and the seller, for before/after comparisons.
export async function balances(net) {
  const [payer, seller] = await Promise.all([
    net.balanceOf(net.keys.payer.address),
    net.balanceOf(net.keys.seller.address),
  ]);
  return { payer, seller };
}
