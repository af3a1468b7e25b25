import {
  create,
  fromBinary,
  toBinary,
  type DescFile,
  type DescMessage,
  type DescService,
  type MessageInitShape,
} from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  type ServerReflection as ServerReflectionV1,
  ServerReflectionRequestSchema as RequestV1,
  ServerReflectionResponseSchema as ResponseV1,
  type ServerReflectionRequest,
  type ServerReflectionResponse,
} from "../../gen/grpc/reflection/v1/reflection_pb.js";
import {
  type ServerReflection as ServerReflectionV1alpha,
  ServerReflectionRequestSchema as RequestV1alpha,
  ServerReflectionResponseSchema as ResponseV1alpha,
} from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";

type ResponseInit = MessageInitShape<typeof ResponseV1>;

/**
 * Server reflection (grpc.reflection.v1 and v1alpha) answered from the descriptors protoc-gen-es
 * embedded in gen/, so grpcurl and `buf curl` work with no .proto files at hand. v1alpha is the
 * same wire format under another package (the field numbers of grpc/reflection/v1alpha and v1
 * are identical; v1alpha is for clients that still ask it first or only, such as Python's
 * grpcio-reflection and older grpcurl), so it is served by re-reading its bytes as v1 and the
 * answer's bytes as v1alpha.
 */
export function createReflectionImpls(services: DescService[]): {
  v1: ServiceImpl<typeof ServerReflectionV1>;
  v1alpha: ServiceImpl<typeof ServerReflectionV1alpha>;
} {
  const index = buildIndex(services);
  const answer = (req: ServerReflectionRequest): ResponseInit => {
    const base = { validHost: req.host, originalRequest: req };
    const r = req.messageRequest;
    switch (r.case) {
      case "listServices":
        return {
          ...base,
          messageResponse: {
            case: "listServicesResponse",
            value: { service: index.serviceNames.map((name) => ({ name })) },
          },
        };
      case "fileByFilename":
        return filesAnswer(base, index.files.get(r.value), `file ${r.value}`);
      case "fileContainingSymbol":
        return filesAnswer(base, index.symbols.get(r.value), `symbol ${r.value}`);
      case "fileContainingExtension":
        // None of our files declare extensions.
        return notFound(base, `extension ${r.value.containingType}#${r.value.extensionNumber}`);
      case "allExtensionNumbersOfType": {
        const file = index.symbols.get(r.value);
        if (!file) return notFound(base, `type ${r.value}`);
        return {
          ...base,
          messageResponse: {
            case: "allExtensionNumbersResponse",
            value: { baseTypeName: r.value, extensionNumber: [] },
          },
        };
      }
      default:
        return {
          ...base,
          messageResponse: {
            case: "errorResponse",
            value: { errorCode: 12, errorMessage: "unsupported reflection request" },
          },
        };
    }
  };

  return {
    v1: {
      async *serverReflectionInfo(requests) {
        for await (const req of requests) yield answer(req);
      },
    },
    v1alpha: {
      async *serverReflectionInfo(requests) {
        for await (const req of requests) {
          const asV1 = fromBinary(RequestV1, toBinary(RequestV1alpha, req));
          // toBinary wants a message, not an init object: its nested values (the oneof's
          // ListServiceResponse, ...) have no $typeName until create() builds them.
          const answerV1: ServerReflectionResponse = create(ResponseV1, answer(asV1));
          yield fromBinary(ResponseV1alpha, toBinary(ResponseV1, answerV1));
        }
      },
    },
  };
}

interface Index {
  serviceNames: string[];
  files: Map<string, DescFile>;
  symbols: Map<string, DescFile>;
}

function buildIndex(services: DescService[]): Index {
  const files = new Map<string, DescFile>();
  const symbols = new Map<string, DescFile>();
  const addFile = (file: DescFile) => {
    const name = file.proto.name;
    if (files.has(name)) return;
    files.set(name, file);
    for (const dep of file.dependencies) addFile(dep);
    const addMessage = (m: DescMessage) => {
      symbols.set(m.typeName, file);
      for (const f of m.fields) symbols.set(`${m.typeName}.${f.name}`, file);
      for (const e of m.nestedEnums) symbols.set(e.typeName, file);
      for (const n of m.nestedMessages) addMessage(n);
    };
    for (const m of file.messages) addMessage(m);
    for (const e of file.enums) symbols.set(e.typeName, file);
    for (const s of file.services) {
      symbols.set(s.typeName, file);
      for (const m of s.methods) symbols.set(`${s.typeName}.${m.name}`, file);
    }
  };
  for (const s of services) addFile(s.file);
  return {
    serviceNames: [...new Set(services.map((s) => s.typeName))].sort(),
    files,
    symbols,
  };
}

/**
 * The file first, then everything it imports (transitively), each once: a file always comes
 * before its imports, the order grpc-go's reflection answers in and clients accept.
 */
function filesAnswer(
  base: Pick<ResponseInit, "validHost" | "originalRequest">,
  file: DescFile | undefined,
  what: string,
): ResponseInit {
  if (!file) return notFound(base, what);
  const ordered: DescFile[] = [];
  const seen = new Set<string>();
  const visit = (f: DescFile) => {
    if (seen.has(f.proto.name)) return;
    seen.add(f.proto.name);
    for (const dep of f.dependencies) visit(dep);
    ordered.push(f);
  };
  visit(file);
  return {
    ...base,
    messageResponse: {
      case: "fileDescriptorResponse",
      value: {
        fileDescriptorProto: ordered.reverse().map((f) => toBinary(FileDescriptorProtoSchema, f.proto)),
      },
    },
  };
}

function notFound(base: Pick<ResponseInit, "validHost" | "originalRequest">, what: string): ResponseInit {
  return {
    ...base,
    messageResponse: { case: "errorResponse", value: { errorCode: 5, errorMessage: `${what} not found` } },
  };
}
