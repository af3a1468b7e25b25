/**
 * The one table of who may call what (security.md "Authorisation"): every RPC of every service
 * either daemon serves maps to the least role that may call it. A method missing here is refused
 * (default deny), and test/lib/rpc/authz/role-table.test.ts walks the generated descriptors so a
 * new RPC cannot ship without an entry.
 */
export type Role = "viewer" | "operator" | "admin" | "aggregator";

/**
 * viewer < operator < admin, each including the ones before it; and "aggregator", the
 * aggregator's own identity on agents: what an operator may do (its routed log calls) plus
 * acknowledging metering entries, which no other role may (an acknowledgement lets retention
 * delete entries the aggregator has not merged: security.md "The aggregator's own identity needs
 * only what it calls"). An admin cannot acknowledge; the aggregator cannot register instances.
 */
export const ROLES: readonly Role[] = ["viewer", "operator", "admin", "aggregator"];

const RANK: Record<Role, number> = { viewer: 1, operator: 2, admin: 3, aggregator: 2 };

export function isRole(value: string): value is Role {
  return Object.hasOwn(RANK, value);
}

/** Whether `held` includes `needed` (viewer < operator < admin; aggregator = operator + its own). */
export function roleIncludes(held: Role, needed: Role): boolean {
  if (needed === "aggregator") return held === "aggregator";
  return RANK[held] >= RANK[needed];
}

/** Roles that change state: their calls are audited whatever the outcome. */
export function isMutatingRole(role: Role): boolean {
  return role !== "viewer";
}

// Keyed by gRPC path "/package.Service/Method". Health and reflection are "viewer" because every
// authenticated caller holds at least viewer: grpcurl / buf curl with any identity can use them.
export const METHOD_ROLES: Readonly<Record<string, Role>> = {
  // grpc.health.v1 and reflection: readable by any authenticated caller.
  "/grpc.health.v1.Health/Check": "viewer",
  "/grpc.health.v1.Health/List": "viewer",
  "/grpc.health.v1.Health/Watch": "viewer",
  "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": "viewer",
  "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": "viewer",

  // Agent: inventory. Registering/removing instances and snapshots meters resources: admin.
  "/fleetlet.agent.v1.InventoryService/RegisterInstance": "admin",
  "/fleetlet.agent.v1.InventoryService/DeregisterInstance": "admin",
  "/fleetlet.agent.v1.InventoryService/GetInstance": "viewer",
  "/fleetlet.agent.v1.InventoryService/ListInstances": "viewer",
  "/fleetlet.agent.v1.InventoryService/WatchInstances": "viewer",
  "/fleetlet.agent.v1.InventoryService/SetInstanceState": "operator",
  // Replaces disk and memory and may change the metered shape: as strong as registering.
  "/fleetlet.agent.v1.InventoryService/RestoreInstance": "admin",
  "/fleetlet.agent.v1.InventoryService/RegisterSnapshot": "admin",
  "/fleetlet.agent.v1.InventoryService/RemoveSnapshot": "admin",
  "/fleetlet.agent.v1.InventoryService/ListSnapshots": "viewer",
  "/fleetlet.agent.v1.InventoryService/GetHostInfo": "viewer",

  // Agent: metering. Acknowledging lets retention delete entries: only the aggregator's identity.
  "/fleetlet.agent.v1.MeteringService/ReadMeteringEntries": "viewer",
  "/fleetlet.agent.v1.MeteringService/WatchMeteringEntries": "viewer",
  "/fleetlet.agent.v1.MeteringService/AcknowledgeMeteringEntries": "aggregator",
  "/fleetlet.agent.v1.MeteringService/GetMeteringStatus": "viewer",

  // Agent: standby lifecycle.
  "/fleetlet.agent.v1.StandbyService/GetStandbyStatus": "viewer",
  "/fleetlet.agent.v1.StandbyService/ListStandbyStatus": "viewer",
  "/fleetlet.agent.v1.StandbyService/WatchStandbyStatus": "viewer",
  "/fleetlet.agent.v1.StandbyService/SetStandbyPolicy": "operator",
  "/fleetlet.agent.v1.StandbyService/HoldStandby": "operator",
  "/fleetlet.agent.v1.StandbyService/ResetIdle": "operator",
  "/fleetlet.agent.v1.StandbyService/WakeInstance": "operator",

  // Agent: stats.
  "/fleetlet.agent.v1.MetricsService/GetInstanceStats": "viewer",
  "/fleetlet.agent.v1.MetricsService/ListInstanceStats": "viewer",
  "/fleetlet.agent.v1.MetricsService/WatchInstanceStats": "viewer",

  // Agent: container runtimes. Logs are read with the agent's Docker/kubeconfig rights: operator.
  "/fleetlet.agent.v1.RuntimeService/GetRuntimeInfo": "viewer",
  "/fleetlet.agent.v1.RuntimeService/ListContainers": "viewer",
  "/fleetlet.agent.v1.RuntimeService/WatchRuntimeEvents": "viewer",
  "/fleetlet.agent.v1.RuntimeService/GetContainerStats": "viewer",
  "/fleetlet.agent.v1.RuntimeService/ListContainerStats": "viewer",
  "/fleetlet.agent.v1.RuntimeService/FetchContainerLogs": "operator",
  "/fleetlet.agent.v1.RuntimeService/StreamContainerLogs": "operator",
  "/fleetlet.agent.v1.RuntimeService/GetContainerHealth": "viewer",

  // Aggregator.
  "/fleetlet.aggregator.v1.FleetService/ListHosts": "viewer",
  "/fleetlet.aggregator.v1.FleetService/AddHost": "admin",
  "/fleetlet.aggregator.v1.FleetService/RemoveHost": "admin",
  "/fleetlet.aggregator.v1.FleetService/ResyncHost": "admin",
  "/fleetlet.aggregator.v1.FleetService/ListInstanceStats": "viewer",
  "/fleetlet.aggregator.v1.FleetService/ListInstances": "viewer",
  "/fleetlet.aggregator.v1.FleetService/WatchInstances": "viewer",
  "/fleetlet.aggregator.v1.FleetService/ListSnapshots": "viewer",
  "/fleetlet.aggregator.v1.FleetService/ListStandbyStatus": "viewer",
  "/fleetlet.aggregator.v1.FleetService/ListContainers": "viewer",
  "/fleetlet.aggregator.v1.FleetService/StreamContainerLogs": "operator",
  "/fleetlet.aggregator.v1.FleetService/ReadMeteringEntries": "viewer",
  "/fleetlet.aggregator.v1.FleetService/WatchMeteringEntries": "viewer",
  "/fleetlet.aggregator.v1.FleetService/AcceptMeteringGap": "admin",
  // Policies: reading them is a view of the fleet; changing them changes what everyone is told.
  "/fleetlet.aggregator.v1.FleetService/ListPolicies": "viewer",
  "/fleetlet.aggregator.v1.FleetService/PutPolicy": "admin",
  "/fleetlet.aggregator.v1.FleetService/DeletePolicy": "admin",

  // The test-only echo service (served by the adapter's own tests, never by a daemon).
  "/fleetlet.testing.v1.EchoService/Echo": "viewer",
  "/fleetlet.testing.v1.EchoService/EchoServerStream": "viewer",
  "/fleetlet.testing.v1.EchoService/EchoClientStream": "viewer",
  "/fleetlet.testing.v1.EchoService/EchoBidi": "viewer",
};

/** The role a method needs, or undefined for a method the table does not know (refused). */
export function requiredRole(path: string): Role | undefined {
  return Object.hasOwn(METHOD_ROLES, path) ? METHOD_ROLES[path] : undefined;
}
