import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import type { DockerInspect, DockerStatsJson } from "../../../../agent/runtime/docker/docker-api-types.js";
import { repoPath } from "../../../helpers/paths.js";

// Engine answers recorded from a real dockerd 20.10.24 (API 1.41, cgroup v1) with the test
// image, by curl on its socket: inspect-*.json (GET /containers/{id}/json), stats-*.json
// (GET /containers/{id}/stats?stream=false&one-shot=true), events.jsonl (GET /events lines).
// See test/fixtures/docker/engine-fixtures.md.
const DIR = repoPath("test", "fixtures", "docker");

export function fixtureText(name: string): string {
  return readFileSync(resolve(DIR, name), "utf8");
}

export function inspectFixture(name: string): DockerInspect {
  return JSON.parse(fixtureText(`inspect-${name}.json`)) as DockerInspect;
}

export function statsFixture(name: string): DockerStatsJson {
  return JSON.parse(fixtureText(`stats-${name}.json`)) as DockerStatsJson;
}

/** The recorded events file, one raw line each. */
export function eventLines(): string[] {
  return fixtureText("events.jsonl").split("\n").filter((l) => l.trim() !== "");
}
