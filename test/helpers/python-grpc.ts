import { execFile, execFileSync } from "node:child_process";

// Python's grpcio (C core, its own HTTP/2 and TLS) as a gRPC client that is not ours.

/** Debian's python3-grpcio is for Debian's interpreter, not whichever python3 is first on PATH. */
export const PYTHON = "/usr/bin/python3";

/** Why Python gRPC calls cannot run here, or false when they can. */
export function pythonGrpcSkipReason(): string | false {
  try {
    execFileSync(PYTHON, ["-c", "import grpc"], { stdio: "ignore" });
    return false;
  } catch {
    return `needs Debian's python3-grpcio for ${PYTHON} (apt-get install python3-grpcio; scripts/setup.sh installs it)`;
  }
}

/**
 * A gRPC client in Python with no generated code: grpcio's generic methods carry bytes (no
 * serializers), requests and responses cross as hex. Over TLS when given a CA (C core's own TLS:
 * grpc.ssl_channel_credentials), presenting a client certificate when given one. Prints one line
 * per response message, then `status <CODE> <details>` and each binary trailer as
 * `trailer <key> <hex>`.
 */
const PYTHON_CLIENT = `
import sys, json, grpc
target, kind, method, tls, *requests = sys.argv[1:]
options = [("grpc.enable_http_proxy", 0)]
if tls:
    files = json.loads(tls)
    read = lambda name: open(files[name], "rb").read() if files.get(name) else None
    credentials = grpc.ssl_channel_credentials(read("ca"), read("key"), read("cert"))
    channel = grpc.secure_channel(target, credentials, options=options)
else:
    channel = grpc.insecure_channel(target, options=options)
payloads = [bytes.fromhex(r) for r in requests]
def report(code, details, trailers):
    print("status", code.name, details)
    for key, value in trailers or ():
        if key.endswith("-bin"):
            print("trailer", key, value.hex())
try:
    if kind == "unary":
        response, call = channel.unary_unary(method).with_call(payloads[0], timeout=10)
        print("message", response.hex())
    else:
        call = channel.stream_stream(method)(iter(payloads), timeout=10)
        for response in call:
            print("message", response.hex())
    report(call.code(), call.details(), call.trailing_metadata())
except grpc.RpcError as e:
    report(e.code(), e.details(), e.trailing_metadata())
`;

export interface PythonResult {
  messages: Uint8Array[];
  /** `CODE details`, e.g. "OK OK" or "PERMISSION_DENIED ...". */
  status: string;
  /** The status code name alone. */
  code: string;
  binaryTrailers: Map<string, Uint8Array>;
}

/** PEM files for a TLS channel: the CA the server must chain to, and our certificate if any. */
export interface PythonTls {
  ca: string;
  cert?: string;
  key?: string;
}

/** One call from Python's grpcio: unary (first request only) or bidi/client stream. */
export function pythonGrpcCall(target: string, kind: "unary" | "stream", method: string, requests: Uint8Array[], tls?: PythonTls): Promise<PythonResult> {
  const args = ["-c", PYTHON_CLIENT, target, kind, method, tls ? JSON.stringify(tls) : "", ...requests.map((r) => Buffer.from(r).toString("hex"))];
  return new Promise((res, rej) => {
    execFile(PYTHON, args, { timeout: 30_000 }, (err, stdout, stderr) => {
      if (err) {
        rej(new Error(`python client failed: ${err.message}\n${stderr}`));
        return;
      }
      const out: PythonResult = { messages: [], status: "", code: "", binaryTrailers: new Map() };
      for (const line of stdout.trim().split("\n")) {
        const [what, first = "", ...rest] = line.split(" ");
        if (what === "message") out.messages.push(Buffer.from(first, "hex"));
        else if (what === "status") {
          out.status = [first, ...rest].join(" ");
          out.code = first;
        } else if (what === "trailer") out.binaryTrailers.set(first, Buffer.from(rest[0] ?? "", "hex"));
      }
      res(out);
    });
  });
}
