#!/usr/bin/env node
// Compiles the Solidity sources in src/ with the pinned solcjs and writes artifacts/<Contract>.json.
//
//   node compile.mjs           compile and (re)write the artifacts
//   node compile.mjs --check   compile and fail if a committed artifact differs (for CI)
//
// Run `npm ci` first. The output is deterministic: the same sources, dependencies and compiler
// always give byte-identical artifacts, so they can be committed and checked.

import { readFileSync, writeFileSync, mkdirSync, existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, relative, sep } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = dirname(fileURLToPath(import.meta.url));
const NODE_MODULES = join(ROOT, "node_modules");
const ARTIFACTS = join(ROOT, "artifacts");

/** The contracts to compile and publish: source path (relative to ROOT) and contract name. */
const CONTRACTS = [
  { source: "src/BursarUSD.sol", name: "BursarUSD" },
  { source: "src/BursarBatchSettler.sol", name: "BursarBatchSettler" },
  { source: "src/BursarAuthorizationReader.sol", name: "BursarAuthorizationReader" },
  { source: "src/test/Eip3009OnlyToken.sol", name: "Eip3009OnlyToken" },
  { source: "src/test/PlainErc20.sol", name: "PlainErc20" },
  { source: "src/test/BytesOnlyAuthorizationToken.sol", name: "BytesOnlyAuthorizationToken" },
];

/** Compiler settings. Also recorded in every artifact. */
const SETTINGS = {
  evmVersion: "cancun",
  optimizer: { enabled: true, runs: 200 },
  metadata: { bytecodeHash: "ipfs", appendCBOR: true },
  remappings: [],
};

const OUTPUTS = ["abi", "evm.bytecode.object", "evm.deployedBytecode.object", "evm.methodIdentifiers"];

function fail(message) {
  console.error(`compile.mjs: ${message}`);
  process.exit(1);
}

function loadSolc() {
  if (!existsSync(join(NODE_MODULES, "solc"))) {
    fail("node_modules/solc is missing; run `npm ci` in contracts/ first");
  }
  const require = createRequire(import.meta.url);
  return require("solc");
}

/** Resolves imports: package imports from node_modules, everything else relative to ROOT. */
function findImport(path) {
  if (path.includes("..")) {
    return { error: `refusing import path with '..': ${path}` };
  }
  const candidates = path.startsWith("@") ? [join(NODE_MODULES, path)] : [join(ROOT, path), join(NODE_MODULES, path)];
  for (const file of candidates) {
    if (existsSync(file)) {
      return { contents: readFileSync(file, "utf8") };
    }
  }
  return { error: `import not found: ${path}` };
}

function compile(solc) {
  const sources = {};
  for (const { source } of CONTRACTS) {
    sources[source] = { content: readFileSync(join(ROOT, source), "utf8") };
  }
  const input = {
    language: "Solidity",
    sources,
    settings: { ...SETTINGS, outputSelection: { "*": { "*": OUTPUTS } } },
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImport }));
  const diagnostics = output.errors ?? [];
  for (const diagnostic of diagnostics) {
    console.error(diagnostic.formattedMessage ?? diagnostic.message);
  }
  const errors = diagnostics.filter((d) => d.severity === "error");
  if (errors.length > 0) {
    fail(`compilation failed with ${errors.length} error(s)`);
  }
  const warnings = diagnostics.filter((d) => d.severity === "warning");
  if (warnings.length > 0) {
    fail(`compilation produced ${warnings.length} warning(s); fix them so artifacts stay clean`);
  }

  const artifacts = new Map();
  for (const { source, name } of CONTRACTS) {
    const contract = output.contracts?.[source]?.[name];
    if (!contract) {
      fail(`no output for ${source}:${name}`);
    }
    const artifact = {
      contractName: name,
      sourceName: source,
      abi: contract.abi,
      bytecode: `0x${contract.evm.bytecode.object}`,
      deployedBytecode: `0x${contract.evm.deployedBytecode.object}`,
      methodIdentifiers: contract.evm.methodIdentifiers,
      compiler: {
        name: "solc",
        version: solc.version(),
        settings: SETTINGS,
      },
    };
    if (artifact.bytecode.length <= 2 || artifact.deployedBytecode.length <= 2) {
      fail(`${name} compiled to empty bytecode (is it abstract?)`);
    }
    artifacts.set(name, `${JSON.stringify(artifact, null, 2)}\n`);
  }
  return artifacts;
}

/** Names the top-level fields that differ between two artifact texts, for a readable CI failure. */
function describeDifference(committedText, freshText) {
  let committed;
  try {
    committed = JSON.parse(committedText);
  } catch {
    return "the committed artifact is not valid JSON";
  }
  const fresh = JSON.parse(freshText);
  const keys = new Set([...Object.keys(committed), ...Object.keys(fresh)]);
  const differing = [...keys].filter((k) => JSON.stringify(committed[k]) !== JSON.stringify(fresh[k]));
  return differing.length > 0 ? `fields differ: ${differing.join(", ")}` : "formatting differs";
}

function main() {
  const args = process.argv.slice(2);
  const unknown = args.filter((a) => a !== "--check");
  if (unknown.length > 0) {
    fail(`unknown argument(s): ${unknown.join(" ")} (usage: node compile.mjs [--check])`);
  }
  const check = args.includes("--check");
  const solc = loadSolc();
  const artifacts = compile(solc);

  if (check) {
    const stale = [];
    for (const [name, text] of artifacts) {
      const file = join(ARTIFACTS, `${name}.json`);
      const shown = relative(process.cwd(), file) || file;
      if (!existsSync(file)) {
        stale.push(`${shown} is missing`);
        continue;
      }
      const committed = readFileSync(file, "utf8");
      if (committed !== text) {
        stale.push(`${shown} is out of date (${describeDifference(committed, text)})`);
      }
    }
    if (stale.length > 0) {
      for (const line of stale) {
        console.error(`compile.mjs: ${line}`);
      }
      fail("artifacts do not match the sources; run `node compile.mjs` in contracts/ and commit the result");
    }
    console.log(`compile.mjs: ${artifacts.size} artifact(s) up to date (solc ${solc.version()})`);
    return;
  }

  mkdirSync(ARTIFACTS, { recursive: true });
  for (const [name, text] of artifacts) {
    const file = join(ARTIFACTS, `${name}.json`);
    writeFileSync(file, text);
    console.log(`compile.mjs: wrote ${relative(ROOT, file).split(sep).join("/")}`);
  }
}

main();
