/** Words for the page: event summaries for the timelines, enum names and labels. */
import type { TimelineEntry } from "./eventlog";
import {
  CreditsChangeReason,
  CreditsChangeReasonSchema,
  type Event,
} from "./gen/atelier/v1/events_pb";
import {
  IntentKind,
  MessageStatus,
  MessageStatusSchema,
  type ResolvedIntent,
} from "./gen/atelier/v1/resources_pb";

/** The full proto name of a status, e.g. "MESSAGE_STATUS_COMPLETED". */
export function messageStatusName(status: MessageStatus): string {
  return MessageStatusSchema.value[status]?.name ?? `MESSAGE_STATUS_${status}`;
}

export function messageStatusLabel(status: MessageStatus): string {
  switch (status) {
    case MessageStatus.QUEUED:
      return "Queued";
    case MessageStatus.PROCESSING:
      return "Processing";
    case MessageStatus.COMPLETED:
      return "Completed";
    case MessageStatus.FAILED:
      return "Failed";
    case MessageStatus.CANCELLED:
      return "Cancelled";
    default:
      return "Unknown";
  }
}

export function describeIntent(intent: ResolvedIntent): string {
  if (intent.kind === IntentKind.EDIT) {
    const what = intent.editType ? ` (${intent.editType})` : "";
    return `Edit${what}, strength ${intent.strength.toFixed(2)}`;
  }
  return intent.kind === IntentKind.NEW ? "New image" : "Unknown intent";
}

export function describeProgress(p: {
  stage: string;
  percent: number;
  attempt: number;
  maxAttempts: number;
  detail: string;
}): string {
  switch (p.stage) {
    case "rendering":
      return `rendering ${p.percent}%`;
    case "retrying": {
      const of = p.maxAttempts > 0 ? ` of ${p.maxAttempts}` : "";
      return `retrying (attempt ${p.attempt}${of})${p.detail ? `: ${p.detail}` : ""}`;
    }
    default:
      return p.percent > 0 ? `${p.stage} ${p.percent}%` : p.stage;
  }
}

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? "" : "s"}`;

/** The timeline entry of an event: its kind (the payload case) and a short text. */
export function timelineEntry(cursor: bigint, event: Event): TimelineEntry {
  const entry: TimelineEntry = { cursor: cursor.toString(), kind: event.payload.case ?? "unknown", text: "" };
  const payload = event.payload;
  switch (payload.case) {
    case "messageCreated":
      entry.text = "message created";
      break;
    case "generationQueued":
      entry.text =
        payload.value.position === 0 ? "queued, next" : `queued, ${payload.value.position} ahead`;
      entry.data = { position: String(payload.value.position) };
      break;
    case "generationStarted":
      entry.text = `started ${plural(payload.value.generationIds.length, "image")}`;
      break;
    case "intentResolved":
      entry.text = payload.value.intent ? describeIntent(payload.value.intent) : "intent resolved";
      break;
    case "generationProgress":
      entry.text = describeProgress(payload.value);
      entry.data = {
        generationId: payload.value.generationId,
        stage: payload.value.stage,
        percent: String(payload.value.percent),
      };
      break;
    case "generationCompleted":
      entry.text = `completed ${plural(payload.value.generations.length, "image")}`;
      break;
    case "generationFailed":
      entry.text = `failed: ${payload.value.reason} (refunded ${payload.value.refunded})`;
      break;
    case "generationCancelled":
      entry.text = `cancelled (refunded ${payload.value.refunded})`;
      break;
    case "titleUpdated":
      entry.text = `title “${payload.value.title}”`;
      break;
    case "creditsChanged": {
      const { delta, reason } = payload.value;
      entry.text = `credits ${delta > 0n ? "+" : ""}${delta} (${creditsReason(reason)})`;
      break;
    }
    case "resyncRequired":
      entry.text = "resync required";
      break;
    case "heartbeat":
      entry.text = "heartbeat";
      break;
  }
  return entry;
}

function creditsReason(reason: CreditsChangeReason): string {
  const name = CreditsChangeReasonSchema.value[reason]?.name ?? String(reason);
  return name.replace("CREDITS_CHANGE_REASON_", "").toLowerCase();
}
