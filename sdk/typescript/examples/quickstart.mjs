// Quick start: claims a sandbox from a warm pool of a local `agent-sandbox up`, runs a
// command, writes and runs a file, runs a Python cell, prints the time to the first output,
// and deletes the sandbox.  node examples/quickstart.mjs [pool] [namespace]
import { SandboxClient } from "../dist/index.js";

const [pool = "python-pool", namespace = "default"] = process.argv.slice(2);
const client = new SandboxClient();
try {
  const start = performance.now();
  const sb = await client.createSandbox(pool, { namespace });
  const r = await sb.run("echo 'Hello from Agent Sandbox!'");
  const first = performance.now() - start;
  process.stdout.write(r.stdout);
  await sb.files.write("hello.py", 'print("Hello")\n');
  process.stdout.write((await sb.run("python3 hello.py")).stdout);
  console.log((await sb.runCode("x = 6 * 7\nx")).result);
  console.log(`claim to first output: ${first.toFixed(1)} ms`);
} finally {
  await client.deleteAll();
  client.close();
}
