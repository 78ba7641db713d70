// The package as users get it: `npm pack` ships the library and its types
// (generated from the JSDoc), and the tarball installs and runs the README's
// quick start against `idem demo`. TypeScript users compile against the types.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, existsSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const PKG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const ROOT = path.resolve(PKG, "../..");
const npm = (args, cwd = PKG) => execFileSync("npm", args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });

test("the types compile, from the JSDoc, with a TypeScript user's code", () => {
  const tsc = path.join(PKG, "node_modules", ".bin", "tsc");
  assert.ok(existsSync(tsc), "run npm ci in clients/js first");
  execFileSync(tsc, ["-p", "tsconfig.build.json"], { cwd: PKG, stdio: "pipe" });
  execFileSync(tsc, ["-p", "tsconfig.json"], { cwd: PKG, stdio: "pipe" });
});

test("npm pack ships the library, its types and README only", () => {
  const [packed] = JSON.parse(npm(["pack", "--dry-run", "--json", "--ignore-scripts"]));
  const files = packed.files.map((f) => f.path).sort();
  assert.deepEqual(files, ["README.md", "idem-client.d.mts", "idem-client.mjs", "package.json"]);
});

test("the tarball installs and runs the quick start against idem demo", async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "idem-js-"));
  const [packed] = JSON.parse(npm(["pack", "--json", "--pack-destination", dir]));
  const app = path.join(dir, "app");
  execFileSync("mkdir", ["-p", app]);
  writeFileSync(path.join(app, "package.json"), '{"name": "app", "type": "module", "private": true}');
  npm(["install", "--no-audit", "--no-fund", path.join(dir, packed.filename)], app);
  const port = await new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
  const bin = process.env.IDEM_BIN ?? path.join(ROOT, "target", "debug", "idem");
  const demo = spawn(bin, ["--log", "warn", "demo", "--store", "memory://", "--listen", `127.0.0.1:${port}`], { stdio: "ignore" });
  try {
    for (let i = 0; i < 300; i++) {
      const up = await new Promise((resolve) => {
        const c = net.connect(port, "127.0.0.1", () => { c.destroy(); resolve(true); });
        c.on("error", () => resolve(false));
      });
      if (up) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    const quickStart = `import { IdempotentClient } from "idem-client";
const answer = await new IdempotentClient().post("http://127.0.0.1:${port}/payments", { json: { amount: 42.5, currency: "EUR", recipient: "acct_123" } });
console.log(answer.status, answer.replayed);`;
    writeFileSync(path.join(app, "quick.mjs"), quickStart);
    const out = execFileSync(process.execPath, ["quick.mjs"], { cwd: app, encoding: "utf8" });
    assert.equal(out.trim(), "201 false");
  } finally {
    demo.kill("SIGKILL");
  }
});
