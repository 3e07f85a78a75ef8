/**
 * A message as the page knows it: the last snapshot from the server (SendMessage,
 * ListMessages, GetMessage, message_created) with the events since applied on top.
 *
 * Snapshots and events can arrive out of order (a reload lists a message as completed, then
 * the resumed stream replays its older progress events), so statuses only move forward:
 * queued, then processing or running, then a final status, never back.
 */
import type { Event } from "./gen/atelier/v1/events_pb";
import {
  GenerationStatus,
  MessageStatus,
  type Generation,
  type Message,
} from "./gen/atelier/v1/resources_pb";

export interface ImageProgress {
  /** "rendering", "retrying" or "storing". */
  stage: string;
  percent: number;
  attempt: number;
  maxAttempts: number;
  detail: string;
}

export interface MessageView {
  message: Message;
  /** Messages ahead in the queue (generation_queued), while queued. */
  queuePosition?: number;
  /** The latest progress of each running image, by generation id. */
  progress: Map<string, ImageProgress>;
}

export function newView(message: Message): MessageView {
  return { message, progress: new Map() };
}

export function isFinished(status: MessageStatus): boolean {
  return messageRank(status) === 3;
}

function messageRank(status: MessageStatus): number {
  switch (status) {
    case MessageStatus.QUEUED:
      return 1;
    case MessageStatus.PROCESSING:
      return 2;
    case MessageStatus.COMPLETED:
    case MessageStatus.FAILED:
    case MessageStatus.CANCELLED:
      return 3;
    default:
      return 0;
  }
}

function generationRank(status: GenerationStatus): number {
  switch (status) {
    case GenerationStatus.QUEUED:
      return 1;
    case GenerationStatus.RUNNING:
      return 2;
    case GenerationStatus.COMPLETED:
    case GenerationStatus.FAILED:
    case GenerationStatus.CANCELLED:
      return 3;
    default:
      return 0;
  }
}

export function isGenerationFinished(generation: Generation): boolean {
  return generationRank(generation.status) === 3;
}

/** Takes a newer snapshot of the message, keeping whatever of ours is further along. */
export function mergeMessage(view: MessageView, incoming: Message): void {
  const old = view.message;
  if (messageRank(old.status) > messageRank(incoming.status)) incoming.status = old.status;
  incoming.intent ??= old.intent;
  incoming.enhancedPrompt ||= old.enhancedPrompt;
  incoming.generations = incoming.generations.map((generation) => {
    const known = old.generations.find((g) => g.id === generation.id);
    return known === undefined ? generation : mergeGeneration(known, generation);
  });
  view.message = incoming;
  if (messageRank(incoming.status) > 1) delete view.queuePosition;
  for (const generation of incoming.generations) {
    if (isGenerationFinished(generation)) view.progress.delete(generation.id);
  }
}

function mergeGeneration(known: Generation, incoming: Generation): Generation {
  const [a, b] = [generationRank(known.status), generationRank(incoming.status)];
  if (a !== b) return a > b ? known : incoming;
  // Same status: keep the image URL that stays valid longer (an event replayed after a
  // reload carries the URL signed back then).
  const expiry = (g: Generation) => g.imageUrlExpiresAt?.seconds ?? -1n;
  return expiry(known) > expiry(incoming) ? known : incoming;
}

