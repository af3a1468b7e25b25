import { toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";

const sizes = new WeakMap<object, number>();

/**
 * The encoded size of a message that is never modified once made (a published instance shared
 * by every watcher), computed once: stream pages are cut by bytes without encoding each item
 * again per stream.
 */
export function encodedSize<T extends DescMessage>(schema: T, message: MessageShape<T>): number {
  let size = sizes.get(message);
  if (size === undefined) {
    size = toBinary(schema, message).length;
    sizes.set(message, size);
  }
  return size;
}

/**
 * Limits of one message of a watch stream: at most `events` items and about `bytes` encoded
 * (a page ends after the item that reaches it). Small pages keep what a stream holds for a
 * client that does not read small (the stream's byte budget is counted in whole messages),
 * and stay far below gRPC's 4 MiB default whatever one instance weighs.
 */
export const WATCH_PAGE = { events: 1000, bytes: 32 * 1024 } as const;
