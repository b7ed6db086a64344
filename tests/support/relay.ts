// A TCP relay between a client and a server that can cut the network silently: while cut, it
// still accepts connections and reads what both sides send, but holds every byte (and every
// close) instead of passing it on, as a switch that drops packets would, and nothing is refused.
// When the cut heals, what was held goes through after all: first on the connections opened
// during the cut, then, after staleDelayMs, on the connections that were open before it: the
// worst order for a server that has not fenced them (a stale write arriving last).
import net from 'node:net';

type Held = Buffer | 'end';

interface Pair {
  a: net.Socket; // from the client
  b: net.Socket; // to the server
  held: boolean;
  bornInCut: boolean;
  toServer: Held[];
  toClient: Held[];
}

export interface Relay {
  port: number;
  /** Connections the relay has carried so far. */
  accepted(): number;
  cut(): void;
  /** Ends the cut: connections opened during it go through now, older ones after staleDelayMs.
   *  Resolves once everything held has been passed on. */
  heal(staleDelayMs?: number): Promise<void>;
  close(): void;
}

function pass(to: net.Socket, items: Held[]): void {
  for (const it of items.splice(0)) {
    if (to.destroyed) return;
    if (it === 'end') to.end();
    else to.write(it);
  }
}

export async function startRelay(targetPort: number, host = '127.0.0.1'): Promise<Relay> {
  const pairs = new Set<Pair>();
  let cutting = false;
  let accepted = 0;
  const srv = net.createServer({ allowHalfOpen: true }, (a) => {
    accepted++;
    const b = net.connect({ port: targetPort, host, allowHalfOpen: true });
    const p: Pair = { a, b, held: cutting, bornInCut: cutting, toServer: [], toClient: [] };
    pairs.add(p);
    const forward = (from: net.Socket, to: net.Socket, q: Held[]) => {
      from.on('data', (d: Buffer) => (p.held ? q.push(d) : to.write(d)));
      from.on('end', () => (p.held ? q.push('end') : to.end()));
      from.on('error', () => (p.held ? q.push('end') : to.destroy()));
    };
    forward(a, b, p.toServer);
    forward(b, a, p.toClient);
    const gone = () => {
      if (a.destroyed && b.destroyed) pairs.delete(p);
    };
    a.on('close', gone);
    b.on('close', gone);
  });
  await new Promise<void>((r) => srv.listen(0, host, r));
  const release = (p: Pair) => {
    p.held = false;
    pass(p.b, p.toServer);
    pass(p.a, p.toClient);
  };
  return {
    port: (srv.address() as net.AddressInfo).port,
    accepted: () => accepted,
    cut() {
      cutting = true;
      for (const p of pairs) p.held = true;
    },
    async heal(staleDelayMs = 0) {
      cutting = false;
      const old = [...pairs].filter((p) => !p.bornInCut);
      for (const p of pairs) if (p.bornInCut) release(p);
      if (staleDelayMs > 0) await new Promise((r) => setTimeout(r, staleDelayMs));
      for (const p of old) release(p);
      for (const p of pairs) p.bornInCut = false;
    },
    close() {
      srv.close();
      for (const p of pairs) {
        p.a.destroy();
        p.b.destroy();
      }
    },
  };
}
