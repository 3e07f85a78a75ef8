/** One message: prompt, steps, images with their progress, and its event timeline. */
import {
  describeIntent,
  describeProgress,
  messageStatusLabel,
  messageStatusName,
} from "../describe";
import type { TimelineEntry } from "../eventlog";
import {
  GenerationStatus,
  GenerationStatusSchema,
  IntentKind,
  MessageStatus,
  type Generation,
} from "../gen/atelier/v1/resources_pb";
import {
  imageUrlExpired,
  isFinished,
  refunded,
  type ImageProgress,
  type MessageView,
} from "../model";
import { h, setText } from "./dom";

export interface MessageActions {
  cancel(messageId: string): void;
  setFavorite(generationId: string, favorite: boolean): void;
  /** The message's image URLs have expired: fetch it again. */
  refresh(messageId: string): void;
}

export class MessageCard {
  readonly element: HTMLElement;
  private readonly badge = h("span", { class: "badge" });
  private readonly meta = h("span", { class: "meta" });
  private readonly cancelButton: HTMLButtonElement;
  private readonly steps = h("ol", { class: "steps" });
  private readonly intent = h("p", { class: "intent" });
  private readonly outcome = h("p", { class: "outcome" });
  private readonly images = h("div", { class: "images" });
  private readonly timeline = h("ol", { class: "timeline" });
  private readonly timelineCount = h("span");
  private readonly figures = new Map<string, ImageFigure>();
  private readonly messageId: string;

  constructor(view: MessageView, private readonly actions: MessageActions) {
    this.messageId = view.message.id;
    this.cancelButton = h(
      "button",
      { class: "cancel small", type: "button", on: { click: () => actions.cancel(this.messageId) } },
      "Cancel",
    );
    this.element = h(
      "article",
      { class: "message", data: { messageId: view.message.id } },
      h("header", {}, h("p", { class: "prompt" }, view.message.content)),
      h("div", { class: "status-row" }, this.badge, this.meta, this.cancelButton),
      this.steps,
      this.intent,
      this.outcome,
      this.images,
      h(
        "details",
        { class: "timeline-box", open: true },
        h("summary", {}, "Events ", this.timelineCount),
        this.timeline,
      ),
    );
    this.update(view);
  }

  update(view: MessageView): void {
    const message = view.message;
    const status = message.status;
    this.element.dataset["status"] = messageStatusName(status);
    this.badge.dataset["status"] = messageStatusName(status);
    setText(this.badge, messageStatusLabel(status));
    const settings = message.settings;
    const size = settings?.width && settings.height ? `${settings.width}×${settings.height}` : "";
    const count = message.generations.length;
    setText(
      this.meta,
      [
        settings?.model,
        size,
        `${count} image${count === 1 ? "" : "s"}`,
        `${message.cost} credit${message.cost === 1n ? "" : "s"}`,
        message.createdAt ? timeOf(message.createdAt.seconds) : "",
      ]
        .filter(Boolean)
        .join(" · "),
    );
    this.cancelButton.hidden = isFinished(status) || status === MessageStatus.UNSPECIFIED;

    this.renderSteps(view);

    if (message.intent) {
      const { kind, resolvedPrompt } = message.intent;
      const edit = kind === IntentKind.EDIT && resolvedPrompt ? `: “${resolvedPrompt}”` : "";
      const enhanced =
        message.enhancedPrompt && message.enhancedPrompt !== message.content
          ? ` · prompt sent to the model: “${message.enhancedPrompt}”`
          : "";
      setText(this.intent, `${describeIntent(message.intent)}${edit}${enhanced}`);
    }
    this.intent.hidden = !message.intent;

    const back = refunded(message);
    const parts: string[] = [];
    if (status === MessageStatus.FAILED) {
      const reason = message.generations.find((g) => g.error)?.error;
      parts.push(reason ? `Failed: ${reason}` : "Failed");
    } else if (status === MessageStatus.CANCELLED) {
      parts.push("Cancelled");
    }
    if (back > 0n) parts.push(`${back} credit${back === 1n ? "" : "s"} refunded`);
    setText(this.outcome, parts.join(" · "));
    this.outcome.hidden = parts.length === 0;

    for (const generation of message.generations) {
      let figure = this.figures.get(generation.id);
      if (figure === undefined) {
        figure = new ImageFigure(generation.id, {
          favorite: (favorite) => this.actions.setFavorite(generation.id, favorite),
          broken: () => this.actions.refresh(this.messageId),
        });
        this.figures.set(generation.id, figure);
        this.images.append(figure.element);
      }
      figure.update(generation, view.progress.get(generation.id));
      if (imageUrlExpired(generation)) this.actions.refresh(message.id);
    }
  }

