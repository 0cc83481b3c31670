// Verifies one Standard Webhooks request with the reference library, npm
// `standardwebhooks` (https://www.standardwebhooks.com), for
// `verify_standard_webhook` in tests/support/targets/install.rs.
//
// argv[2]: the directory whose node_modules holds `standardwebhooks`.
// stdin:   JSON {"secret": "whsec_…" or raw key text, "headers": {name: value}, "body_base64": "…"}.
// Prints "ok" and exits 0 when the signature verifies; prints the library's
// error and exits 1 when it does not; any other exit is a broken setup.
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.join(process.argv[2], "package.json"));
const { Webhook } = require("standardwebhooks");

let input = "";
for await (const chunk of process.stdin) input += chunk;
const { secret, headers, body_base64 } = JSON.parse(input);
const body = Buffer.from(body_base64, "base64");

let webhook;
try {
  webhook = secret.startsWith("whsec_")
    ? new Webhook(secret)
    : new Webhook(new Uint8Array(Buffer.from(secret, "utf8")), { format: "raw" });
} catch (e) {
  console.log(`bad secret: ${e.message}`);
  process.exit(1);
}
try {
  webhook.verify(body, headers, { jsonParse: false });
} catch (e) {
  console.log(`${e.name}: ${e.message}`);
  process.exit(1);
}
console.log("ok");
