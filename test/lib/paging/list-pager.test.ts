import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";
import { DEFAULT_PAGE_SIZE, ListPager, MAX_PAGE_SIZE, type ListState } from "../../../lib/paging/list-pager.js";
import { readAllPages } from "../../../lib/paging/read-all-pages.js";

interface Item {
  id: string;
  bytes: number;
  rev: number;
}

/** A list that changes: every change makes a new immutable sorted array and a new version. */
class LiveList {
  version = 1;
  private items = new Map<string, Item>();
  private sorted: Item[] = [];
  put(id: string, bytes = 10): void {
    this.items.set(id, { id, bytes, rev: this.version + 1 });
    this.changed();
  }
  del(id: string): void {
    this.items.delete(id);
    this.changed();
  }
  state = (): ListState<Item, { version: number }> => ({ version: String(this.version), items: this.sorted, meta: { version: this.version }, metaBytes: 0 });
  private changed(): void {
    this.version++;
    this.sorted = [...this.items.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }
}

const ids = (n: number, prefix = "i") => Array.from({ length: n }, (_, k) => `${prefix}${String(k).padStart(5, "0")}`);
const code = (c: Code, text: RegExp) => (e: unknown) => e instanceof ConnectError && e.code === c && text.test(e.rawMessage);

function pager(options: Partial<ConstructorParameters<typeof ListPager<Item, { version: number }>>[0]> = {}) {
  return new ListPager<Item, { version: number }>({ scope: "test/List", keyOf: (i) => i.id, itemBytes: (i) => i.bytes, ...options });
}

describe("ListPager", () => {
  it("gives every item of the first page's state exactly once, however the list changes between pages", async () => {
    const live = new LiveList();
    for (const id of ids(100)) live.put(id);
    const atStart = live.state().items.map((i) => `${i.id}@${i.rev}`);
    const p = pager();
    let page = 0;
    const pages = await readAllPages(async (pageToken) => {
      const r = p.page({ pageSize: 7, pageToken }, live.state);
      // Between pages: a new item before and after the cursor, one not given yet deleted, one
      // given and one not given yet modified.
      page++;
      live.put(`i${String(page * 7 - 3).padStart(5, "0")}x`);
      live.put(`z-new-${page}`);
      live.del(`i${String(page * 7 + 20).padStart(5, "0")}`);
      live.put(`i${String(page * 7 + 1).padStart(5, "0")}`, 11);
      live.put("i00000", 12);
      return { ...r, nextPageToken: r.nextPageToken };
    });
    assert.equal(pages.length, 15);
    assert.ok(pages.every((r) => r.meta.version === pages[0]!.meta.version), "every page carries the first page's meta");
    assert.deepEqual(pages.flatMap((r) => r.items.map((i) => `${i.id}@${i.rev}`)), atStart);
    // A new list sees the changes.
    const again = (await readAllPages(async (pageToken) => p.page({ pageSize: 1000, pageToken }, live.state))).flatMap((r) => r.items);
    assert.deepEqual(again.map((i) => i.id), live.state().items.map((i) => i.id));
    assert.notEqual(again.length, atStart.length);
  });

  it("a token whose state expired is served from the live list when that has not changed, and OUT_OF_RANGE when it has", () => {
    let now = 0;
    const live = new LiveList();
    for (const id of ids(30)) live.put(id);
    const p = pager({ now: () => now, keepIdleMs: 1000 });
    const first = p.page({ pageSize: 10, pageToken: "" }, live.state);
    now = 5000; // expired, but the list is the same: continued from the live list
    const second = p.page({ pageSize: 10, pageToken: first.nextPageToken }, live.state);
    assert.deepEqual(second.items.map((i) => i.id), ids(30).slice(10, 20));
    now = 10_000;
    live.put("a-new");
    assert.throws(() => p.page({ pageSize: 10, pageToken: second.nextPageToken }, live.state), code(Code.OutOfRange, /^page_token: the list changed since its first page .* list again without page_token$/));
  });

  it("keeps a bounded number of states, the least recently read dropped first", () => {
    const live = new LiveList();
    for (const id of ids(30)) live.put(id);
    const p = pager({ keep: 2 });
    const tokens: string[] = [];
    const states: string[][] = [];
    for (let k = 0; k < 3; k++) {
      states.push(live.state().items.map((i) => i.id));
      tokens.push(p.page({ pageSize: 10, pageToken: "" }, live.state).nextPageToken);
      live.put(`change-${k}`);
    }
    assert.equal(p.keptCount, 2);
    assert.throws(() => p.page({ pageSize: 10, pageToken: tokens[0]! }, live.state), code(Code.OutOfRange, /no longer kept/));
    // The second list's state (with change-0, without change-1 and change-2).
    assert.deepEqual(p.page({ pageSize: 10, pageToken: tokens[1]! }, live.state).items.map((i) => i.id), states[1]!.slice(10, 20));
    assert.ok(states[1]!.includes("change-0") && !states[1]!.includes("change-1"));
  });

  it("ends a page before the answer passes the byte budget, and gives an oversized item a page of its own", () => {
    const live = new LiveList();
    for (const id of ids(10)) live.put(id, 300);
    live.put("i00004", 5000); // larger than the whole budget
    const budget = 1024 + 1000; // the pager leaves 1 KiB for the token; 1000 bytes for items
    const p = pager({ pageBytes: budget });
    const state = () => ({ ...live.state(), metaBytes: 50 });
    const sizes: string[][] = [];
    let token = "";
    do {
      const r = p.page({ pageSize: 0, pageToken: token }, state);
      const bytes = r.items.reduce((n, i) => n + i.bytes, 0);
      assert.ok(r.items.length === 1 || 50 + 1024 + bytes <= budget, `page of ${bytes} item bytes passes the budget`);
      sizes.push(r.items.map((i) => i.id));
      token = r.nextPageToken;
    } while (token !== "");
    // 950 bytes for items: 3 of 300 per page; the 5000-byte item alone.
    assert.deepEqual(sizes, [["i00000", "i00001", "i00002"], ["i00003"], ["i00004"], ["i00005", "i00006", "i00007"], ["i00008", "i00009"]]);
  });

  it("counts: 0 is the default, a larger page_size is lowered to the maximum", () => {
    const live = new LiveList();
    for (const id of ids(MAX_PAGE_SIZE + 5)) live.put(id, 1);
    const p = pager();
    assert.equal(p.page({ pageSize: 0, pageToken: "" }, live.state).items.length, DEFAULT_PAGE_SIZE);
    assert.equal(p.page({ pageSize: MAX_PAGE_SIZE * 10, pageToken: "" }, live.state).items.length, MAX_PAGE_SIZE);
    const all = p.page({ pageSize: 3, pageToken: "" }, live.state);
    assert.equal(all.items.length, 3);
  });

  it("refuses a negative page_size, a malformed token, another list's token and changed filters, naming the field", () => {
    const live = new LiveList();
    for (const id of ids(20)) live.put(id);
    const p = pager();
    const bad = (field: string, text: RegExp) => code(Code.InvalidArgument, new RegExp(`^${field}: ${text.source}`));
    assert.throws(() => p.page({ pageSize: -1, pageToken: "" }, live.state), bad("page_size", /must be >= 0 \(0 = 1000\), got -1/));
    for (const garbage of ["not a token!", "AAAA", Buffer.from("[1,2]").toString("base64url"), Buffer.from('{"s":"test/List","v":1,"a":"x","f":""}').toString("base64url"), "x".repeat(5000)]) {
      assert.throws(() => p.page({ pageSize: 5, pageToken: garbage }, live.state), bad("page_token", /is not a page token/), garbage.slice(0, 30));
    }
    const token = p.page({ pageSize: 5, pageToken: "" }, live.state, "filter-a").nextPageToken;
    assert.throws(() => p.page({ pageSize: 5, pageToken: token }, live.state, "filter-b"), bad("page_token", /was given for a request with other filters/));
    const other = new ListPager<Item, { version: number }>({ scope: "other/List", keyOf: (i) => i.id, itemBytes: (i) => i.bytes });
    assert.throws(() => other.page({ pageSize: 5, pageToken: token }, live.state, "filter-a"), bad("page_token", /is a token of another list \("test\/List"\)/));
    assert.deepEqual(p.page({ pageSize: 5, pageToken: token }, live.state, "filter-a").items.map((i) => i.id), ids(20).slice(5, 10));
  });

  it("readAllPages stops on a server that repeats a token", async () => {
    await assert.rejects(readAllPages(async () => ({ nextPageToken: "same" })), /repeated next_page_token "same"/);
  });
});
