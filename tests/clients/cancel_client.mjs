// A third-party client for tests/test_cancellation.py: the TypeScript SDK (pinned in cancel-package.json).
// node cancel_client.mjs URL KEY abort|terminate
//   abort:     calls echo__nap(KEY), and once the backend has started it, aborts it with an AbortController
//              (the SDK sends notifications/cancelled), and stays until the backend's nap is no longer running;
//              prints {"aborted": true, "state": <the nap's state>}
//   terminate: calls echo__nap(KEY), and once the backend has started it, ends the session
//              (transport.terminateSession(): an HTTP DELETE); prints {"terminated": true}
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, key, mode] = process.argv.slice(2);
const client = new Client({ name: "cancel-test-ts", version: "1.0.0" });
const transport = new StreamableHTTPClientTransport(new URL(url));
await client.connect(transport);

const controller = new AbortController();
const call = client.callTool(
  { name: "echo__nap", arguments: { key, seconds: 60 }, _meta: { "io.mcp-broker/timeoutS": 120 } },
  undefined,
  { signal: controller.signal, timeout: 300000 },
).then(() => "answered", (err) => `failed: ${err?.name}: ${err?.message}`);

const deadline = Date.now() + 60000;
for (;;) {
  const state = await client.callTool({ name: "echo__naps", arguments: { key } });
  if (state.content?.[0]?.text === "started") break;
  if (Date.now() > deadline) { console.log(JSON.stringify({ error: "the nap never started" })); process.exit(1); }
  await new Promise((r) => setTimeout(r, 100));
}
if (mode === "abort") {
  controller.abort("the user gave up");
  const outcome = await call;
  // a client lives on after a cancel (its notifications/cancelled is still being POSTed): watch the backend
  let state = "";
  while (Date.now() < deadline + 60000) {
    state = (await client.callTool({ name: "echo__naps", arguments: { key } })).content?.[0]?.text;
    if (state !== "started") break;
    await new Promise((r) => setTimeout(r, 100));
  }
  console.log(JSON.stringify({ aborted: true, call: outcome, state }));
  await client.close();
} else {
  await transport.terminateSession();
  console.log(JSON.stringify({ terminated: true, sessionId: transport.sessionId ?? null }));
}
process.exit(0);
