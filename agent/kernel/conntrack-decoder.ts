/**
 * Decoder for ctnetlink messages (NETLINK_NETFILTER, subsystem CTNETLINK), written from the
 * kernel's uapi headers: linux/netlink.h (nlmsghdr, nlattr), linux/netfilter/nfnetlink.h
 * (nfgenmsg), linux/netfilter/nfnetlink_conntrack.h (CTA_* attributes). Header fields and
 * attribute length/type are host byte order (little-endian here); addresses, ports and the id
 * are big-endian; attributes are 4-byte aligned and the nested flag is masked off the type.
 * No RPC knowledge; fed raw datagram bytes, returns plain values.
 */

export const NFNL_SUBSYS_CTNETLINK = 1;
export const IPCTNL_MSG_CT_NEW = 0;
export const IPCTNL_MSG_CT_GET = 1;
export const IPCTNL_MSG_CT_DELETE = 2;

const NLMSG_ERROR = 2;
const NLMSG_DONE = 3;
const NLMSG_HDRLEN = 16;
const NLA_TYPE_MASK = 0x3fff; // drops NLA_F_NESTED (0x8000) and NLA_F_NET_BYTEORDER (0x4000)
const AF_INET = 2;
const IPPROTO_TCP = 6;

const CTA_TUPLE_ORIG = 1;
const CTA_PROTOINFO = 4;
const CTA_ID = 12;
const CTA_TUPLE_IP = 1;
const CTA_TUPLE_PROTO = 2;
const CTA_IP_V4_SRC = 1;
const CTA_IP_V4_DST = 2;
const CTA_PROTO_NUM = 1;
const CTA_PROTO_SRC_PORT = 2;
const CTA_PROTO_DST_PORT = 3;
const CTA_PROTOINFO_TCP = 1;
const CTA_PROTOINFO_TCP_STATE = 1;

/** An IPv4 TCP flow from a dump or an event, original direction. */
export interface ConntrackFlow {
  /** "new" covers new and updated flows (IPCTNL_MSG_CT_NEW), "destroy" a deleted one. */
  kind: "new" | "destroy";
  id: number | undefined;
  srcIp: string;
  srcPort: number;
  dstIp: string;
  dstPort: number;
  /** TCP_CONNTRACK_* number; 0 when the message has no protoinfo (common on DESTROY). */
  tcpState: number;
}

export type ConntrackMessage =
  | { type: "flow"; flow: ConntrackFlow }
  /** A flow that is not IPv4 TCP: skipped silently by callers. */
  | { type: "other" }
  | { type: "done" }
  /** NLMSG_ERROR: errno 0 is an acknowledgement. */
  | { type: "error"; errno: number };

export class ConntrackDecodeError extends Error {
  override name = "ConntrackDecodeError";
}

/** Every netlink message in one datagram (a datagram may carry several). */
export function decodeDatagram(buf: Uint8Array): ConntrackMessage[] {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const out: ConntrackMessage[] = [];
  let off = 0;
  while (off + NLMSG_HDRLEN <= buf.length) {
    const len = view.getUint32(off, true);
    const type = view.getUint16(off + 4, true);
    if (len < NLMSG_HDRLEN || off + len > buf.length) {
      throw new ConntrackDecodeError(`netlink message at ${off}: length ${len} does not fit the ${buf.length - off} bytes left`);
    }
    const body = buf.subarray(off + NLMSG_HDRLEN, off + len);
    if (type === NLMSG_DONE) out.push({ type: "done" });
    else if (type === NLMSG_ERROR) {
      if (body.length < 4) throw new ConntrackDecodeError("NLMSG_ERROR without an error code");
      out.push({ type: "error", errno: -new DataView(body.buffer, body.byteOffset, 4).getInt32(0, true) });
    } else if (type >> 8 === NFNL_SUBSYS_CTNETLINK) {
      const msg = type & 0xff;
      if (msg === IPCTNL_MSG_CT_NEW || msg === IPCTNL_MSG_CT_DELETE) out.push(decodeFlow(body, msg === IPCTNL_MSG_CT_NEW ? "new" : "destroy"));
      else out.push({ type: "other" });
    } else {
      out.push({ type: "other" });
    }
    off += align4(len);
  }
  if (off < buf.length && buf.length - off >= 4) {
    throw new ConntrackDecodeError(`${buf.length - off} trailing bytes after the last netlink message`);
  }
  return out;
}

