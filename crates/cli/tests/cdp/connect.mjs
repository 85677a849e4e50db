// Connects to a browser sandbox through the router with playwright-core's connectOverCDP,
// opens a page served inside the sandbox, evaluates JavaScript there and prints one JSON line.
//
//   node connect.mjs <router URL> <router token> <sandbox name> <page URL inside the sandbox>
import { chromium } from "playwright-core";

const [router, token, sandbox, pageUrl] = process.argv.slice(2);
const headers = {
  Authorization: `Bearer ${token}`,
  "X-Sandbox-ID": sandbox,
  "X-Sandbox-Port": "9222",
};
const browser = await chromium.connectOverCDP(router, { headers, timeout: 30000 });
const context = browser.contexts()[0] ?? (await browser.newContext());
const page = await context.newPage();
await page.goto(pageUrl);
const result = await page.evaluate(() => ({
  title: document.title,
  sum: [1, 2, 3, 4].reduce((a, b) => a + b, 0),
  agent: navigator.userAgent,
}));
await page.click("#go");
const after = await page.textContent("#out");
await page.close();
await browser.close();
console.log(JSON.stringify({ version: browser.version(), ...result, after }));
