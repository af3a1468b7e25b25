import { readdirSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import type { DescService } from "@bufbuild/protobuf";

const GEN = join(import.meta.dirname, "../../../../gen");

function pbFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? pbFiles(join(dir, e.name)) : e.name.endsWith("_pb.ts") ? [join(dir, e.name)] : [],
  );
}

/** Every service in the generated code (gen/**), found by walking the descriptors, not a list. */
export async function generatedServices(): Promise<DescService[]> {
  const services: DescService[] = [];
  for (const file of pbFiles(GEN).sort()) {
    const mod = (await import(pathToFileURL(file).href)) as Record<string, unknown>;
    for (const value of Object.values(mod)) {
      if (typeof value === "object" && value !== null && (value as { kind?: string }).kind === "service") services.push(value as DescService);
    }
  }
  return services;
}

export function methodPath(service: DescService, name: string): string {
  return `/${service.typeName}/${name}`;
}
