// Bundles the live market page into web/dist (served by gateway_rest at /, see gateway_rest/web_page.py):
//   dist/index.html, dist/web/app.js (lightweight-charts included), dist/web/app.css
// Run by `npm run build`; tests/integration/test_web_page.py and the Dockerfile run npm ci + build.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "dist");
rmSync(dist, { recursive: true, force: true });
mkdirSync(join(dist, "web"), { recursive: true });
await build({
  entryPoints: [join(here, "src", "main.js")],
  bundle: true,
  minify: true,
  sourcemap: true,
  format: "iife",
  target: ["es2020"],
  outfile: join(dist, "web", "app.js"),
  legalComments: "linked",
  logLevel: "warning",
});
copyFileSync(join(here, "src", "app.css"), join(dist, "web", "app.css"));
copyFileSync(join(here, "src", "index.html"), join(dist, "index.html"));
console.log(`built ${dist}`);
