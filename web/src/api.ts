import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

import { ChatService } from "./gen/atelier/v1/chat_service_pb";

export type Api = Client<typeof ChatService>;

/**
 * The ChatService client. The edge is tonic behind a grpc-web layer: it speaks gRPC-web
 * in the binary format only (the Connect protocol and the JSON format are refused), over
 * HTTP/1.1, cross-origin (CORS allows the page's origin).
 */
export function createApi(baseUrl: string, token: () => string): Api {
  const authorize: Interceptor = (next) => (request) => {
    request.header.set("authorization", `Bearer ${token()}`);
    return next(request);
  };
  const transport = createGrpcWebTransport({ baseUrl, interceptors: [authorize] });
  return createClient(ChatService, transport);
}
