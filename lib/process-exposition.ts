import { readdirSync, readFileSync } from "node:fs";
import { fleetletVersion } from "./fleetlet-version.js";

/**
 * The series every Prometheus client library exports about its process (prom-client's and
 * client_golang's names, so the usual dashboards and `up`-style alerts work), and
 * fleetlet_build_info: written fresh at each scrape in the text format.
 */
export function processExposition(serviceName: string): string {
  const cpu = process.cpuUsage();
  const memory = process.memoryUsage();
  const lines = [
    "# HELP fleetlet_build_info fleetlet's version and the Node.js it runs on (always 1)",
    "# TYPE fleetlet_build_info gauge",
    `fleetlet_build_info{service="${serviceName}",version="${fleetletVersion()}",node_version="${process.version}"} 1`,
    "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.",
    "# TYPE process_cpu_seconds_total counter",
    `process_cpu_seconds_total ${(cpu.user + cpu.system) / 1e6}`,
    "# HELP process_resident_memory_bytes Resident memory size in bytes.",
    "# TYPE process_resident_memory_bytes gauge",
    `process_resident_memory_bytes ${memory.rss}`,
    "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.",
    "# TYPE process_start_time_seconds gauge",
    `process_start_time_seconds ${Math.round(Date.now() / 1000 - process.uptime())}`,
    "# HELP nodejs_heap_size_used_bytes Process heap size used from Node.js in bytes.",
    "# TYPE nodejs_heap_size_used_bytes gauge",
    `nodejs_heap_size_used_bytes ${memory.heapUsed}`,
    "# HELP nodejs_heap_size_total_bytes Process heap size from Node.js in bytes.",
    "# TYPE nodejs_heap_size_total_bytes gauge",
    `nodejs_heap_size_total_bytes ${memory.heapTotal}`,
  ];
  const fds = openFds();
  if (fds !== undefined) lines.push("# HELP process_open_fds Number of open file descriptors.", "# TYPE process_open_fds gauge", `process_open_fds ${fds}`);
  const maxFds = maxOpenFds();
  if (maxFds !== undefined) lines.push("# HELP process_max_fds Maximum number of open file descriptors.", "# TYPE process_max_fds gauge", `process_max_fds ${maxFds}`);
  return `${lines.join("\n")}\n`;
}

function openFds(): number | undefined {
  try {
    return readdirSync("/proc/self/fd").length;
  } catch {
    return undefined;
  }
}

function maxOpenFds(): number | undefined {
  try {
    const m = /^Max open files\s+(\d+)/m.exec(readFileSync("/proc/self/limits", "utf8"));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}
