/**
 * A minimal gRPC unary client straight on node:http2 (length-prefixed frames, grpc-status in
 * trailers). It costs about half of a grpc-js client per call (~50 vs ~110 us here), and on a
 * 2-core machine the client's CPU caps the rate of a cheap server: with grpc-js as the load
 * client the echo reference measured the client, not the server. With TLS files it presents a
 * client certificate (mTLS) and checks the server's against the CA and the dialled IP, as
 * grpc-js does (bench/tls).
 */
import http2 from "node:http2";
import { Malfunction } from "../common/report.js";

/** PEM contents (not paths: read once, not per connection). */
export interface ClientTls {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
}

export class H2GrpcClient {
  private constructor(private readonly session: http2.ClientHttp2Session) {}

  static async connect(target: string, tls?: ClientTls): Promise<H2GrpcClient> {
    const session = tls
      ? http2.connect(`https://${target}`, { ca: tls.ca, cert: tls.cert, key: tls.key, settings: { initialWindowSize: 1 << 20 } })
      : http2.connect(`http://${target}`, { settings: { initialWindowSize: 1 << 20 } });
    await new Promise<void>((resolve, reject) => {
      session.once("connect", () => resolve());
      session.once("error", (e) => reject(new Malfunction(`http2 connect ${target}: ${e.message}`)));
    });
    session.setLocalWindowSize(16 << 20);
    session.on("error", () => undefined);
    return new H2GrpcClient(session);
  }

  /** Resolves with the response message bytes; any non-OK status or framing error rejects. */
  unary(path: string, message: Buffer, timeoutMs = 10_000): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      const req = this.session.request({
        ":method": "POST",
        ":path": path,
        "content-type": "application/grpc",
        te: "trailers",
      });
      const chunks: Buffer[] = [];
      let status: string | undefined;
      let detail = "";
      const takeStatus = (headers: http2.IncomingHttpHeaders) => {
        const s = headers["grpc-status"];
        if (s !== undefined) {
          status = String(s);
          detail = decodeURIComponent(String(headers["grpc-message"] ?? ""));
        }
      };
      req.setTimeout(timeoutMs, () => {
        req.close(http2.constants.NGHTTP2_CANCEL);
        reject(new Malfunction(`${path}: no answer within ${timeoutMs} ms`));
      });
      req.on("response", takeStatus); // a Trailers-Only answer carries the status here
      req.on("trailers", takeStatus);
      req.on("data", (d: Buffer) => chunks.push(d));
      req.on("error", (e) => reject(new Malfunction(`${path}: ${e.message}`)));
      req.on("end", () => {
        if (status !== "0") {
          reject(new Malfunction(`${path}: grpc-status ${status ?? "missing"} ${detail}`));
          return;
        }
        const body = Buffer.concat(chunks);
        if (body.length < 5 || body[0] !== 0 || body.readUInt32BE(1) !== body.length - 5) {
          reject(new Malfunction(`${path}: malformed response frame (${body.length} bytes)`));
          return;
        }
        resolve(body.subarray(5));
      });
      const frame = Buffer.allocUnsafe(5 + message.length);
      frame[0] = 0;
      frame.writeUInt32BE(message.length, 1);
      message.copy(frame, 5);
      req.end(frame);
    });
  }

  /** Resolves once the connection is closed (a fresh-connection run counts its teardown too). */
  close(): Promise<void> {
    return new Promise((resolve) => this.session.close(() => resolve()));
  }
}
