import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, openSync, closeSync, readFileSync, readdirSync, symlinkSync, copyFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { tempDir } from "./temp-dir.js";

// A private Docker engine per test file (testing.md "Docker"): its own data root, exec root,
// pid file and socket, no iptables, no bridge; containers run with `--network none`. The image
// fleetlet-test/busybox:1 is imported from busybox-static (no registry). Everything it starts
// is stopped by pid and removed in stop().

export const TEST_IMAGE = "fleetlet-test/busybox:1";
const BUSYBOX = "/bin/busybox";

/** Why Docker tests cannot run here, or false. The project's test command installs both. */
export function dockerdSkipReason(): string | false {
  if (process.getuid?.() !== 0) return "needs root to run a private dockerd";
  for (const [bin, pkg] of [
    ["dockerd", "docker.io"],
    ["docker", "docker.io"],
    [BUSYBOX, "busybox-static"],
  ] as const) {
    try {
      execFileSync("sh", ["-c", `command -v ${bin}`], { stdio: "ignore" });
    } catch {
      return `needs ${bin} (apt-get install -y ${pkg}; the project's test command installs it)`;
    }
  }
  return false;
}

export class TestDockerd {
  /** Socket path; `host` is the DOCKER_HOST form. */
  readonly socketPath: string;
  readonly host: string;
  private child: ChildProcess | undefined;
  private readonly dir: { path: string; remove(): void };
  private logFd = -1;

  private constructor(
    dir: { path: string; remove(): void },
    private readonly netns?: string,
  ) {
    this.dir = dir;
    this.socketPath = join(dir.path, "docker.sock");
    this.host = `unix://${this.socketPath}`;
  }

  /**
   * Starts an engine and imports the test image. With `netns`, the engine runs in that network
   * namespace (entered with nsenter, so it keeps this mount namespace's /sys/fs/cgroup, which
   * `ip netns exec` would hide): the networks it creates live there, not on this machine.
   */
  static async start(options: { netns?: string } = {}): Promise<TestDockerd> {
    const d = new TestDockerd(tempDir("dockerd"), options.netns);
    try {
      await d.startEngine();
      d.importImage();
    } catch (e) {
      await d.stop();
      throw e;
    }
    return d;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** The engine's log so far (for failure messages). */
  log(): string {
    try {
      return readFileSync(join(this.dir.path, "dockerd.log"), "utf8");
    } catch {
      return "";
    }
  }

  /** Runs the docker CLI against this engine; returns trimmed stdout. */
  docker(...args: string[]): string {
    return execFileSync("docker", ["-H", this.host, ...args], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 60_000 }).trim();
  }

  /**
   * Starts the engine, on `socketPath` or another socket (same data root): tests use another
   * socket to change containers while an agent cannot see the engine.
   */
  async startEngine(socketPath = this.socketPath): Promise<void> {
    if (this.child) throw new Error("dockerd already running");
    const root = this.dir.path;
    for (const sub of ["data", "exec"]) mkdirSync(join(root, sub), { recursive: true });
    this.logFd = openSync(join(root, "dockerd.log"), "a");
    const prefix = this.netns ? ["nsenter", `--net=/run/netns/${this.netns}`] : [];
    const child = spawn(
      prefix[0] ?? "dockerd",
      [
        ...(prefix.length ? [prefix[1]!, "dockerd"] : []),
        "--data-root", join(root, "data"),
        "--exec-root", join(root, "exec"),
        "--pidfile", join(root, "dockerd.pid"),
        "-H", `unix://${socketPath}`,
        "--storage-driver", "overlay2",
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
      ],
      { stdio: ["ignore", this.logFd, this.logFd] },
    );
    this.child = child;
    const end = Date.now() + 30_000;
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) {
        this.child = undefined;
        throw new Error(`dockerd exited at start: ${this.log().split("\n").slice(-5).join(" | ")}`);
      }
      try {
        execFileSync("docker", ["-H", `unix://${socketPath}`, "version", "--format", "{{.Server.Version}}"], { stdio: "ignore", timeout: 5000 });
        return;
      } catch {
        if (Date.now() > end) throw new Error(`dockerd not ready in 30 s: ${this.log().split("\n").slice(-5).join(" | ")}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  /** Stops the engine (SIGTERM, as an operator's restart would; SIGKILL after 20 s). */
  async stopEngine(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    const child = this.child;
    if (!child) return;
    this.child = undefined;
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once("exit", r));
      child.kill(signal);
      const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
      await exited;
      clearTimeout(timer);
    }
    if (this.logFd >= 0) {
      closeSync(this.logFd);
      this.logFd = -1;
    }
  }

  /** Removes every container, stops the engine, unmounts what it left and deletes its dirs. */
  async stop(): Promise<void> {
    if (this.child) {
      try {
        const ids = this.docker("ps", "-aq").split("\n").filter(Boolean);
        if (ids.length) this.docker("rm", "-f", ...ids);
      } catch {
        // engine already unhealthy: stopping it below still ends its containers
      }
    }
    await this.stopEngine();
    // overlay2 and the exec root may leave mounts under our directory only.
    const mounts = readFileSync("/proc/self/mounts", "utf8")
      .split("\n")
      .map((l) => l.split(" ")[1] ?? "")
      .filter((m) => m.startsWith(this.dir.path))
      .sort((a, b) => b.length - a.length);
    for (const m of mounts) {
      try {
        execFileSync("umount", ["-l", m], { stdio: "ignore" });
      } catch {
        // already gone
      }
    }
    this.dir.remove();
  }

  private importImage(): void {
    const rootfs = join(this.dir.path, "rootfs");
    mkdirSync(join(rootfs, "bin"), { recursive: true });
    mkdirSync(join(rootfs, "tmp"), { recursive: true });
    copyFileSync(BUSYBOX, join(rootfs, "bin", "busybox"));
    const applets = execFileSync(BUSYBOX, ["--list"], { encoding: "utf8" }).split("\n").filter(Boolean);
    for (const a of applets) if (a !== "busybox") symlinkSync("busybox", join(rootfs, "bin", a));
    execFileSync("sh", ["-c", `tar -C '${rootfs}' -c . | docker -H '${this.host}' import -c 'ENV PATH=/bin' - ${TEST_IMAGE}`], { stdio: "ignore" });
    rmSync(rootfs, { recursive: true, force: true });
    if (!existsSync(this.socketPath) || readdirSync(this.dir.path).length === 0) throw new Error("dockerd state missing after import");
  }
}