  /** Adds the timeline entries not shown yet, keeping the list in cursor order. */
  addTimeline(entries: readonly TimelineEntry[]): void {
    const shown = new Set(Array.from(this.timeline.children, (li) => (li as HTMLElement).dataset["cursor"]));
    for (const entry of entries) {
      if (shown.has(entry.cursor)) continue;
      shown.add(entry.cursor);
      const item = h(
        "li",
        { data: { cursor: entry.cursor, kind: entry.kind, ...entry.data }, title: `cursor ${entry.cursor}` },
        h("span", { class: "kind" }, entry.kind),
        " ",
        entry.text,
      );
      const cursor = BigInt(entry.cursor);
      const next = Array.from(this.timeline.children).find(
        (li) => BigInt((li as HTMLElement).dataset["cursor"] ?? "0") > cursor,
      );
      this.timeline.insertBefore(item, next ?? null);
    }
    setText(this.timelineCount, `(${this.timeline.children.length})`);
  }

  private renderSteps(view: MessageView): void {
    const message = view.message;
    const finished = isFinished(message.status);
    const started =
      message.status === MessageStatus.PROCESSING ||
      message.generations.some((g) => g.startedAt !== undefined);
    const queued =
      view.queuePosition === undefined
        ? "Queued"
        : view.queuePosition === 0
          ? "Queued · next"
          : `Queued · ${view.queuePosition} ahead`;
    const steps: Array<[label: string, done: boolean]> = [
      [queued, true],
      ["Started", started],
      ["Intent", message.intent !== undefined],
      [finished ? messageStatusLabel(message.status) : "Images", finished],
    ];
    const current = steps.findIndex(([, done]) => !done);
    this.steps.replaceChildren(
      ...steps.map(([label, done], i) =>
        h("li", { class: done ? "done" : i === current && !finished ? "current" : "" }, label),
      ),
    );
  }
}

/** One image of a message: a progress bar while it is made, then the picture. */
class ImageFigure {
  readonly element: HTMLElement;
  private readonly frame = h("div", { class: "frame" });
  private readonly caption = h("span", { class: "caption" });
  private readonly favorite: HTMLButtonElement;
  private progress: HTMLProgressElement | undefined;
  private image: HTMLImageElement | undefined;
  private isFavorite = false;

  constructor(
    private readonly generationId: string,
    private readonly on: {
      /** The favourite toggle was clicked: make it this. */
      favorite: (favorite: boolean) => void;
      /** The image did not load (its signed URL may have expired). */
      broken: () => void;
    },
  ) {
    this.favorite = h("button", {
      class: "favorite small",
      type: "button",
      hidden: true,
      on: { click: () => on.favorite(!this.isFavorite) },
    });
    this.element = h(
      "figure",
      { class: "image", data: { generationId } },
      this.frame,
      h("figcaption", {}, this.caption, this.favorite),
    );
  }

  update(generation: Generation, progress: ImageProgress | undefined): void {
    if (generation.width > 0 && generation.height > 0) {
      this.frame.style.aspectRatio = `${generation.width} / ${generation.height}`;
    }
    this.element.dataset["status"] = GenerationStatusSchema.value[generation.status]?.name ?? "";
    const done = generation.status === GenerationStatus.COMPLETED && generation.imageUrl !== "";
    if (done) {
      this.progress?.remove();
      this.progress = undefined;
      if (this.image === undefined) {
        this.image = h("img", {
          alt: generation.prompt || "generated image",
          data: { generationId: this.generationId },
          decoding: "async",
          // A signed URL that stopped working: ask for a fresh one.
          on: { error: () => this.on.broken() },
        });
        this.frame.replaceChildren(this.image);
      }
      if (this.image.getAttribute("src") !== generation.imageUrl) this.image.src = generation.imageUrl;
      setText(this.caption, `${generation.width}×${generation.height} · seed ${generation.seed}`);
    } else {
      if (this.progress === undefined) {
        this.progress = h("progress", { max: 100, value: 0, data: { generationId: this.generationId } });
        this.frame.replaceChildren(this.progress);
      }
      this.progress.value = progress?.percent ?? 0;
      this.progress.hidden = generation.status !== GenerationStatus.QUEUED && generation.status !== GenerationStatus.RUNNING;
      setText(this.caption, captionOf(generation, progress));
    }
    this.isFavorite = generation.isFavorite;
    this.favorite.hidden = !done;
    this.favorite.setAttribute("aria-pressed", String(generation.isFavorite));
    this.favorite.title = generation.isFavorite ? "Remove from favourites" : "Add to favourites";
    setText(this.favorite, generation.isFavorite ? "★" : "☆");
  }
}

function captionOf(generation: Generation, progress: ImageProgress | undefined): string {
  switch (generation.status) {
    case GenerationStatus.QUEUED:
      return "waiting";
    case GenerationStatus.RUNNING:
      return progress ? describeProgress(progress) : "starting";
    case GenerationStatus.FAILED:
      return `failed: ${generation.error || "unknown reason"}`;
    case GenerationStatus.CANCELLED:
      return "cancelled";
    case GenerationStatus.COMPLETED:
      return "completed";
    default:
      return "";
  }
}

function timeOf(seconds: bigint): string {
  return new Date(Number(seconds) * 1000).toLocaleTimeString();
}
