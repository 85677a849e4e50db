// Time to first command: claims a sandbox from a warm pool and times claim create → the first
// stdout bytes of `echo` through the SDK, for a number of iterations on an instance at rest
// (each sandbox deleted and the pool given time to refill between iterations). The first
// iteration warms the connections and is not counted.
//   node examples/ttfc.mjs [pool] [iterations] [rest seconds]
import { SandboxClient } from "../dist/index.js";

const [pool = "python-pool", n = "20", rest = "2"] = process.argv.slice(2);
const client = new SandboxClient();
const ms = [];
try {
  for (let i = 0; i <= Number(n); i++) {
    const start = performance.now();
    let first = 0;
    const sb = await client.createSandbox(pool);
    await sb.run("echo hi", { onStdout: () => (first ||= performance.now() - start) });
    await sb.terminate();
    if (i > 0) ms.push(first);
    await new Promise((r) => setTimeout(r, Number(rest) * 1000));
  }
} finally {
  client.close();
}
ms.sort((a, b) => a - b);
const q = (p) => ms[Math.round(p * (ms.length - 1))];
console.log(`typescript: n=${ms.length} p50=${q(0.5).toFixed(1)} p90=${q(0.9).toFixed(1)} min=${ms[0].toFixed(1)} max=${ms.at(-1).toFixed(1)} ms`);
