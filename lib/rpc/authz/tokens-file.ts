import { createHash, timingSafeEqual } from "node:crypto";
import { readFileSync, type Stats, statSync } from "node:fs";
import { errorMessage } from "../../error-message.js";
import type { Logger } from "../logger.js";
import type { Identity } from "./identity.js";
import { isRole, ROLES, type Role } from "./role-table.js";

/** One line of the tokens file: the token itself is never stored, only its SHA-256. */
export interface TokenEntry {
  name: string;
  role: Role;
  sha256: Buffer;
}

/** SHA-256 hex of a token: what the tokens file stores (`fleetlet tokens hash`, or sha256sum). */
export function hashToken(token: string): string {
  return createHash("sha256").update(token, "utf8").digest("hex");
}

/**
 * Parses `name role sha256-hex` lines ('#' comments and blank lines ignored). Throws naming the
 * file and line of the first bad one, so a typo never silently locks everyone out or lets a
 * line through half-read.
 */
export function parseTokensFile(text: string, file: string): TokenEntry[] {
  const entries: TokenEntry[] = [];
  const seen = new Set<string>();
  text.split("\n").forEach((raw, index) => {
    const line = raw.replace(/#.*/, "").trim();
    if (line === "") return;
    const where = `${file}:${index + 1}`;
    const fields = line.split(/\s+/);
    if (fields.length !== 3) throw new Error(`${where}: expected 'name role sha256-hex', got ${fields.length} fields`);
    const [name, role, hex] = fields as [string, string, string];
    if (!isRole(role)) throw new Error(`${where}: role ${JSON.stringify(role)} is not one of ${ROLES.join(", ")}`);
    if (!/^[0-9a-fA-F]{64}$/.test(hex)) throw new Error(`${where}: ${JSON.stringify(hex)} is not a SHA-256 hex digest (64 hex digits; see 'fleetlet tokens hash')`);
    const key = hex.toLowerCase();
    if (seen.has(key)) throw new Error(`${where}: the same token hash appears twice`);
    seen.add(key);
    entries.push({ name, role, sha256: Buffer.from(key, "hex") });
  });
  return entries;
}

/**
 * The tokens file, read at start (a bad file stops the daemon) and re-read when it changes (a
 * bad replacement is logged and the previous tokens stay in force). Polled by stat against what
 * was last read, rather than fs.watch / fs.watchFile: a file replaced by rename (editors, config
 * management) is still followed, and a change made right after start is not lost (watchFile
 * takes its baseline asynchronously, after such a change).
 */
export class TokensFile {
  private entries: TokenEntry[] = [];
  private readStat = "";
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly file: string,
    private readonly logger: Logger,
    pollMs = 1000,
  ) {
    this.read();
    this.timer = setInterval(() => this.reloadIfChanged(), pollMs);
    this.timer.unref();
  }

  private reloadIfChanged(): void {
    try {
      if (statKey(statSync(this.file)) === this.readStat) return;
      this.read();
      this.logger.info({ tokens_file: this.file, tokens: this.entries.length }, "tokens file reloaded");
    } catch (e) {
      // A missing file (mid-replacement) or a bad edit: keep serving with what was read last.
      this.logger.warn({ tokens_file: this.file, error: errorMessage(e) }, "tokens file not reloaded; previous tokens stay in force");
    }
  }

  private read(): void {
    // Stat first: a change made during the read is seen at the next poll.
    const key = statKey(statSync(this.file));
    try {
      this.entries = parseTokensFile(readFileSync(this.file, "utf8"), this.file);
    } finally {
      // A bad file is not retried (nor warned about) until it changes again.
      this.readStat = key;
    }
  }

  /**
   * The identity a presented token stands for. Every entry is compared (constant time each), so
   * the time taken does not tell which entry, or how much of a hash, matched.
   */
  identify(token: string): Identity | undefined {
    const presented = createHash("sha256").update(token, "utf8").digest();
    let match: TokenEntry | undefined;
    for (const entry of this.entries) {
      if (timingSafeEqual(presented, entry.sha256) && match === undefined) match = entry;
    }
    return match && { name: match.name, via: "token", role: match.role };
  }

  close(): void {
    clearInterval(this.timer);
  }
}

function statKey(s: Stats): string {
  return `${s.dev}:${s.ino}:${s.size}:${s.mtimeMs}:${s.ctimeMs}`;
}
