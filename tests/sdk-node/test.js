// Drives the gamezone SDK sidecar with Agones' official Node.js client, as a game would.
// Run by tests/sdk/local.rs against `gamezone sdk --local` (AGONES_SDK_GRPC_PORT names its port);
// exits non-zero, saying what differed, when the sidecar does not behave as Agones'.
"use strict";
const AgonesSDK = require("@google-cloud/agones-sdk");
const assert = require("node:assert/strict");

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, f) {
	const deadline = Date.now() + 10000;
	let last;
	while (Date.now() < deadline) {
		last = await f();
		if (last) return last;
		await sleep(100);
	}
	throw new Error(`timed out waiting for ${what}`);
}

async function main() {
	const sdk = new AgonesSDK();
	await sdk.connect();
	const seen = [];
	sdk.watchGameServer((gs) => seen.push(gs));
	await until("the watch to send the current server first", () => seen.length > 0);
	assert.equal(seen[0].objectMeta.name, "node-server");

	await sdk.ready();
	sdk.health();
	sdk.health();
	await sdk.setLabel("engine", "node");
	await sdk.setAnnotation("build", "v1.2.3");
	const labelled = await until("the label and the Ready state", async () => {
		const gs = await sdk.getGameServer();
		const labels = new Map(gs.objectMeta.labelsMap);
		return labels.get("gamezone.dev/sdk-engine") === "node" && gs.status.state === "Ready" ? gs : null;
	});
	const annotations = new Map(labelled.objectMeta.annotationsMap);
	assert.equal(annotations.get("gamezone.dev/sdk-build"), "v1.2.3");
	await until("the watch to show the label", () =>
		seen.some((gs) => new Map(gs.objectMeta.labelsMap).get("gamezone.dev/sdk-engine") === "node"),
	);

	await assert.rejects(sdk.setLabel("not a key", "x"), /not a key/);

	await sdk.reserve(1);
	await until("Reserved", async () => (await sdk.getGameServer()).status.state === "Reserved");
	await until("Ready again after the reservation", async () => (await sdk.getGameServer()).status.state === "Ready");
	await sdk.allocate();
	await until("Allocated", async () => (await sdk.getGameServer()).status.state === "Allocated");
	await sdk.shutdown();
	await until("Shutdown", async () => (await sdk.getGameServer()).status.state === "Shutdown");
	sdk.close();
	console.log("node client: all calls behaved as in Agones");
	// The client's alpha and beta channels keep the event loop alive.
	process.exit(0);
}

main().catch((e) => {
	console.error(e);
	process.exit(1);
});
