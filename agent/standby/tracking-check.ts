import { existsSync, readFileSync } from "node:fs";
import net from "node:net";
import type { ConntrackFlow } from "../kernel/conntrack-decoder.js";
import { errorMessage } from "../../lib/error-message.js";

/** What a tracking check needs: a conntrack dump of the agent's network namespace. */
export interface DumpSource {
  dump(): Promise<ConntrackFlow[]>;
}

export interface TrackingCheckOptions {
  /** Where the conntrack sysctls are (tests point it at a tree of their own). */
  procSysNetfilter?: string;
  /** The whole probe (connect, dump) gives up after this (default 3 s). */
  timeoutMs?: number;
}

/** How to enable tracking, for every reason that says it is off. */
const HOW = "e.g. `iptables -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT` (docs/operations.md)";

/**
 * Whether conntrack is really tracking flows in the agent's network namespace: the reason it is
 * not, or undefined. A readable table is not enough: the kernel only tracks flows in a namespace
 * once a rule there uses conntrack, and an empty table makes every instance look idle (a busy
 * demo was put on standby that way). So, in order:
 * 1. the sysctls: no `nf_conntrack_count` means nf_conntrack is not loaded here;
 *    `nf_conntrack_events` = 0 means the kernel sends no events (nothing would wake an instance);
 * 2. a probe flow: a TCP connection over loopback, which must be in a dump while it is open.
 * A raw-table NOTRACK rule on `lo` makes the probe fail on a host that tracks everything else:
 * the reason says what was checked, so the operator can tell (docs/operations.md).
 */
export function createTrackingCheck(source: DumpSource, options: TrackingCheckOptions = {}): () => Promise<string | undefined> {
  const sys = options.procSysNetfilter ?? "/proc/sys/net/netfilter";
  const timeoutMs = options.timeoutMs ?? 3000;
  return async () => {
    const read = (name: string) => {
      try {
        return readFileSync(`${sys}/${name}`, "latin1").trim();
      } catch {
        return undefined;
      }
    };
    if (!existsSync(`${sys}/nf_conntrack_count`)) {
      return `conntrack is not tracking flows: nf_conntrack is not loaded in the agent's network namespace (no ${sys}/nf_conntrack_count); load it and make a rule use it, ${HOW}`;
    }
    if (read("nf_conntrack_events") === "0") {
      return `conntrack sends no events (net.netfilter.nf_conntrack_events=0): new connections would not be seen and nothing would wake an instance; set it to 1 (or 2), ${HOW}`;
    }
    let probe: { seen: boolean };
    try {
      probe = await probeFlow(source, timeoutMs);
    } catch (e) {
      // The probe itself could not run (no loopback?): that proves nothing about tracking.
      throw new Error(`tracking probe: ${errorMessage(e)}`);
    }
    if (probe.seen) return undefined;
    // No ports or counts in the reason: it is reported in every status and a watch sends a
    // change whenever it differs, so it stays the same from one check to the next.
    return (
      "conntrack is not tracking flows in the agent's network namespace: a probe connection over loopback " +
      `was not in the table while open (nf_conntrack loaded, nf_conntrack_events=${read("nf_conntrack_events") ?? "?"}); ` +
      `the kernel tracks flows in a namespace only once a rule there uses conntrack, ${HOW}`
    );
  };
}

/** Opens a loopback connection, dumps the table while it is open, and looks for it. */
async function probeFlow(source: DumpSource, timeoutMs: number): Promise<{ seen: boolean }> {
  const server = net.createServer((s) => s.on("error", () => undefined));
  const sockets: net.Socket[] = [];
  server.on("connection", (s) => sockets.push(s));
  let timer: NodeJS.Timeout | undefined;
  try {
    const work = (async () => {
      await new Promise<void>((res, rej) => {
        server.once("error", rej);
        server.listen(0, "127.0.0.1", () => res());
      });
      const dst = (server.address() as net.AddressInfo).port;
      const client = net.connect(dst, "127.0.0.1");
      sockets.push(client);
      await new Promise<void>((res, rej) => {
        client.once("connect", () => res());
        client.once("error", rej);
      });
      const src = client.localPort!;
      const flows = await source.dump();
      const seen = flows.some((f) => f.srcIp === "127.0.0.1" && f.dstIp === "127.0.0.1" && f.srcPort === src && f.dstPort === dst);
      return { seen };
    })();
    work.catch(() => undefined); // settled after a timeout: nobody waits for it any more
    const timeout = new Promise<never>((_res, rej) => {
      timer = setTimeout(() => rej(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
    });
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
    for (const s of sockets) s.destroy();
    server.close();
  }
}
