// A child process for server-io.test.ts: connects a session, opens one device, prints
// "opened <id>" and then waits to be killed (a session that dies without CLOSE).
import { TestClient } from './server-helpers.js';

const [port, sessname, dev, mode] = process.argv.slice(2);
const c = await TestClient.connect(Number(port), sessname!);
await c.sessInfo();
const o = await c.open(dev!, mode as 'rw');
process.stdout.write(o.errno === 0 ? `opened ${o.rsp!.deviceId}\n` : `errno ${o.errno}\n`);
setInterval(() => {}, 1 << 30);
