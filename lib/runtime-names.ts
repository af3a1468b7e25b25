/** The container runtimes an agent can have (runtime.md); request fields name one of these. */
export const RUNTIME_NAMES = ["docker", "kubernetes"] as const;
export type RuntimeName = (typeof RUNTIME_NAMES)[number];
