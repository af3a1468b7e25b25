/**
 * A plain TCP proxy in a process of its own, so a test can cut a link for real with SIGSTOP
 * (connections stay open, nothing flows either way: a network partition between two daemons
 * while both keep running and serving others). Run as
 * `node dist/test/helpers/tcp-proxy-process.js TARGET_HOST:PORT`; prints {"port": N} once
 * listening on 127.0.0.1:N. Imported, `startTcpProxy(target)` spawns it.
 */
import { spawn, type ChildProcess } from "node:child_process";
import net from "node:net";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { builtHelper } from "./paths.js";

export interface TcpProxy {
  child: ChildProcess;
  address: string;
  stop(): Promise<void>;
}

export async function startTcpProxy(target: string): Promise<TcpProxy> {
  const child = spawn(process.execPath, [builtHelper("tcp-proxy-process"), target], { stdio: ["ignore", "pipe", "inherit"] });
  const port = await new Promise<number>((res, rej) => {
    createInterface({ input: child.stdout! }).once("line", (line) => res((JSON.parse(line) as { port: number }).port));
    child.once("exit", (code) => rej(new Error(`tcp proxy exited (${code}) before listening`)));
  });
  const exited = new Promise<void>((res) => child.once("exit", () => res()));
  return {
    child,
    address: `127.0.0.1:${port}`,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGCONT");
      child.kill("SIGKILL");
      await exited;
    },
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const target = process.argv[2] ?? "";
  const colon = target.lastIndexOf(":");
  const host = target.slice(0, colon);
  const port = Number(target.slice(colon + 1));
  const server = net.createServer((client) => {
    const upstream = net.connect(port, host);
    client.pipe(upstream).pipe(client);
    const close = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on("error", close).on("close", close);
    upstream.on("error", close).on("close", close);
  });
  server.listen(0, "127.0.0.1", () => process.stdout.write(`${JSON.stringify({ port: (server.address() as net.AddressInfo).port })}\n`));
}