function decodeFlow(body: Uint8Array, kind: "new" | "destroy"): ConntrackMessage {
  // nfgenmsg: family (u8), version (u8), res_id (be16)
  if (body.length < 4) throw new ConntrackDecodeError("ctnetlink message shorter than its nfgenmsg header");
  if (body[0] !== AF_INET) return { type: "other" };
  const attrs = attributes(body.subarray(4));
  const orig = attrs.get(CTA_TUPLE_ORIG);
  if (!orig) throw new ConntrackDecodeError("flow without CTA_TUPLE_ORIG");
  const tuple = attributes(orig);
  const ip = attributes(required(tuple, CTA_TUPLE_IP, "CTA_TUPLE_IP"));
  const proto = attributes(required(tuple, CTA_TUPLE_PROTO, "CTA_TUPLE_PROTO"));
  const protoNum = required(proto, CTA_PROTO_NUM, "CTA_PROTO_NUM");
  if (protoNum[0] !== IPPROTO_TCP) return { type: "other" };
  const src = required(ip, CTA_IP_V4_SRC, "CTA_IP_V4_SRC");
  const dst = required(ip, CTA_IP_V4_DST, "CTA_IP_V4_DST");
  const sport = required(proto, CTA_PROTO_SRC_PORT, "CTA_PROTO_SRC_PORT");
  const dport = required(proto, CTA_PROTO_DST_PORT, "CTA_PROTO_DST_PORT");
  if (src.length < 4 || dst.length < 4 || sport.length < 2 || dport.length < 2) throw new ConntrackDecodeError("short address or port attribute");
  let tcpState = 0;
  const protoinfo = attrs.get(CTA_PROTOINFO);
  if (protoinfo) {
    const tcp = attributes(protoinfo).get(CTA_PROTOINFO_TCP);
    const state = tcp ? attributes(tcp).get(CTA_PROTOINFO_TCP_STATE) : undefined;
    if (state && state.length >= 1) tcpState = state[0]!;
  }
  const idAttr = attrs.get(CTA_ID);
  return {
    type: "flow",
    flow: {
      kind,
      id: idAttr && idAttr.length >= 4 ? new DataView(idAttr.buffer, idAttr.byteOffset, 4).getUint32(0, false) : undefined,
      srcIp: `${src[0]}.${src[1]}.${src[2]}.${src[3]}`,
      dstIp: `${dst[0]}.${dst[1]}.${dst[2]}.${dst[3]}`,
      srcPort: (sport[0]! << 8) | sport[1]!,
      dstPort: (dport[0]! << 8) | dport[1]!,
      tcpState,
    },
  };
}

/** Top-level attributes of one nest, by type (the first of each type wins). */
function attributes(buf: Uint8Array): Map<number, Uint8Array> {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const out = new Map<number, Uint8Array>();
  let off = 0;
  while (off + 4 <= buf.length) {
    const len = view.getUint16(off, true);
    const type = view.getUint16(off + 2, true) & NLA_TYPE_MASK;
    if (len < 4 || off + len > buf.length) throw new ConntrackDecodeError(`attribute ${type} at ${off}: length ${len} does not fit`);
    if (!out.has(type)) out.set(type, buf.subarray(off + 4, off + len));
    off += align4(len);
  }
  return out;
}

function required(attrs: Map<number, Uint8Array>, type: number, name: string): Uint8Array {
  const v = attrs.get(type);
  if (!v) throw new ConntrackDecodeError(`missing ${name}`);
  return v;
}

function align4(n: number): number {
  return (n + 3) & ~3;
}

/** The dump request: IPCTNL_MSG_CT_GET with NLM_F_REQUEST | NLM_F_DUMP for AF_INET. */
export function dumpRequest(seq: number): Buffer {
  const b = Buffer.alloc(20);
  b.writeUInt32LE(20, 0);
  b.writeUInt16LE((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET, 4);
  b.writeUInt16LE(0x0001 | 0x0300, 6); // NLM_F_REQUEST | NLM_F_DUMP (ROOT | MATCH)
  b.writeUInt32LE(seq >>> 0, 8);
  b.writeUInt32LE(0, 12);
  b.writeUInt8(AF_INET, 16);
  b.writeUInt8(0, 17); // NFNETLINK_V0
  b.writeUInt16BE(0, 18);
  return b;
}
