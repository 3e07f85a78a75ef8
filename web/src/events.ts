/**
 * The user's one WatchEvents stream, kept open: whenever it ends (the server drains and
 * answers UNAVAILABLE, it closes a slow reader with RESOURCE_EXHAUSTED / SLOW_CONSUMER,
 * the network fails, or it simply ends), it is opened again after a backoff, resuming
 * after the last cursor handled, so no event is missed and none repeats.
 */
import { Code } from "@connectrpc/connect";

import type { Api } from "./api";
import { describeError, isCode, retryDelayMs } from "./errors";
import type { WatchEventsResponse } from "./gen/atelier/v1/chat_service_pb";

export type ConnectionState =
  | { kind: "connecting" }
  | { kind: "live" }
  | { kind: "waiting"; retryInMs: number; reason: string }
  | { kind: "stopped"; reason: string };

export interface EventStreamOptions {
  api: Api;
  /** The cursor to resume after, read at every (re)connect; undefined means live only. */
  cursor: () => bigint | undefined;
  /** Handles one event; the next is read once it returns. */
  onEvent: (response: WatchEventsResponse) => void;
  onState: (state: ConnectionState) => void;
}

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 10_000;

export class EventStream {
  private readonly abort = new AbortController();

  constructor(private readonly options: EventStreamOptions) {}

  start(): void {
    void this.run();
  }

  /** Closes the stream for good (on log out). */
  stop(): void {
    this.abort.abort();
  }

  private async run(): Promise<void> {
    const { api, cursor, onEvent, onState } = this.options;
    const { signal } = this.abort;
    let delay = FIRST_DELAY_MS;
    while (!signal.aborted) {
      onState({ kind: "connecting" });
      let failure: unknown;
      try {
        const responses = api.watchEvents(
          { resumeAfter: cursor() },
          // Headers arrive once the server has accepted the stream, before any event.
          { signal, onHeader: () => onState({ kind: "live" }) },
        );
        for await (const response of responses) {
          delay = FIRST_DELAY_MS;
          onEvent(response);
        }
      } catch (err) {
        failure = err;
      }
      if (signal.aborted) return;
      if (failure !== undefined && isCode(failure, Code.Unauthenticated, Code.PermissionDenied)) {
        onState({ kind: "stopped", reason: describeError(failure) });
        return;
      }
      const wait = Math.max(delay, retryDelayMs(failure) ?? 0);
      const reason =
        failure === undefined ? "the server ended the stream" : describeError(failure);
      console.info(`event stream closed (${reason}); reconnecting in ${wait} ms`);
      onState({ kind: "waiting", retryInMs: wait, reason });
      await sleep(wait, signal);
      delay = Math.min(delay * 2, MAX_DELAY_MS);
    }
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}
