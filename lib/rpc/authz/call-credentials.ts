import * as grpc from "@grpc/grpc-js";
import { ON_BEHALF_OF_HEADER } from "./identity.js";

/**
 * A client-side grpc-js interceptor adding `authorization: Bearer <token>` to every call of a
 * channel. An interceptor rather than call credentials: grpc-js refuses to compose call
 * credentials with a plaintext channel, and loopback development stays plaintext.
 */
export function bearerTokenInterceptor(token: string): grpc.Interceptor {
  return (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set("authorization", `Bearer ${token}`);
        next(metadata, listener);
      },
    });
}

/** Channel options carrying the token (createGrpcJsTransport's channelOptions), or none. */
export function bearerTokenChannelOptions(token: string | undefined): grpc.ChannelOptions {
  return token ? { interceptors: [bearerTokenInterceptor(token)] } : {};
}

/** Headers naming the end user a call is made for (the aggregator's routed calls). */
export function onBehalfOfHeaders(name: string | undefined): Record<string, string> {
  return name ? { [ON_BEHALF_OF_HEADER]: name } : {};
}
