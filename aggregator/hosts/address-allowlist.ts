import { BlockList, isIP } from "node:net";

/**
 * --add-host-allow: which addresses AddHost may point the aggregator at (security.md: without
 * it, anyone allowed to add a host can make the aggregator dial any address forever, e.g. a
 * cloud metadata endpoint). Entries are IPv4/IPv6 CIDRs or single IPs, and host names matched
 * exactly (case-insensitive; a name is not resolved, so an allowed IP range does not admit a
 * name that happens to resolve into it). Hosts from --hosts / --hosts-file are the operator's
 * and not checked.
 */
export class AddressAllowlist {
  private readonly ips = new BlockList();
  private readonly names = new Set<string>();

  constructor(readonly text: string) {
    for (const raw of text.split(",")) {
      const entry = raw.trim();
      if (entry === "") continue;
      const slash = entry.indexOf("/");
      const ip = slash >= 0 ? entry.slice(0, slash) : entry;
      const family = isIP(ip);
      if (family !== 0) {
        const type = family === 6 ? "ipv6" : "ipv4";
        const prefix = slash >= 0 ? Number(entry.slice(slash + 1)) : family === 6 ? 128 : 32;
        if (!(Number.isInteger(prefix) && prefix >= 0 && prefix <= (family === 6 ? 128 : 32))) throw new Error(`${JSON.stringify(entry)}: bad prefix length`);
        this.ips.addSubnet(ip, prefix, type);
      } else if (slash < 0 && /^[A-Za-z0-9.-]{1,253}$/.test(entry)) {
        this.names.add(entry.toLowerCase());
      } else {
        throw new Error(`${JSON.stringify(entry)} is neither an IP, a CIDR nor a host name`);
      }
    }
    if (this.ips.rules.length === 0 && this.names.size === 0) throw new Error("the list is empty");
  }

  allows(host: string): boolean {
    const family = isIP(host);
    if (family !== 0) return this.ips.check(host, family === 6 ? "ipv6" : "ipv4");
    return this.names.has(host.toLowerCase());
  }
}