/** Applies one event about this message; the caller has checked its cursor is new. */
export function applyEvent(view: MessageView, event: Event): void {
  const message = view.message;
  const payload = event.payload;
  switch (payload.case) {
    case "messageCreated":
      if (payload.value.message) mergeMessage(view, payload.value.message);
      break;
    case "generationQueued":
      if (messageRank(message.status) <= 1) view.queuePosition = payload.value.position;
      break;
    case "generationStarted":
      advanceMessage(message, MessageStatus.PROCESSING);
      delete view.queuePosition;
      for (const id of payload.value.generationIds) {
        const generation = advanceGeneration(message, id, GenerationStatus.RUNNING);
        if (generation !== undefined) generation.startedAt ??= event.occurredAt;
      }
      break;
    case "intentResolved":
      message.intent = payload.value.intent;
      message.enhancedPrompt = payload.value.enhancedPrompt;
      // An edit or re-roll sent without settings has taken the previous message's.
      if (payload.value.settings) {
        message.settings = payload.value.settings;
        message.cost = payload.value.cost;
        for (const generation of message.generations) {
          if (isGenerationFinished(generation)) continue;
          generation.model = payload.value.settings.model;
          generation.width = payload.value.settings.width ?? generation.width;
          generation.height = payload.value.settings.height ?? generation.height;
        }
      }
      break;
    case "generationProgress": {
      const p = payload.value;
      const generation = advanceGeneration(message, p.generationId, GenerationStatus.RUNNING);
      if (generation !== undefined && !isGenerationFinished(generation)) {
        advanceMessage(message, MessageStatus.PROCESSING);
        delete view.queuePosition;
        view.progress.set(p.generationId, {
          stage: p.stage,
          percent: p.percent,
          attempt: p.attempt,
          maxAttempts: p.maxAttempts,
          detail: p.detail,
        });
      }
      break;
    }
    case "generationCompleted":
      for (const generation of payload.value.generations) {
        const index = message.generations.findIndex((g) => g.id === generation.id);
        if (index < 0) message.generations.push(generation);
        else message.generations[index] = mergeGeneration(message.generations[index]!, generation);
        view.progress.delete(generation.id);
      }
      settle(view);
      break;
    case "generationFailed":
      for (const id of payload.value.generationIds) {
        const generation = advanceGeneration(message, id, GenerationStatus.FAILED);
        if (generation !== undefined && generation.error === "") {
          generation.error = payload.value.reason;
        }
        view.progress.delete(id);
      }
      settle(view);
      break;
    case "generationCancelled":
      for (const id of payload.value.generationIds) {
        advanceGeneration(message, id, GenerationStatus.CANCELLED);
        view.progress.delete(id);
      }
      settle(view);
      break;
    default:
      // Title, credits, heartbeats and resyncs do not change the message itself.
      break;
  }
}

function advanceMessage(message: Message, status: MessageStatus): void {
  if (messageRank(status) > messageRank(message.status)) message.status = status;
}

function advanceGeneration(
  message: Message,
  id: string,
  status: GenerationStatus,
): Generation | undefined {
  const generation = message.generations.find((g) => g.id === id);
  if (generation !== undefined && generationRank(status) > generationRank(generation.status)) {
    generation.status = status;
  }
  return generation;
}

/**
 * Once no image is waiting or running, the message ends as the server ends it: completed
 * if any image was made, else failed if any failed, else cancelled.
 */
function settle(view: MessageView): void {
  const generations = view.message.generations;
  if (generations.length === 0 || !generations.every(isGenerationFinished)) return;
  const any = (status: GenerationStatus) => generations.some((g) => g.status === status);
  advanceMessage(
    view.message,
    any(GenerationStatus.COMPLETED)
      ? MessageStatus.COMPLETED
      : any(GenerationStatus.FAILED)
        ? MessageStatus.FAILED
        : MessageStatus.CANCELLED,
  );
  delete view.queuePosition;
}

/** Credits given back for the images that failed or were cancelled. */
export function refunded(message: Message): bigint {
  return message.generations
    .filter((g) => g.status === GenerationStatus.FAILED || g.status === GenerationStatus.CANCELLED)
    .reduce((sum, g) => sum + g.cost, 0n);
}

/** True when an image URL has expired, or expires within the minute. */
export function imageUrlExpired(generation: Generation, now = Date.now()): boolean {
  const expiresAt = generation.imageUrlExpiresAt;
  if (expiresAt === undefined) return false;
  return Number(expiresAt.seconds) * 1000 <= now + 60_000;
}
