/**
 * Turns a failed call into words for the user. The edge sends google.rpc.Status details
 * in the `grpc-status-details-bin` trailer; connect-web hands them over undecoded and
 * `findDetails` decodes them with the vendored google/rpc/error_details.proto.
 */
import { Code, ConnectError } from "@connectrpc/connect";

import {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb";

/** The ErrorInfo reasons of the `atelier.v1` domain. */
export const Reason = {
  creditsExhausted: "CREDITS_EXHAUSTED",
  generationLimitReached: "GENERATION_LIMIT_REACHED",
  rateLimited: "RATE_LIMITED",
  slowConsumer: "SLOW_CONSUMER",
  streamClosed: "STREAM_CLOSED",
  tooManyStreams: "TOO_MANY_STREAMS",
} as const;

export function errorReason(err: unknown): string | undefined {
  return ConnectError.from(err).findDetails(ErrorInfoSchema)[0]?.reason;
}

/** The server's RetryInfo delay, if it sent one. */
export function retryDelayMs(err: unknown): number | undefined {
  const delay = ConnectError.from(err).findDetails(RetryInfoSchema)[0]?.retryDelay;
  if (delay === undefined) return undefined;
  return Number(delay.seconds) * 1000 + Math.round(delay.nanos / 1e6);
}

export function isCode(err: unknown, ...codes: Code[]): boolean {
  return codes.includes(ConnectError.from(err).code);
}

export function describeError(err: unknown): string {
  const error = ConnectError.from(err);
  const info = error.findDetails(ErrorInfoSchema)[0];
  const meta = info?.metadata ?? {};
  switch (info?.reason) {
    case Reason.creditsExhausted:
      return `Not enough credits: this needs ${meta["cost"] ?? "more"}, you have ${meta["balance"] ?? "less"}.`;
    case Reason.generationLimitReached:
      return `Image limit reached: this conversation allows ${meta["max_generations"] ?? "no more"} images and ${meta["generation_count"] ?? "all"} are used.`;
    case Reason.rateLimited: {
      const wait = retryDelayMs(error);
      return wait === undefined
        ? "Too many requests: wait a moment and try again."
        : `Too many requests: try again in ${(wait / 1000).toFixed(1)} s.`;
    }
    case Reason.slowConsumer:
      return "The event stream fell behind and the server closed it.";
    case Reason.streamClosed:
      return "The server closed the event stream (it is shutting down).";
    case Reason.tooManyStreams:
      return "Too many event streams are open for this account: close other tabs.";
  }
  const violations = error.findDetails(BadRequestSchema).flatMap((b) => b.fieldViolations);
  if (violations.length > 0) {
    return violations.map((v) => `${v.field}: ${v.description}`).join("; ");
  }
  const message = error.rawMessage;
  switch (error.code) {
    case Code.Unauthenticated:
      return `Not signed in (${message}): log in again.`;
    case Code.NotFound:
      return `Not found: ${message}`;
    case Code.Unavailable:
      return `The service is unavailable: ${message}`;
    case Code.Unimplemented:
      return `Not available on this server: ${message}`;
    case Code.Unknown:
      // fetch() itself failed: the edge is down, or refused the page's origin (CORS).
      if (/failed to fetch|networkerror|load failed/i.test(message)) {
        return "Cannot reach the Atelier edge (it is down, or does not allow this page's origin).";
      }
  }
  return message || Code[error.code];
}
